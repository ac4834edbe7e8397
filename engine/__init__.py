"""Shelfwise engine: the public API for the CLI, the TUI, the HTTP server and plugins."""

from .candidates import CandidateSet, Recalled, item_ids, recallers_of
from .components import (
    Component, DataSource, Encoder, ModelState, NoConfig, ProgressCallback, Ranker,
    RankingExample, Recaller, Resources, banned_items, mention, no_progress, top_n,
)
from .dataset import DEFAULT_KIND_WEIGHTS, Catalogue, Dataset
from .errors import (
    ArtifactError, ConfigError, EngineError, ImportDataError, NotTrainedError, PluginError,
    UnknownComponentError,
)
from .hookspecs import hookimpl
from .helpers import TEXT_FIELDS, Anchor, item_text, kind_verb, recent_anchors
from .kernels import erf, gelu
from .memory import give_back_memory
from .metrics import ndcg_at
from .textfiles import detect_encoding
from .pipeline import Trace
from .results import EvaluationReport, ModelScores, RankerChoice, TrainReport
from .types import (
    EVENT_KINDS, PUBLIC_EVENT_KINDS, Candidate, Event, Interaction, Item, ItemEntity, Query, Recommendation, Record, Triple, User,
    event_time_window,
)

__all__ = [
    "Anchor", "Catalogue", "TEXT_FIELDS", "item_text", "kind_verb", "ndcg_at", "recent_anchors",
    "ArtifactError", "EVENT_KINDS", "Candidate", "CandidateSet", "Component", "ConfigError", "DEFAULT_KIND_WEIGHTS",
    "DataSource", "Dataset", "Encoder", "Engine", "EngineError", "EngineThread", "Event", "ImportDataError",
    "Interaction", "Item", "ItemEntity", "ModelState", "NoConfig", "NotTrainedError",
    "PluginError", "ProgressCallback", "Query", "Ranker", "RankingExample", "Recalled", "Recaller",
    "Recommendation", "Record", "Resources", "detect_encoding", "Triple", "UnknownComponentError", "User", "hookimpl",
    "KeyLookup", "PUBLIC_EVENT_KINDS", "describe_components", "new_plugin", "Trace", "inspect", "EvaluationReport", "ImportReport",
    "ModelScores", "RankerChoice", "TrainReport", "ReplayReport",
    "banned_items", "erf", "event_time_window", "gelu", "give_back_memory", "item_ids", "load_plugins", "recallers_of", "mention", "no_progress", "top_n",
]


def __getattr__(name: str):
    # `Engine` pulls in the store, the pipeline and sqlite-utils: loaded when first asked
    # for, so that `shelfwise --help` and plugin imports (`from engine import hookimpl`) stay
    # light (tests/test_architecture.py measures what `import engine` loads).
    if name == "Engine":
        from .engine import Engine

        return Engine
    if name == "EngineThread":  # asyncio and a thread pool: for the server and the TUI
        from .hosting import EngineThread

        return EngineThread
    if name == "ImportReport":  # the store's (sqlite-utils)
        from .store import ImportReport

        return ImportReport
    if name == "new_plugin":  # `shelfwise plugin new`: a ready package to start from
        from .scaffold import new_plugin

        return new_plugin
    if name == "describe_components":  # the installed components, with or without a shop
        from .lineup import describe_components

        return describe_components
    if name == "KeyLookup":  # the HTTP server's key checks (sqlite3, its own connection)
        from .store.apikeys import KeyLookup

        return KeyLookup
    if name == "inspect":  # the views' read-only analyses (why_not, profiles, run comparisons)
        import importlib

        return importlib.import_module(".inspect", __name__)
    if name == "ReplayReport":  # what Engine.replay returns (offline replay)
        from .replay_report import ReplayReport

        return ReplayReport
    if name == "load_plugins":  # pluggy and the entry points: only for who runs an engine
        from .plugins import load_plugins

        return load_plugins
    raise AttributeError(f"module 'engine' has no attribute {name!r}")

