"""The component contracts: what a data source, encoder, recaller or ranker must offer.

Plugins subclass these and hand instances to the `register` callable of the matching hook
(see engine/hookspecs.py). A component's tunable settings live in a pydantic model named
by its `Config` attribute; `[plugins.<name>]` in shelfwise.toml fills it.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from .candidates import Reasons, Recalled
from .errors import ConfigError
from .helpers import item_text
from .types import Candidate, Event, Interaction, Item, Query, Record

# progress(stage, done, total, message): total None when unknown. Must be cheap to call.
ProgressCallback = Callable[[str, int, "int | None", str], None]


def no_progress(stage: str, done: int, total: int | None, message: str = "") -> None:
    return None


class NoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class ModelState:
    """What a fitted component saves: numeric arrays (no object dtype) and JSON metadata.

    The engine stores it as an npz artifact (allow_pickle=False) or safetensors, never pickle."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    format: str = "npz"  # or "safetensors" (arrays must then be numeric)


def top_n(scores: np.ndarray, n: int, banned: np.ndarray | None = None) -> np.ndarray:
    """Indices of the n highest scores, best first, skipping `banned` (bool mask) and -inf."""
    s = np.asarray(scores, dtype=np.float64).copy()
    if banned is not None:
        s[banned] = -np.inf
    n = min(n, int(np.isfinite(s).sum()))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-s, n - 1)[:n]
    return part[np.argsort(-s[part], kind="stable")]


def banned_items(recallable: np.ndarray, index: Mapping[str, int], exclude: Iterable[str],
                 also: Iterable[int] = ()) -> np.ndarray:
    """The mask `top_n` skips: items that may not be recalled (~recallable), the query's
    excluded items (ids unknown to `index` ignored) and the indices in `also` (the anchors)."""
    banned = ~np.asarray(recallable, dtype=bool)
    rows = [i for i in (index.get(item) for item in exclude) if i is not None] + list(also)
    banned[rows] = True
    return banned


def mention(item_id: str) -> str:
    """Reference an item inside a reason; views replace it with the item's current title."""
    return f"[[{item_id}]]"


@dataclass
class Resources:
    """Shared services the engine hands to recallers and rankers (`attach`): the catalogue
    store, the active text encoder and its vector index over the catalogue (either may be
    None when no encoder is installed or nothing is encoded yet)."""

    store: Any = None
    encoder: "Encoder | None" = None
    vectors: Any = None  # engine.vectors.VectorIndex


class Component(ABC):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[BaseModel]] = NoConfig
    resources: Resources = Resources()

    def attach(self, resources: Resources) -> None:
        """Receive the engine's shared services before `fit` and before serving."""
        self.resources = resources

    def __init__(self, config: BaseModel | Mapping[str, Any] | None = None):
        if config is None:
            config = {}
        if isinstance(config, Mapping):
            unknown = set(config) - set(self.Config.model_fields)
            if unknown:
                valid = ", ".join(sorted(self.Config.model_fields)) or "none"
                raise ConfigError(f"[plugins.{self.name}] has unknown setting(s) "
                                  f"{', '.join(sorted(unknown))}. Valid settings: {valid}.")
            try:
                config = self.Config(**config)
            except Exception as exc:  # pydantic.ValidationError, TypeError
                raise ConfigError(f"[plugins.{self.name}] is invalid: {exc}") from exc
        self.config = config

    def state(self) -> ModelState:
        """Everything needed to serve after a restart. Default: nothing."""
        return ModelState()

    def load(self, state: ModelState) -> None:
        """Restore what `state()` returned."""

    def is_fitted(self) -> bool:
        return True

    def forget(self, history: Sequence[Interaction], attrs: Mapping[str, Any]) -> bool:
        """Remove one shopper's rows from the trained state (an erasure): `history` is every
        event they had, oldest first, `attrs` their attributes. Return True if the state
        changed; the engine then stores it in place of every stored version of this model.
        Default: the state keeps nothing per shopper (aggregates over many shoppers lose the
        erased one's share at the next train)."""
        return False

    def warm(self, limit: int) -> int:
        """Precompute, in a small step of about `limit` units (items), what the first
        requests would otherwise compute (per-item caches), so that they are as fast as
        later ones. Returns the work still left (0: warm). Long-running servers call it
        between requests until it returns 0, and again after a model or catalogue change.
        Default: nothing to warm."""
        return 0


class DataSource(Component):
    """Reads records from somewhere (files, a generator, an export)."""

    @abstractmethod
    def read(self, location: str | None, **options: Any) -> Iterator[Record]:
        """Yield Item, User, Event, Triple and ItemEntity records.

        Raise ImportDataError (file, line, field, problem) on bad input; the engine then
        writes nothing of this import."""


class Encoder(Component):
    """Turns texts (and catalogue items) into unit-length float32 vectors.

    `priority`: of several installed encoders the engine uses the highest (unless
    `[pipeline] encoder` names one)."""

    dim: int = 0
    priority: ClassVar[int] = 0

    @abstractmethod
    def encode(self, texts: Sequence[str], progress: ProgressCallback | None = None) -> np.ndarray:
        """Return a float32 array of shape (len(texts), dim), each row L2-normalised."""

    def item_text(self, item: Item) -> str:
        """The text that stands for an item (used by the default `encode_items`)."""
        return item_text(item, ("title", "category", "brand", "description", "tags"))

    def encode_items(self, items: Sequence[Item], progress: ProgressCallback | None = None) -> np.ndarray:
        """Vectors for catalogue items, shape (len(items), dim), L2-normalised."""
        return self.encode([self.item_text(item) for item in items], progress)

    def content_hash(self, item: Item) -> str:
        """Changes whenever the item's vector would change (its text or this encoder's
        settings), so `train` re-encodes only new or edited items."""
        raw = json.dumps([self.name, self.config.model_dump(mode="json"), item.title,
                          item.description, item.category, item.brand, list(item.tags)],
                         sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


class Recaller(Component):
    """Proposes candidate items for a batch of queries.

    `default_quota` > 0 puts the recaller in the default pipeline (with that many
    candidates per request) when it is installed; 0 means "only when configured".
    `on_trial` makes that conditional: at each `train` it joins the default pipeline only
    if the pipeline's candidates rank the validation shoppers' next items better with it
    than without it (otherwise its new model is kept inactive; naming it in
    `[pipeline] recallers` makes it serve whatever the trial says).
    `similar_items` says whether it answers item-to-item queries (`query.item_id`),
    `text_queries` whether it is a search recaller (answers `query.text` on its own)."""

    default_quota: ClassVar[int] = 0
    on_trial: ClassVar[bool] = False
    # The validation cuts fit each recaller again on the data before each cut. False: fitted
    # once, at the oldest cut, and that model recalls at every cut — for a recaller whose fit
    # is slow and that reads each shopper's history at request time (a model of an older cut
    # has seen less of the data, never a later step; the final fit comes after all cuts).
    refit_per_cut: ClassVar[bool] = True
    similar_items: ClassVar[bool] = True
    text_queries: ClassVar[bool] = False  # answers `query.text` (used by Engine.search)

    @abstractmethod
    def fit(self, data: "Dataset", progress: ProgressCallback | None = None) -> None:
        """Learn from `data` (never from the store directly: evaluation passes a split)."""

    @abstractmethod
    def recall(self, queries: Sequence[Query], n: int) -> list[Sequence[Candidate]]:
        """For each query, up to `n` candidates, best first, none in `query.exclude`.

        Return `self.recalled(items, scores, reasons)` per query (arrays; a reason made
        only for the items that are shown) or `self.candidates([(item, score, reason)])`.
        A list of `Candidate` objects with `source == self.name` is accepted too."""

    def is_fitted(self) -> bool:
        return getattr(self, "_fitted", False)

    def drop_fit(self) -> None:
        """Drop what the last `fit` learned. `train` calls it once the validation candidates
        are recalled: the rankers learn from those alone, and every recaller is fitted again
        on all the events, so a large model (co-occurrence pairs) need not sit beside the
        rankers' fits. Keep what the next fit starts from (a warm start). Default: nothing."""

    def update(self, events: Sequence[Event],
               histories: Mapping[str, Sequence[Interaction]]) -> bool:
        """Fold new events in without a full retrain. Return True if the state changed
        (the engine then saves it). `histories` maps each user of `events` to their
        history before these events (oldest first, recent part only).
        Default: not incremental."""
        return False

    def recalled(self, items: Sequence[str], scores: Sequence[float] | np.ndarray,
                 reasons: Reasons = "") -> Recalled:
        """One query's answer, best first: item ids, their scores, and the reasons — one
        text for all, one per item, or a function of the position (0 = best) called only
        for the items a request shows. Reads as a list of `Candidate`s."""
        return Recalled(self.name, items, scores, reasons)

    def candidates(self, scored: Sequence[tuple[str, float, str]]) -> Recalled:
        """This recaller's answer from (item_id, score, reason) triples, best first."""
        return Recalled(self.name, [s[0] for s in scored],
                        np.fromiter((s[1] for s in scored), np.float64, len(scored)),
                        [s[2] for s in scored])


@dataclass
class RankingExample:
    """A validation moment: the query, what recall proposed, and what the user did next."""

    query: Query
    candidates: list[Candidate]
    relevant: frozenset[str]
    known: "Dataset | None" = None  # the events visible at this moment (for item statistics)


class Ranker(Component):
    """Orders merged candidates. Learns from validation examples the engine builds.

    Of the installed rankers, the default pipeline uses the fitted one with the highest
    `priority` (a learned ranker outranks plain score fusion)."""

    priority: ClassVar[int] = 0
    # After the rankers are compared on the held-back validation moments, each is fitted
    # again on every moment. False keeps the first fit: a ranker whose fit is slow (a
    # fine-tuned model). Declared, not timed, so the same data always gets the same model.
    refit: ClassVar[bool] = True

    @abstractmethod
    def fit(self, examples: Sequence[RankingExample], data: "Dataset",
            progress: ProgressCallback | None = None) -> dict[str, float]:
        """Learn from examples; return validation metrics (at least "ndcg@10").

        `data` holds the events visible at the latest of the examples' moments; an example
        cut earlier carries its own view in `example.known` (count item statistics from
        that, never from later events)."""

    @abstractmethod
    def rank(self, query: Query, candidates: Sequence[Candidate]) -> Sequence[Candidate]:
        """Return the candidates re-scored, best first. Keep `source`, `reason`,
        `scores` and `ranks`; set `score` to this ranker's score.

        `candidates` is a `CandidateSet` in the pipeline (arrays: `items`, `names`,
        `scores`, `ranks`; iterating it builds `Candidate` objects). A ranker that scores
        from the arrays returns `candidates.ranked(scores, lead)` and no object is built."""

    def rank_many(self, queries: Sequence[Query],
                  candidates: Sequence[Sequence[Candidate]]) -> list[Sequence[Candidate]]:
        """`rank` for several queries at once (the pipeline and `recommend --all` call
        this). The default ranks one query at a time; a ranker that scores with a matrix
        product overrides it to score the whole batch in one."""
        return [self.rank(q, c) for q, c in zip(queries, candidates)]

    def observe(self, data: "Dataset") -> None:
        """Called after `fit`, once the recallers are fitted again on `data`: the events
        serving will see. `fit` learned from an earlier split; a ranker that reads item
        statistics (popularity, recency) takes them from here. Default: nothing."""

    def drop_caches(self) -> None:
        """Drop what is only a cache (`rank` rebuilds it when it needs it). `train` calls it
        once the rankers are final, before the recallers' final fits, so that those fits
        (and the processes they fork) do not sit beside it. Default: nothing."""

    def is_fitted(self) -> bool:
        return getattr(self, "_fitted", False)


from .dataset import Dataset  # noqa: E402  (circular: Dataset mentions nothing here)
