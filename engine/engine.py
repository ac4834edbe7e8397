"""Engine: the one API behind the CLI, the TUI and the HTTP server."""

from __future__ import annotations

import contextlib
import re
from dataclasses import replace
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import apikeys, attribution
from .artifacts import dump_state, load_state
from .cache import RecommendationCache
from .components import (
    Component, Encoder, ProgressCallback, Ranker, Recaller, Resources, no_progress,
)
from .config import Settings, load_settings
from .dataset import Dataset
from .db import open_db, write_transaction
from .errors import ArtifactError, EngineError, NotTrainedError, UnknownComponentError
from .evaluation import holdout
from .metrics import aggregate
from .pipeline import Pipeline, Trace, interleave
from .plugins import PluginRegistry, load_plugins
from .store import ImportReport, Store
from .training import choose_ranker, fit_pipeline
from .types import Candidate, Event, Interaction, Item, Query, Recommendation

MENTION = re.compile(r"\[\[(.+?)\]\]")
# the vector index is rebuilt from the embeddings once it holds more replaced (deleted)
# vectors than this and than half its live ones
REBUILD_AFTER = 256


class Engine:
    def __init__(self, db_path: str | Path = "shelfwise.db", settings: Settings | None = None,
                 registry: PluginRegistry | None = None, config_path: str | Path | None = None):
        self.db_path = Path(db_path)
        self.registry = registry or load_plugins()
        self.settings = settings or load_settings(self.db_path, config_path)
        self.db = open_db(self.db_path)
        self.store = Store(self.db)
        self.store.mark_interrupted_runs()  # a killed `train` does not stay "running"
        self._loaded: dict[str, Component] = {}
        # stored models that failed to load (name -> why): off until the models change
        self.broken: dict[str, str] = {}
        self._encoder: Encoder | None = None
        self._vectors: VectorIndex | None = None
        self._catalogue: tuple[set[str], dict[str, str], set[str]] | None = None
        self.recommendation_cache = RecommendationCache()
        self._seen: dict[str, Any] | None = None  # what sync() last saw of the database
        # Incremental recaller state (events folded in by `ingest`) is saved at most this
        # often, in seconds (0: after every batch); `close` saves what is pending.
        self.incremental_save_interval = 0.0
        self._unsaved: set[str] = set()  # names of artifacts changed since last saved
        self._last_incremental_save = time.monotonic()
        self._indexed: dict[str, str] = {}  # item -> content hash of its vector in the index

    def close(self) -> None:
        if self._unsaved:
            self.save_incremental()
        self.db.close()

    # -- plugins and components --------------------------------------------------------

    def plugins(self) -> dict[str, Any]:
        return {"plugins": self.registry.plugins(),
                "failures": [f.__dict__ for f in self.registry.failures]}

    def components(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        active = {a["name"]: a for a in self.store.active_artifacts()}
        for kind, found in self.registry.components().items():
            out[kind] = []
            for name, (plugin, cls) in sorted(found.items()):
                art = active.get(f"{kind[:-1]}/{name}")
                out[kind].append({
                    "name": name, "plugin": plugin, "description": cls.description,
                    "trained": art is not None,
                    "trained_at": art["created_at"] if art else None,
                    "default": (getattr(cls, "default_quota", 0) > 0) if kind == "recallers" else None,
                })
        return out

    def _make(self, kind: str, name: str) -> Component:
        cls = self.registry.component(kind, name)
        component = cls(self.settings.plugins.get(name, {}))
        if kind in ("recallers", "rankers"):
            component.attach(self.resources())
        return component

    # -- encoder and vector index ------------------------------------------------------

    def encoder(self) -> Encoder | None:
        """The text encoder: `[pipeline] encoder`, else the installed one with the highest
        priority; None when no encoder plugin is installed."""
        if self._encoder is None:
            found = self.registry.components()["encoders"]
            name = self.settings.pipeline.encoder
            if name is None and found:
                name = max(found, key=lambda n: (found[n][1].priority, n))
            if name is None:
                return None
            self._encoder = self._make("encoders", name)
        return self._encoder

    def vectors(self):  # -> engine.vectors.VectorIndex | None
        """The active vector index over the catalogue (None before the first `train`, and
        when the stored index cannot be read: then content and search answer nothing and
        the rest serves)."""
        enc = self.encoder()
        key = f"index/{enc.name}" if enc else ""
        if self._vectors is None and enc is not None and key not in self.broken:
            try:
                found = self.store.load_artifact(key)
                if found is not None:
                    from .vectors import VectorIndex

                    index = VectorIndex.from_bytes(found[0], found[2])
                    self._indexed = self._catch_up(index, enc.name, found[2].get("content"))
                    self._vectors = index
            except Exception as exc:  # noqa: BLE001 — whatever the damage, only this part stops
                self._disable(key, "Vector index", enc.name, exc)
        return self._vectors

    def _catch_up(self, index, encoder: str, saved: dict[str, str] | None) -> dict[str, str]:
        """Bring a loaded index up to the `embeddings` table, the source of truth: catalogue
        edits are saved to the index at most every `incremental_save_interval` seconds, so
        the stored copy may lack the newest (or a process stopped before saving it).
        `saved`: item -> content hash the stored index holds (None: an index from before
        this was recorded, whose items are taken as current). Returns that map, now current."""
        stored = self.store.embedding_hashes(encoder)
        if saved is None:
            saved = {item_id: stored[item_id] for item_id in index.ids if item_id in stored}
        changed = [item_id for item_id, digest in stored.items() if saved.get(item_id) != digest]
        gone = [item_id for item_id in index.ids if item_id not in stored]
        if changed:
            index.add(*self.store.embeddings(encoder, changed))
        if gone:
            index.remove(gone)
        if changed or gone:
            self._unsaved.add(f"index/{encoder}")
        return stored

    def resources(self) -> Resources:
        return Resources(store=self.store, encoder=self.encoder(), vectors=self.vectors())

    def refresh_vectors(self, progress: ProgressCallback = no_progress,
                        rebuild: bool = False) -> dict[str, Any]:
        """Encode new and edited items, drop removed ones, and bring the index up to date
        incrementally (or rebuild it); the `embeddings` table is the source of truth."""
        enc = self.encoder()
        if enc is None:
            return {}
        items = list(self.store.catalogue())
        stored = self.store.embedding_hashes(enc.name)
        hashes = {item.item_id: enc.content_hash(item) for item in items}
        todo = [item for item in items if stored.get(item.item_id) != hashes[item.item_id]]
        gone = sorted(set(stored) - set(hashes))
        started = time.perf_counter()
        if todo:
            progress(f"encode {enc.name}", 0, len(todo), f"{len(todo):,} new or changed items")
            vectors = enc.encode_items(todo, progress=lambda _s, d, t, m="": progress(
                f"encode {enc.name}", d, t, m))
            self.store.save_embeddings(enc.name, [i.item_id for i in todo],
                                       [hashes[i.item_id] for i in todo], vectors)
        if gone:
            self.store.delete_embeddings(enc.name, gone)
        encode_seconds = time.perf_counter() - started
        index = None if rebuild else self.vectors()
        started = time.perf_counter()
        if index is not None and index.deleted_count > max(REBUILD_AFTER, len(index) // 2):
            index = None  # replaced vectors leave deleted graph nodes: start afresh now and then
        if index is None or index.dim != enc.dim:
            from .vectors import VectorIndex

            ids, matrix = self.store.embeddings(enc.name)
            if not ids:
                return {"encoded": 0, "removed": 0, "indexed": 0}
            index = VectorIndex.build(ids, matrix, progress=progress)
            changed = True
        else:
            changed = bool(todo or gone)
            if todo:
                index.add([i.item_id for i in todo], vectors)
            if gone:
                index.remove(gone)
        self._vectors = index
        self._indexed = {item_id: hashes[item_id] for item_id in index.ids if item_id in hashes}
        self.broken.pop(f"index/{enc.name}", None)  # rebuilt from the embeddings if it was damaged
        if changed:  # stored with the recallers' increments: at most every incremental_save_interval
            self._unsaved.add(f"index/{enc.name}")
            self._save_if_due()
        for component in self._loaded.values():  # serving components see the new index
            component.attach(self.resources())
        return {"encoder": enc.name, "encoded": len(todo), "removed": len(gone),
                "indexed": len(index), "encode_seconds": encode_seconds,
                "index_seconds": time.perf_counter() - started}

    def _fitted(self, kind: str, name: str) -> Component | None:
        """The component with its active trained state; None if never trained, or if its
        stored model cannot be loaded (a damaged or incompatible file: that component is
        off, with one warning and an entry in `broken`, and the others serve)."""
        key = f"{kind[:-1]}/{name}"
        if key in self.broken:
            return None
        if key not in self._loaded:
            component = self._make(kind, name)
            try:
                found = self.store.load_artifact(key)
                if found is None:
                    return None
                component.load(load_state(*found))
            except Exception as exc:  # noqa: BLE001 — a plugin's loader may raise anything
                self._disable(key, kind[:-1].capitalize(), name, exc)
                return None
            self._loaded[key] = component
        return self._loaded[key]

    def _disable(self, key: str, what: str, name: str, exc: Exception) -> None:
        why = str(exc) if isinstance(exc, ArtifactError) else (
            f"its stored model cannot be loaded ({type(exc).__name__}: {exc}); it is damaged or "
            f"was trained by another version. Run \"shelfwise train\" to rebuild it.")
        self.broken[key] = f"{what} {name!r} is not used: {why}"
        with warnings.catch_warnings():  # once per damaged model, each one (not once per line)
            warnings.simplefilter("always", RuntimeWarning)
            warnings.warn(self.broken[key], RuntimeWarning, stacklevel=4)

    def _refuse_broken(self, key: str) -> None:
        """A component asked for by name whose model is damaged: say so (not "not trained")."""
        if key in self.broken:
            raise ArtifactError(self.broken[key])

    def _recaller_quotas(self, names: Sequence[str] | None = None) -> dict[str, int]:
        installed = self.registry.components()["recallers"]
        if names:
            configured = self.settings.pipeline.recallers or {}
            quotas = {}
            for name in names:
                cls = self.registry.component("recallers", name)
                quotas[name] = configured.get(name) or cls.default_quota or 100
            return quotas
        if self.settings.pipeline.recallers is not None:
            for name in self.settings.pipeline.recallers:
                self.registry.component("recallers", name)
            return dict(self.settings.pipeline.recallers)
        return {name: cls.default_quota for name, (_, cls) in installed.items() if cls.default_quota > 0}

    def _ranker_name(self, override: str | None = None, fitted_only: bool = True) -> str | None:
        if override:
            self.registry.component("rankers", override)
            return override
        if self.settings.pipeline.ranker:
            return self.settings.pipeline.ranker
        rankers = sorted(self.registry.components()["rankers"].items(),
                         key=lambda kv: -kv[1][1].priority)
        for name, _ in rankers:
            if not fitted_only or self._fitted("rankers", name) is not None:
                return name  # a damaged model is skipped (`_fitted`): the next one serves
        return None

    def default_recallers(self) -> dict[str, int]:
        """The pipeline's recallers and their quotas (shelfwise.toml, else the plugins' defaults)."""
        return self._recaller_quotas()

    def serving_ranker(self) -> str | None:
        """The ranker `recommend` uses when none is named: None before the first `train`."""
        return self._ranker_name()

    def _catalogue_view(self) -> tuple[set[str], dict[str, str], set[str]]:
        """(recommendable items, item -> category, items nobody has interacted with yet)."""
        if self._catalogue is None:
            rows = self.store.conn.execute("SELECT item_id, category, in_stock FROM items").fetchall()
            untouched = {r[0] for r in self.store.conn.execute(
                "SELECT item_id FROM items i WHERE NOT EXISTS "
                "(SELECT 1 FROM events e WHERE e.item_id = i.item_id)")}
            self._catalogue = ({r[0] for r in rows if r[2]}, {r[0]: r[1] or "" for r in rows}, untouched)
        return self._catalogue

    def _rules(self) -> dict[str, Any]:
        ps = self.settings.pipeline
        return {"diversity": ps.diversity, "new_slots": ps.new_item_slots, "new_position": ps.new_item_position}

    def _active_models(self) -> tuple:
        """Which artifact versions are active (a rollback that swaps versions changes it too)."""
        return tuple(self.store.conn.execute(
            "SELECT group_concat(id) FROM (SELECT id FROM artifacts WHERE active = 1 ORDER BY id)").fetchone())

    def _data_marks(self) -> dict[str, Any]:
        q = self.store.conn.execute
        return {"catalogue": tuple(q("SELECT count(*), max(updated_at) FROM items").fetchone()),
                "events": q("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]}

    def _adopt(self, models: tuple | None = None) -> None:
        """After our own writes: what is loaded and cached already reflects them. `models`:
        the active set our own write produced (read inside its transaction). The active set
        is never re-read here: models another connection activated in the meantime must
        still be noticed by `sync` (adopting them unseen kept the old models serving and
        skipped the fold-in of a retrain's events)."""
        if self._seen is not None:
            self._seen.update(**self._data_marks())
            if models is not None:
                self._seen["models"] = models

    def sync(self) -> None:
        """Notice what other connections (a background training, another process) changed,
        cheaply (the active model ids, and PRAGMA data_version, which moves only when
        another connection commits): newly activated models are loaded afresh and every
        cached list dropped; a changed catalogue drops cached lists; events stored by
        someone else drop the cached lists of their users. Called before serving."""
        version = self.store.conn.execute("PRAGMA data_version").fetchone()[0]
        models = self._active_models()
        seen = self._seen
        if seen is None:
            self._seen = {"version": version, "models": models, **self._data_marks()}
            self._seen["models_loaded_at"] = self._seen["events"]
            return
        if models != seen["models"]:
            self._loaded.clear()
            self.broken.clear()  # new models: each is tried again
            self._vectors = None
            self._catalogue = None
            self._unsaved.clear()  # increments of the replaced models
            self.recommendation_cache.clear()
            self._seen = {"version": version, "models": models, **self._data_marks()}
            self._seen["models_loaded_at"] = self._seen["events"]
            return
        if version == seen["version"]:
            return
        marks = self._data_marks()
        if marks["catalogue"] != seen["catalogue"]:
            self._catalogue = None
            self.recommendation_cache.clear()
        elif marks["events"] != seen["events"]:
            users = [r[0] for r in self.store.conn.execute(
                "SELECT DISTINCT user_id FROM events WHERE id > ?", [seen["events"]])]
            self.recommendation_cache.drop_users(users)
        self._seen.update(version=version, models=models, **marks)

    def pipeline(self, recallers: Sequence[str] | None = None, ranker: str | None = None) -> Pipeline:
        """The serving pipeline, from trained components only. `ranker=""`: none (the
        candidates in merged order, as a ranker would receive them)."""
        self.sync()
        quotas = self._recaller_quotas(recallers)
        fitted: dict[str, Recaller] = {}
        for name in quotas:
            r = self._fitted("recallers", name)
            if r is not None:
                fitted[name] = r
            elif recallers:
                self._refuse_broken(f"recaller/{name}")
                raise NotTrainedError(f"Recaller {name!r} has not been trained. Run \"shelfwise train\".")
        if not fitted:
            raise NotTrainedError("No trained recallers in this database. Import data, then run "
                                  "\"shelfwise train\" (or \"shelfwise demo\" for the demo shop).")
        ranker_name = self._ranker_name(ranker) if ranker != "" else None
        ranker_obj = None
        if ranker_name is not None:
            ranker_obj = self._fitted("rankers", ranker_name)
            if ranker_obj is None and ranker:
                self._refuse_broken(f"ranker/{ranker_name}")
                raise NotTrainedError(self._not_serving(ranker_name))
        available, categories, untouched = self._catalogue_view()
        return Pipeline(fitted, {k: v for k, v in quotas.items() if k in fitted}, ranker_obj,
                        available=available, categories=categories, new_items=untouched, **self._rules())

    def _not_serving(self, ranker: str) -> str:
        """Why a ranker asked for by name has no active model, and what to do about it."""
        stored = self.store.latest_artifact(f"ranker/{ranker}")
        if stored is None:
            return f"Ranker {ranker!r} has not been trained. Run \"shelfwise train\"."
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(stored["created_at"]))
        runs = [r for r in self.store.runs("train", 5) if r["status"] == "ok"]
        why = ((runs[0]["metrics"].get("ranker") or {}).get("why") if runs else "") or \
            "another ranker was chosen"
        return (f"Ranker {ranker!r} was trained ({when}) but is not serving: {why}. To serve it "
                f"anyway, put ranker = \"{ranker}\" under [pipeline] in shelfwise.toml and run "
                f"\"shelfwise train\" (a ranker named there is activated whatever the check says).")

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
        reader = self._make("sources", source)
        report = self.store.write(reader.read(location, **options), progress=progress)
        self._catalogue = None
        self.recommendation_cache.clear()
        self._adopt()
        if report.items and self.vectors() is not None:
            self.refresh_vectors(progress or no_progress)  # new products are recommendable at once
        return report

    def remove_items(self, ids: Sequence[str]) -> dict[str, Any]:
        """Take products out of the catalogue: never recommended again, dropped from the
        vector index at once (no retrain)."""
        removed = self.store.delete_items(ids)
        self._catalogue = None
        self.recommendation_cache.clear()
        self._adopt()
        report = self.refresh_vectors() if self.vectors() is not None else {}
        return {"removed": removed, "vectors": report}

    def dataset(self) -> Dataset:
        """Every event as arrays. `dataset_events_upto` records the newest event id it holds
        (read in the same snapshot), so events stored later can be folded in afterwards."""
        with self.db.atomic():
            self.dataset_events_upto = self.store.conn.execute(
                "SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
            return self.store.dataset(self.settings.events.weights)

    def ingest(self, events: Sequence[Event],
               recommendation_ids: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Store new events (idempotent) and fold them into incremental recallers at once.

        `recommendation_ids` maps event_id -> the recommendation_id of the response the
        event came from; stored events are attributed to it in the same transaction."""
        users = {e.user_id for e in events}
        histories = {u: self.store.history(u, self.settings.pipeline.history) for u in users}
        self.sync()
        with write_transaction(self.db):
            added, duplicates, conflicts = self.store.add_events(events)
            if conflicts:
                raise EngineError(
                    f"event_id {conflicts[0].event_id!r} was already stored with a different "
                    f"payload; nothing of this batch was stored.", title="Conflict")
            if recommendation_ids:
                attribution.attribute(self.db, added, recommendation_ids)
        if added:
            if self._catalogue is not None:  # a product's first event: no longer new
                self._catalogue[2].difference_update(e.item_id for e in added)
            # anonymous lists (popular, visitors' items) move with everyone's events
            self.recommendation_cache.drop_users({e.user_id for e in added} | {None})
            self._adopt()
            self._update_recallers(added, histories)
        return {"accepted": len(added), "duplicates": duplicates}

    def _update_recallers(self, events: Sequence[Event], histories) -> None:
        for name in self._recaller_quotas():
            recaller = self._fitted("recallers", name)
            if recaller is not None and recaller.update(events, histories):
                self._unsaved.add(f"recaller/{name}")
        self._save_if_due()

    def _save_if_due(self) -> None:
        if self._unsaved and (time.monotonic() - self._last_incremental_save
                              >= self.incremental_save_interval):
            self.save_incremental()

    def fold_in_since(self, after_id: int) -> int:
        """After another connection activated models trained on events up to id `after_id`
        (its `dataset_events_upto`): fold the events stored after that snapshot into the
        incremental recallers, so what arrived during a retrain is not forgotten. Events
        this engine has folded in itself since loading those models are not folded twice."""
        self.sync()
        if self._seen.get("folded_in"):
            return 0
        self._seen["folded_in"] = True
        upto = self._seen["models_loaded_at"]
        rows = self.store.conn.execute(
            "SELECT user_id, item_id, kind, ts, value, event_id FROM events WHERE id > ? AND "
            "id <= ? ORDER BY id", [after_id, upto]).fetchall()
        if not rows:
            return 0
        events = [Event(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]
        limit = self.settings.pipeline.history
        histories = {}
        for user in {e.user_id for e in events}:
            before = self.store.conn.execute(
                "SELECT item_id, kind, ts, value FROM events WHERE user_id = ? AND id <= ? "
                "ORDER BY ts DESC, id DESC LIMIT ?", [user, after_id, limit or -1]).fetchall()
            histories[user] = tuple(Interaction(*r) for r in reversed(before))
        self._update_recallers(events, histories)
        self.recommendation_cache.drop_users(histories)
        return len(events)

    def save_incremental(self) -> dict[str, int]:
        """Save what changed since loaded: recallers that folded in new events, and the
        vector index after catalogue edits, as new active versions. Only the newest
        incremental version is kept (trained versions stay). Nothing is saved if another
        connection activated new models meanwhile: those win."""
        names = sorted(self._unsaved)
        self._unsaved.clear()
        self._last_incremental_save = time.monotonic()
        blobs = {}
        for name in names:
            if name.startswith("index/") and self._vectors is not None:
                payload, meta = self._vectors.to_bytes()
                blobs[name] = (payload, "hnsw", {**meta, "content": self._indexed, "incremental": True})
            elif (recaller := self._loaded.get(name)) is not None:
                payload, fmt, meta = dump_state(recaller.state())
                blobs[name] = (payload, fmt, {**meta, "incremental": True})
        if not blobs:
            return {}
        superseded = (f"DELETE FROM artifacts WHERE name IN ({','.join('?' * len(blobs))}) "
                      f"AND active = 0 AND json_extract(meta, '$.incremental')")
        with self.db.atomic():
            self.store.conn.execute(superseded, list(blobs))  # a write first: takes the lock
            if self._seen is not None and self._active_models() != self._seen["models"]:
                return {}
            versions = self.store.save_artifacts(blobs)
            self.store.conn.execute(superseded, list(blobs))
            mine = self._active_models()
        self._adopt(models=mine)
        self.store.reclaim_space(convert=False)  # the superseded copies' pages go back
        return versions

    # -- training and evaluation -------------------------------------------------------

    def _fresh_components(self, recallers: Sequence[str] | None = None, ranker: str | None = None,
                          every: bool = False):
        """Unfitted components: the pipeline's recallers (with `every`, all installed ones
        too) and rankers (the chosen one, or with `every` all installed)."""
        quotas = self._recaller_quotas(recallers)
        names = list(quotas)
        if every:
            names += [n for n in self.registry.components()["recallers"] if n not in quotas]
        fresh = {name: self._make("recallers", name) for name in names}
        if every and not ranker:
            rankers = [self._make("rankers", n) for n in self.registry.components()["rankers"]]
        else:
            # the ranker that serves now (train keeps a ranker that lost inactive), else the
            # installed one of highest priority
            name = self._ranker_name(ranker) or self._ranker_name(ranker, fitted_only=False)
            rankers = [self._make("rankers", name)] if name else []
        return quotas, fresh, rankers

    def train(self, progress: ProgressCallback = no_progress) -> dict[str, Any]:
        """Fit every installed recaller and ranker on the whole store; activate them together.

        Every recaller is fitted (so any can be asked for with `recallers=`); the rankers
        learn from the candidates of the pipeline's recallers."""
        started = time.perf_counter()
        data = self.dataset()
        if data.n_events == 0:
            raise EngineError("There are no events to learn from. Import some first: "
                              "\"shelfwise import csv --events events.csv\".", title="No data")
        vector_report = self.refresh_vectors(progress)
        quotas, recallers, rankers = self._fresh_components(every=True)
        run_id = self.store.start_run("train", {"pipeline": quotas, "recallers": list(recallers),
                                                "rankers": [r.name for r in rankers]})
        try:  # until the models are activated, a failure or a cancel leaves the old ones serving
            report = fit_pipeline(data, recallers, quotas, rankers, self.settings.pipeline, progress)
            # a component whose fit raised is not saved: its last good model (if any) serves on
            failed = report["failed"]
            recallers = {n: r for n, r in recallers.items() if n not in failed}
            rankers = [r for r in rankers if r.name not in failed]
            progress("save", 0, 1, "writing model artifacts")
            # A ranker of higher priority is activated only if it beat the others on the
            # held-back validation users; otherwise its new version is kept inactive and the
            # old one retired, so the winner serves (unless shelfwise.toml names a ranker).
            serving, losers, why = choose_ranker(report, rankers)
            if self.settings.pipeline.ranker:
                serving, losers, why = self.settings.pipeline.ranker, [], "named in shelfwise.toml"
            blobs = {f"recaller/{n}": dump_state(r.state()) for n, r in recallers.items()}
            blobs.update({f"ranker/{r.name}": dump_state(r.state()) for r in rankers if r.name not in losers})
            with write_transaction(self.db):
                versions = self.store.save_artifacts(blobs)
                if losers:
                    versions.update(self.store.save_artifacts(
                        {f"ranker/{r.name}": dump_state(r.state()) for r in rankers if r.name in losers},
                        activate=False))
                    self.store.deactivate([f"ranker/{name}" for name in losers])
        except BaseException as exc:
            self.store.finish_run(run_id, {}, status="failed", note=str(exc))
            raise
        self._loaded.clear()
        self.broken.clear()
        self._catalogue = None
        report.update({"vectors": vector_report, "run_id": run_id, "events": data.n_events, "users": data.n_users,
                       "items": data.n_items, "versions": versions,
                       "ranker": {"serving": serving, "not_activated": losers, "why": why},
                       "kept_models": sorted(m["name"] for m in self.store.active_artifacts()
                                             if m["name"].partition("/")[2] in report["failed"]),
                       "total_seconds": time.perf_counter() - started})
        self.store.finish_run(run_id, report)
        report["pruned"] = self.store.prune_artifacts(self.settings.store.keep_versions)
        with contextlib.suppress(Exception):  # activated: too late to cancel, nothing to undo
            progress("save", 1, 1, "models activated")
        return report

    def evaluate(self, k: int = 10, progress: ProgressCallback = no_progress,
                 recallers: Sequence[str] | None = None, ranker: str | None = None) -> dict[str, Any]:
        """Hold out each user's newest items, fit on the rest, score per recaller and pipeline."""
        ps = self.settings.pipeline
        self.refresh_vectors(progress)
        data = self.dataset()
        split = holdout(data, ps.validation_share, ps.min_interactions, history=ps.history)
        if not split.queries:
            raise EngineError(f"No user has {ps.min_interactions} or more distinct items, so "
                              f"nothing can be held out for evaluation.", title="Too little data")
        quotas, fresh, rankers = self._fresh_components(recallers, ranker)
        ranker_obj = rankers[0] if rankers else None
        run_id = self.store.start_run("evaluate", {"k": k, "recallers": quotas,
                                                   "ranker": ranker_obj.name if ranker_obj else None})
        try:  # a failure or a cancel at any step is recorded, never left "running"
            fit_report = fit_pipeline(split.visible, fresh, quotas, rankers, ps, progress)
            failed = fit_report["failed"]  # left out of the evaluation, and said so
            fresh = {name: r for name, r in fresh.items() if name not in failed}
            quotas = {name: q for name, q in quotas.items() if name not in failed}
            if ranker_obj is not None and ranker_obj.name in failed:
                ranker_obj = None
            if not fresh:
                raise EngineError("Nothing to evaluate: " + "; ".join(
                    f"{name} failed to train ({f['error']})" for name, f in failed.items()),
                    title="Training failed")
            progress("score", 0, len(fresh) + 1, "recalling for held-out users")
            # Cold-start slice: held-out items nobody touched in the visible part.
            seen = np.bincount(split.visible.items, minlength=data.n_items) > 0
            cold = {str(i) for i in data.item_ids[~seen]}
            pipe = Pipeline(fresh, {name: max(q, k) for name, q in quotas.items()}, ranker_obj,
                            categories=self._catalogue_view()[1], new_items=cold, **self._rules())
            recalled = pipe.recall(split.queries)
            cold_rel = [rel & cold for rel in split.relevant]
            cold_users = [j for j, rel in enumerate(cold_rel) if rel]
            # Light-user slice: the quarter of held-out users with the fewest items before the cut.
            known = np.array([len(q.exclude) for q in split.queries])
            light_limit = int(np.quantile(known, 0.25))
            light_users = np.flatnonzero(known <= light_limit).tolist()

            def score(lists: list[list[str]]) -> dict[str, Any]:
                out = {"metrics": aggregate(lists, split.relevant, k, data.n_items),
                       "light_users": aggregate([lists[j] for j in light_users],
                                                [split.relevant[j] for j in light_users], k, data.n_items)}
                if cold_users:
                    out["cold_start"] = aggregate([lists[j] for j in cold_users],
                                                  [cold_rel[j] for j in cold_users], k, data.n_items)
                return out

            results = []
            for step, name in enumerate(fresh, start=1):
                if fresh[name].text_queries:  # search answers typed queries; held-out users have none
                    continue
                lists = [[c.item_id for c in per[name][:k]] for per in recalled]
                results.append({"name": name, "kind": "recaller", **score(lists)})
                progress("score", step, len(fresh) + 1, name)
            lists = [[c.item_id for c in cs] for cs in pipe.run(split.queries, k, recalled)]
            results.append({"name": "pipeline", "kind": "pipeline", **score(lists),
                            "ranker": ranker_obj.name if ranker_obj else None})
            progress("score", len(fresh) + 1, len(fresh) + 1, "pipeline")
            out = {"k": k, "results": results, "run_id": run_id, "users": len(split.queries),
                   "cold_start_users": len(cold_users),
                   "light_users": len(light_users), "light_user_max_items": light_limit,
                   "ranker_validation": fit_report["rankers"].get(ranker_obj.name, {}) if ranker_obj else {},
                   "candidate_hit_rate": fit_report.get("candidate_hit_rate"),
                   "failed": {name: f["error"] for name, f in failed.items()}}
        except BaseException as exc:
            self.store.finish_run(run_id, {}, status="failed", note=str(exc))
            raise
        self.store.finish_run(run_id, out)
        return out

    # -- recommendations ---------------------------------------------------------------

    def query_for(self, user_id: str | None, category: str | None = None,
                  exclude: Iterable[str] = (), items: Sequence[str] = (),
                  text: str | None = None) -> Query:
        """The request as recallers see it: the user's stored history (if any) followed by
        `items` the caller says were just viewed (anonymous visitors, cold start)."""
        ps = self.settings.pipeline
        now = time.time()
        history = self.store.history(user_id, ps.history) if user_id else ()
        history = history + tuple(Interaction(i, "view", now) for i in items)
        consumed = self.store.consumed(user_id, ps.exclude_kinds) if user_id else set()
        return Query(user_id=user_id, history=history, text=text or None,
                     exclude=frozenset(consumed) | frozenset(exclude) | frozenset(items),
                     category=category, now=now)

    def recommend(self, user_id: str | None, n: int = 10, recallers: Sequence[str] | None = None,
                  ranker: str | None = None, category: str | None = None,
                  exclude: Iterable[str] = (), items: Sequence[str] = (),
                  text: str | None = None) -> list[Recommendation]:
        """Personalised recommendations. An unknown user (or None) gets the cold-start
        path: popular items, or content neighbours of `items` / matches of `text`."""
        if n < 1:
            raise EngineError(f"n must be at least 1, not {n}.")
        self.sync()
        if not self._loaded:  # models dropped (a retrain, a reload): their answers are stale
            self.recommendation_cache.clear()
        key = (user_id, n, tuple(recallers or ()), ranker, category, frozenset(exclude),
               tuple(items), text)
        found = self.recommendation_cache.get(key)
        if found is not None:
            return list(found)
        pipe = self.pipeline(recallers, ranker)
        query = self.query_for(user_id, category, exclude, items, text)
        recs = self.render(pipe.run([query], n)[0], pipe.ranker_name)
        self.recommendation_cache.put(key, user_id, tuple(recs))
        return recs

    def trace(self, user_id: str | None, n: int = 10, recallers: Sequence[str] | None = None,
              ranker: str | None = None, category: str | None = None,
              exclude: Iterable[str] = (), items: Sequence[str] = (), text: str | None = None) -> Trace:
        """What `recommend` with these arguments does, stage by stage (never cached): each
        recaller's proposals, what each filter removed, the ranker's order, what the re-rank
        rules moved, and the list shown. `ranker=""` leaves the ranker out."""
        if n < 1:
            raise EngineError(f"n must be at least 1, not {n}.")
        pipe = self.pipeline(recallers, ranker)
        return pipe.trace(self.query_for(user_id, category, exclude, items, text), n)

    def popular(self, n: int = 10, category: str | None = None) -> list[Recommendation]:
        """What a visitor without history sees: the pipeline's answer for nobody (the
        `popular` recaller's list, ranked); when no trained model can give one (before the
        first train, or every model damaged), the products most shoppers chose, counted
        from the events — this answer never depends on a model."""
        try:
            recs = self.recommend(None, n, category=category)
        except (NotTrainedError, ArtifactError):
            recs = []
        if recs:
            return recs
        counted = self.store.most_chosen(n, category)
        return self.render([Candidate(item, float(people), "popular", f"popular with {people} "
                                      f"{'person' if people == 1 else 'people'}")
                            for item, people in counted], None)

    def search(self, text: str, n: int = 10, category: str | None = None) -> list[Recommendation]:
        """Catalogue search through the recallers that answer text queries."""
        if not text.strip():
            raise EngineError("The search text is empty. Example: shelfwise search \"red shoes\".")
        pipe = self.pipeline(ranker="")
        pipe = replace(pipe, recallers={k: r for k, r in pipe.recallers.items() if r.text_queries})
        if not pipe.recallers:
            raise NotTrainedError("No trained recaller answers text queries. Install a search "
                                  "plugin and run \"shelfwise train\".")
        query = Query(text=text, category=category, now=time.time())
        return self.render(pipe.run([query], n)[0], None)

    def recommend_all(self, n: int = 10, batch: int = 512,
                      progress: ProgressCallback = no_progress) -> Iterator[tuple[str, list[Recommendation]]]:
        """Recommendations for every user with at least one event, in batches."""
        pipe = self.pipeline()
        users = self.store.users_with_events()
        for start in range(0, len(users), batch):
            part = users[start:start + batch]
            queries = [self.query_for(u) for u in part]
            shown = pipe.run(queries, n)
            items = self._items_named(c for cands in shown for c in cands)  # one read a batch
            for u, cands in zip(part, shown):
                yield u, self.render(cands, pipe.ranker_name, items)
            progress("recommend", min(start + batch, len(users)), len(users), "")

    def similar(self, item_id: str, n: int = 10) -> list[Recommendation]:
        if self.store.item(item_id) is None and not self.store.item_events(item_id, 1):
            raise EngineError(f"Unknown item {item_id!r}. Find ids with \"shelfwise items QUERY\".",
                              title="Unknown item")
        pipe = self.pipeline(ranker="")
        pipe = replace(pipe, recallers={k: r for k, r in pipe.recallers.items() if r.similar_items})
        query = Query(item_id=item_id, exclude=frozenset([item_id]), now=time.time())
        return self.render(pipe.candidates([query], blend=interleave)[0][:n], None)

    def _items_named(self, cands: Iterable[Candidate]) -> dict[str, Item]:
        """The catalogue entries of the candidates and of the items their reasons mention."""
        wanted: dict[str, None] = {}
        for c in cands:
            wanted[c.item_id] = None
            wanted.update(dict.fromkeys(MENTION.findall(c.reason)))
        return self.store.items(list(wanted))

    def render(self, cands: Sequence[Candidate], ranker: str | None,
               items: Mapping[str, Item] | None = None) -> list[Recommendation]:
        """Candidates as the views show them: titles filled in, mentions named. `items`:
        their catalogue entries, if already read (`_items_named`)."""
        items = self._items_named(cands) if items is None else items

        def name(match: re.Match) -> str:
            it = items.get(match.group(1))
            return f"“{it.title}”" if it and it.title else f"item {match.group(1)}"

        out = []
        for rank, c in enumerate(cands, start=1):
            it = items.get(c.item_id) or Item(c.item_id)
            out.append(Recommendation(
                item_id=c.item_id, title=it.title, score=c.score, rank=rank, source=c.source,
                reason=MENTION.sub(name, c.reason), sources=tuple(sorted(c.ranks, key=c.ranks.get)),
                ranker=ranker or "", category=it.category, price=it.price))
        return out

    # -- serving: catalogue sync, erasure, attribution, API keys -------------------------

    def item(self, item_id: str) -> Item | None:
        return self.store.item(item_id)

    def upsert_items(self, items: Sequence[Item], progress: ProgressCallback = no_progress) -> dict[str, Any]:
        """Add or update catalogue items (stock, prices, new products) in one transaction;
        new products are encoded and indexed at once, so content recall can show them
        without a retrain."""
        report = self.store.write(items)
        self._catalogue = None
        self.recommendation_cache.clear()
        self._adopt()
        vectors = self.refresh_vectors(progress) if report.items and self.vectors() is not None else {}
        return {"changed": report.items, "vectors": vectors}

    def erase_user(self, user_id: str) -> dict[str, Any]:
        """Forget a user: their events, profile, logged impressions and attributed events
        (one transaction, the rows overwritten with zeros: `secure_delete`), their cached
        recommendations, and the write-ahead log's older copies of those pages (checkpointed
        and emptied before this returns). Trained models hold no shopper ids; the user's
        anonymous share of item statistics goes at the next train."""
        rewritten = self._models_without(user_id)
        with write_transaction(self.db):
            erased = attribution.erase_user(self.db, user_id)
            erased["events"] = self.store.delete_user(user_id)
            for name, (blob, active) in rewritten.items():
                version = self.store.save_artifacts({name: blob}, activate=active)[name]
                self.store.conn.execute("DELETE FROM artifacts WHERE name = ? AND version != ?",
                                        [name, version])
        erased["models_rewritten"] = sorted(rewritten)
        erased["cached_lists"] = self.recommendation_cache.drop_users([user_id])
        erased["log_emptied"] = self.store.checkpoint()
        self._adopt()
        return {"user_id": user_id, **erased}

    def _models_without(self, user_id: str) -> dict[str, tuple[tuple[bytes, str, dict], bool]]:
        """The stored models that keep rows of this shopper (`Component.forget`), rewritten
        without them: name -> (new blob, whether it is the active version). Each model's
        active version is rewritten (or its newest, when none is active); the erasure then
        deletes every other version, since each holds the same rows."""
        history = self.store.history(user_id)
        if not history:
            return {}
        attrs = self.store.user_attrs([user_id]).get(user_id, {})
        out = {}
        names = [r[0] for r in self.store.conn.execute(
            "SELECT DISTINCT name FROM artifacts WHERE name LIKE 'recaller/%' OR name LIKE 'ranker/%'")]
        for name in names:
            kind, plugin = name.split("/", 1)
            try:
                component = self._make(f"{kind}s", plugin)
            except UnknownComponentError:  # not installed: nothing here can read or serve it
                continue
            if type(component).forget is Component.forget:  # keeps nothing per shopper
                continue
            active = any(a["name"] == name for a in self.store.active_artifacts(name))
            found = self.store.load_artifact(name, None if active else self.store.latest_artifact(name)["version"])
            component.load(load_state(*found))
            if component.forget(history, attrs):
                out[name] = (dump_state(component.state()), active)
        return out

    def user_data(self, user_id: str) -> dict[str, Any]:
        """Everything the database stores about a shopper (a data-access request)."""
        found = self.store.user_data(user_id)
        if found is None:
            raise EngineError(f"Nothing is stored about user {user_id!r}.", title="Unknown user")
        return found

    def log_impressions(self, recs: Sequence[Recommendation], user_id: str | None,
                        placement: str = "") -> str:
        """Record what a response showed; returns the recommendation_id to send events with."""
        return attribution.log_impressions(self.db, recs, user_id, placement)

    def report(self, since: str | float | None = "7d", placement: str | None = None) -> dict[str, Any]:
        """Impressions, click-through, add-to-cart and conversion rates and attributed
        revenue per recaller, ranker, placement and position (see engine.attribution)."""
        start = attribution.parse_since(since) if isinstance(since, str) or since is None else since
        return attribution.report(self.db, start, placement)

    def create_key(self, scope: str, name: str = "") -> dict[str, Any]:
        return apikeys.create_key(self.db, scope, name)

    def keys(self) -> list[dict[str, Any]]:
        return apikeys.list_keys(self.db)

    def revoke_key(self, key_id: int) -> dict[str, Any]:
        return apikeys.revoke_key(self.db, key_id)

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counts, active models, last runs, and the models that cannot be loaded (each
        active model is loaded to find out)."""
        models = self.store.active_artifacts()
        for m in models:
            kind, _, name = m["name"].partition("/")
            if kind in ("recaller", "ranker"):
                with contextlib.suppress(UnknownComponentError):  # its plugin is not installed
                    self._fitted(f"{kind}s", name)
            elif kind == "index":
                self.vectors()
        return {"db": str(self.db_path), "counts": self.store.counts(),
                "models": models,
                "broken": dict(self.broken),
                "last_train": next(iter(self.store.runs("train", 1)), None),
                "last_evaluation": next(iter(self.store.runs("evaluate", 1)), None)}
