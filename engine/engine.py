"""Engine: the one API behind the CLI, the TUI and the HTTP server.

A thin facade over named parts, each in its own module:
  serving.Serving    what is kept in memory between requests, kept in step with the database
  lineup.Lineup      which recallers and ranker make the pipeline, and the pipeline itself
  indexing.Vectors   the text encoder and the vector index over the catalogue
  flows              the train and evaluate jobs
  rendering          candidates as people read them
  erasure            forgetting a shopper
  merchandising      the shop owner's rules (pins, boosts, burials, filters) and their state
  experiments        A/B experiments: the arm each request is served, and their reports
  controls           the shop owner's side of the facade: rules, online measurement, API keys,
                     a shopper's data (ShopControls, which Engine inherits)
  store.Store        every read and write of the database (all the SQL)"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from . import answers, flows, learning
from .components import Component, Encoder, ProgressCallback, Resources, no_progress
from .config import Settings, load_settings
from .dataset import Dataset
from .experiments import Experiments
from .db import open_db
from .executor import Executor, make_executor
from .errors import NotTrainedError, UnknownComponentError
from .indexing import Vectors
from .lineup import Lineup
from .merchandising import Merchandising
from .controls import ShopControls
from .pipeline import Pipeline, Trace
from .plugins import PluginRegistry, load_plugins
from .results import EvaluationReport, TrainReport
from .rendering import render
from .serving import Serving
from .store import ImportReport, Store
from .types import Candidate, Event, Item, Query, Recommendation


class Engine(ShopControls):
    def __init__(self, db_path: str | Path = "shelfwise.db", settings: Settings | None = None,
                 registry: PluginRegistry | None = None, config_path: str | Path | None = None,
                 connection: sqlite3.Connection | None = None):
        """`connection`: an open database to use instead of the file at `db_path` (a Ray
        worker's in-memory copy of the shop: engine.snapshot)."""
        self.db_path = Path(db_path)
        self.registry = registry or load_plugins()
        self.settings = settings or load_settings(self.db_path, config_path)
        self.db = open_db(connection if connection is not None else self.db_path)
        self.store = Store(self.db)
        self.store.mark_interrupted_runs()  # a killed `train` does not stay "running"
        self.serving = Serving(self.store, self.make)
        self.index = Vectors(self.serving, self._choose_encoder)
        self.serving.on_new_models = self.index.forget
        self.serving.on_catalogue_elsewhere = self.index.catch_up
        self.lineup = Lineup(self.registry, self.settings, self.serving, self.make, vectors=self.vectors)
        self.merch = Merchandising(self.store, self.serving)
        self.abtests = Experiments(self)  # A/B experiments: the arm each request is served
        self.dataset_events_upto = 0  # the newest event the last `dataset()` holds
        self._executors: dict[tuple, Executor] = {}

    # incremental state (events folded in, catalogue edits) is saved at most this often,
    # in seconds (0: at once); `close` saves what is pending
    @property
    def incremental_save_interval(self) -> float:
        return self.serving.save_interval

    @incremental_save_interval.setter
    def incremental_save_interval(self, seconds: float) -> None:
        self.serving.save_interval = seconds

    @property
    def recommendation_cache(self):
        return self.serving.cache

    @property
    def broken(self) -> dict[str, str]:
        """Stored models that failed to load (name -> why): off until the models change."""
        return self.serving.broken

    def close(self) -> None:
        if self.serving.unsaved and self.serving.may_save():
            self.save_incremental()
        for executor in self._executors.values():
            executor.close()
        self._executors.clear()
        self.db.close()

    def executor(self, kind: str | None = None, address: str | None = None) -> Executor:
        """Where the batch work of train, evaluate and recommend --all runs: `[executor]` in
        shelfwise.toml, with `kind` and `address` (a command's --executor and --address)
        taking precedence. Made once per choice; a local Ray instance started for it stops
        at `close`."""
        conf = self.settings.executor
        kind = kind or conf.kind
        if address is None and kind == "ray":
            address = conf.address
        key = (kind, address, conf.num_cpus)
        if key not in self._executors:
            self._executors[key] = make_executor(kind, address, conf.num_cpus)
        return self._executors[key]

    # -- plugins and components --------------------------------------------------------

    def plugins(self) -> dict[str, Any]:
        return {"plugins": self.registry.plugins(),
                "failures": [f.__dict__ for f in self.registry.failures]}

    def components(self) -> dict[str, list[dict[str, Any]]]:
        """Every installed component by kind: plugin, description, trained when, default."""
        return self.lineup.described(self.store.active_artifacts())

    def make(self, kind: str, name: str) -> Component:
        """A new, unfitted component of an installed plugin, configured from shelfwise.toml."""
        cls = self.registry.component(kind, name)
        component = cls(self.settings.plugins.get(name, {}))
        if kind in ("recallers", "rankers"):
            component.attach(self.resources())
        return component

    def _choose_encoder(self) -> Encoder | None:
        found = self.registry.components()["encoders"]
        name = self.settings.pipeline.encoder
        if name is None and found:
            name = max(found, key=lambda n: (found[n][1].priority, n))
        return None if name is None else self.make("encoders", name)

    def encoder(self) -> Encoder | None:
        return self.index.encoder()

    def vectors(self):  # -> engine.vectors.VectorIndex | None
        return self.index.index()

    def resources(self) -> Resources:
        return Resources(store=self.store, encoder=self.encoder(), vectors=self.vectors())

    def refresh_vectors(self, progress: ProgressCallback = no_progress,
                        rebuild: bool = False, executor: Executor | None = None) -> dict[str, Any]:
        """Encode new and edited items and bring the vector index up to date (see
        indexing.Vectors); serving components see the new index. `executor`: where the
        items are encoded (default: this process)."""
        report = self.index.refresh(progress, rebuild, executor, self.registry)
        if self.serving.save_due():
            self.save_incremental()
        for component in self.serving.loaded.values():
            component.attach(self.resources())
        return report

    # -- the pipeline --------------------------------------------------------------------

    def default_recallers(self) -> dict[str, int]:
        """The pipeline's recallers and their quotas (shelfwise.toml, else the plugins' defaults)."""
        return self.lineup.quotas()

    def serving_ranker(self) -> str | None:
        """The ranker `recommend` uses when none is named: None before the first `train`."""
        return self.lineup.ranker_name()

    def sync(self) -> None:
        """Notice what other connections changed (serving.Serving.sync; the merchandising
        rules: Merchandising.sync; experiments started or stopped: Experiments.sync), and
        fold the events stored since into the incremental recallers (learning.catch_up).
        Called before serving."""
        self.serving.sync()
        learning.catch_up(self)
        self.merch.sync()
        self.abtests.sync()

    def pipeline(self, recallers: Sequence[str] | None = None, ranker: str | None = None,
                 placement: str = "") -> Pipeline:
        """The serving pipeline, from trained components only, with the merchandising rules
        of `placement`. `ranker=""`: none (the candidates in merged order, as a ranker
        would receive them)."""
        self.sync()
        return self.with_rules(self.lineup.pipeline(recallers, ranker), placement)

    def with_rules(self, pipe: Pipeline, placement: str = "") -> Pipeline:
        """`pipe` with the merchandising rules that apply to `placement` now."""
        return replace(pipe, merchandising=self.merch.for_request(placement or ""))

    def warm(self, limit: int = 64) -> int:
        """One small step of precomputing the serving components' caches (`Component.warm`);
        returns the work left. The server calls it between requests until it returns 0, and
        again later: a new model or catalogue starts cold."""
        try:
            pipe = self.pipeline()
        except NotTrainedError:
            return 0
        parts = [*pipe.recallers.values(), *([pipe.ranker] if pipe.ranker else [])]
        return sum(part.warm(limit) for part in parts)

    # -- data --------------------------------------------------------------------------

    def import_data(self, source: str, location: str | None = None,
                    progress: ProgressCallback | None = None, **options: Any) -> ImportReport:
        started = time.perf_counter()
        reader = self.make("sources", source)
        report = self.store.write(reader.read(location, **options), progress=progress)
        self._catalogue_changed()
        if report.items and self.vectors() is not None:
            self.refresh_vectors(progress or no_progress)  # new products are recommendable at once
        report.seconds = time.perf_counter() - started  # the encoding of new products included
        return report

    def _catalogue_changed(self) -> None:
        self.serving.catalogue_changed()
        self.serving.adopt()

    def dataset(self) -> Dataset:
        """Every event as arrays. `dataset_events_upto` records the newest event id it holds
        (read in the same snapshot), so events stored later can be folded in afterwards."""
        with self.db.atomic():
            self.dataset_events_upto = self.store.newest_event_id()
            return self.store.dataset(self.settings.events.weights)

    def ingest(self, events: Sequence[Event], recommendation_ids: dict[str, str] | None = None) -> dict[str, Any]:
        """Store new events (idempotent; `recommendation_ids`: event_id -> the response it
        came from, for attribution) and fold them into incremental recallers at once."""
        return learning.ingest(self, events, recommendation_ids)

    def catch_up(self) -> int:
        """Fold the events stored since each incremental recaller's state into it now (after
        another connection activated models, say; every request does it anyway, see
        learning.catch_up). Returns how many events were folded in."""
        self.serving.sync()
        return learning.catch_up(self)

    def save_incremental(self) -> dict[str, int]:
        """Save what changed since loaded (recallers that folded in events, the vector index
        after catalogue edits) as new active versions; see serving.Serving.save."""
        return self.serving.save(self.index.blob)

    # -- training and evaluation -------------------------------------------------------

    def train(self, progress: ProgressCallback = no_progress,
              executor: Executor | None = None) -> TrainReport:
        """Fit every installed recaller and ranker on the whole store; activate them together
        (flows.train). Every recaller is fitted (so any can be asked for with `recallers=`);
        the rankers learn from the candidates of the pipeline's recallers. `executor`: where
        the catalogue is encoded (`Engine.executor`; default: this process)."""
        return flows.train(self, progress, executor)

    def evaluate(self, k: int = 10, progress: ProgressCallback = no_progress,
                 recallers: Sequence[str] | None = None, ranker: str | None = None,
                 executor: Executor | None = None) -> EvaluationReport:
        """Hold out each user's newest items, fit on the rest, score per recaller and pipeline
        (`executor`: where the held-out users are scored; the same metrics anywhere)."""
        return flows.evaluate(self, k, progress, recallers, ranker, executor)

    # -- recommendations ---------------------------------------------------------------

    def query_for(self, user_id: str | None, category: str | None = None,
                  exclude: Iterable[str] = (), items: Sequence[str] = (), text: str | None = None) -> Query:
        """The request as recallers see it: the user's stored history (if any) followed by
        `items` the caller says were just viewed (anonymous visitors, cold start)."""
        return answers.query_for(self, user_id, category, exclude, items, text)

    def recommend(self, user_id: str | None, n: int = 10, recallers: Sequence[str] | None = None,
                  ranker: str | None = None, category: str | None = None, exclude: Iterable[str] = (),
                  items: Sequence[str] = (), text: str | None = None,
                  placement: str = "") -> list[Recommendation]:
        """Personalised recommendations. An unknown user (or None) gets the cold-start
        path: popular items, or content neighbours of `items` / matches of `text`.
        `placement`: where the list is shown (home, product-page, …): its rules apply."""
        return answers.recommend(self, user_id, n, recallers, ranker, category, exclude, items, text,
                                 placement)

    def trace(self, user_id: str | None, n: int = 10, recallers: Sequence[str] | None = None,
              ranker: str | None = None, category: str | None = None, exclude: Iterable[str] = (),
              items: Sequence[str] = (), text: str | None = None, placement: str = "") -> Trace:
        """What `recommend` with these arguments does, stage by stage (pipeline.Trace)."""
        return answers.trace(self, user_id, n, recallers, ranker, category, exclude, items, text,
                             placement)

    def popular(self, n: int = 10, category: str | None = None, placement: str = "") -> list[Recommendation]:
        """What a visitor without history sees; never depends on a trained model."""
        return answers.popular(self, n, category, placement)

    def search(self, text: str, n: int = 10, category: str | None = None) -> list[Recommendation]:
        """Catalogue search through the recallers that answer text queries."""
        return answers.search(self, text, n, category)

    def recommend_all(self, n: int = 10, batch: int = 512, progress: ProgressCallback = no_progress,
                      recallers: Sequence[str] | None = None, ranker: str | None = None,
                      category: str | None = None, placement: str = "",
                      executor: Executor | None = None) -> Iterator[tuple[str, list[Recommendation]]]:
        """Recommendations for every user with at least one event, in batches (`executor`:
        where the batches are answered; the same lists, in the same order, anywhere)."""
        return answers.recommend_all(self, n, batch, progress, recallers, ranker, category, placement,
                                     executor)

    def similar(self, item_id: str, n: int = 10, placement: str = "") -> list[Recommendation]:
        """Items like this one (the recallers that answer item queries, interleaved)."""
        return answers.similar(self, item_id, n, placement)

    def render(self, cands: Sequence[Candidate], ranker: str | None,
               items=None) -> list[Recommendation]:
        """Candidates as the views show them: titles filled in, mentions named."""
        return render(self.store, cands, ranker, items)

    # -- the catalogue -----------------------------------------------------------------

    def item(self, item_id: str) -> Item | None:
        return self.store.item(item_id)

    def find_items(self, text: str, limit: int = 20) -> list[Item]:
        """Products by id, or whose title, category, brand, tags or attributes contain `text`."""
        return self.store.find_items(text.strip(), limit)

    def upsert_items(self, items: Sequence[Item], progress: ProgressCallback = no_progress) -> dict[str, Any]:
        """Add or update catalogue items (stock, prices, new products) in one transaction;
        new products are encoded and indexed at once, so content recall can show them
        without a retrain."""
        report = self.store.write(items)
        self._catalogue_changed()
        vectors = self.refresh_vectors(progress) if report.items and self.vectors() is not None else {}
        return {"changed": report.items, "vectors": vectors}

    def remove_items(self, ids: Sequence[str]) -> dict[str, Any]:
        """Take products out of the catalogue: never recommended again, dropped from the
        vector index at once (no retrain)."""
        removed = self.store.delete_items(ids)
        self._catalogue_changed()
        report = self.refresh_vectors() if self.vectors() is not None else {}
        return {"removed": removed, "vectors": report}

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counts, active models, last runs, and the models that cannot be loaded (each
        active model is loaded to find out)."""
        models = self.store.active_artifacts()
        for m in models:
            kind, _, name = m["name"].partition("/")
            if kind in ("recaller", "ranker"):
                try:
                    self.serving.fitted(f"{kind}s", name)
                except UnknownComponentError:  # its plugin is not installed
                    pass
            elif kind == "index":
                self.vectors()
        return {"db": str(self.db_path), "counts": self.store.counts(),
                "models": [{**m, "meta": _brief(m["meta"])} for m in models], "broken": dict(self.broken),
                "failing": dict(self.serving.failing),
                "last_train": next(iter(self.store.runs("train", 1)), None),
                "last_evaluation": next(iter(self.store.runs("evaluate", 1)), None)}


def _brief(meta: dict) -> dict:
    """A model's metadata without its long lists (an index's labels, say): a status line
    says what a model is, not what it holds."""
    return {k: v if not isinstance(v, (list, dict)) or len(v) <= 50 else f"{len(v):,} entries"
            for k, v in meta.items()}
