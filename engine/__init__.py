"""Shelfwise engine: the public API for the CLI, the TUI, the HTTP server and plugins."""

from .components import (
    Component, DataSource, Encoder, ModelState, NoConfig, ProgressCallback, Ranker,
    RankingExample, Recaller, Resources, banned_items, mention, no_progress, top_n,
)
from .dataset import DEFAULT_KIND_WEIGHTS, Dataset
from .engine import Engine
from .errors import (
    ArtifactError, ConfigError, EngineError, ImportDataError, NotTrainedError, PluginError,
    UnknownComponentError,
)
from .hookspecs import hookimpl
from .textfiles import detect_encoding
from .types import (
    Candidate, Event, Interaction, Item, ItemEntity, Query, Recommendation, Record, Triple, User,
)

__all__ = [
    "ArtifactError", "Candidate", "Component", "ConfigError", "DEFAULT_KIND_WEIGHTS",
    "DataSource", "Dataset", "Encoder", "Engine", "EngineError", "Event", "ImportDataError",
    "Interaction", "Item", "ItemEntity", "ModelState", "NoConfig", "NotTrainedError",
    "PluginError", "ProgressCallback", "Query", "Ranker", "RankingExample", "Recaller",
    "Recommendation", "Record", "Resources", "detect_encoding", "Triple", "UnknownComponentError", "User", "hookimpl",
    "banned_items", "mention", "no_progress", "top_n",
]
