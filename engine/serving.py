"""What an Engine keeps in memory between requests, and how it stays true to the database.

`Serving` holds the trained components loaded so far (and those whose model would not
load: `broken`, off until the models change), the catalogue view the filters read, the
per-user recommendation cache, and the incremental state not yet saved. `sync` notices,
cheaply, what other connections changed (a retrain in a child process, another CLI):
new active models are loaded afresh and every cached list dropped; a changed catalogue
drops cached lists; events stored by someone else drop their users' lists (and the anonymous
ones) and are folded into the incremental recallers (`learning.catch_up`), so that several
processes serving one database answer alike.

Each loaded component's state holds the events up to a row id (`upto`): a trained model
those of its training snapshot, an incremental save those folded in before it (both are
recorded in the artifact's meta as `events_upto`). A process folds in the events after it,
in the order stored, whoever stored them."""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from .artifacts import dump_state, load_state
from .cache import RecommendationCache
from .catalogue import CatalogueView
from .components import Component
from .errors import ArtifactError
from .store import Store
from .types import Event, Interaction

log = logging.getLogger("shelfwise")


@dataclass(frozen=True)
class Seen:
    """What `sync` last saw of the database."""

    version: int          # PRAGMA data_version
    models: str | None    # the active model rows
    catalogue: tuple      # Store.catalogue_mark: items and their vectors
    events: int           # the newest event row id whose shoppers' cached lists were dropped
    # the newest event row id when these models were first seen: a stored model without a
    # recorded `events_upto` (trained by an older version) is taken to hold the events up to it
    models_loaded_at: int


class Serving:
    def __init__(self, store: Store, make: Callable[[str, str], Component]):
        self.store = store
        self._make = make
        self.loaded: dict[str, Component] = {}
        self.absent: set[str] = set()  # components with no trained model (asked once)
        self.broken: dict[str, str] = {}  # stored models that failed to load: name -> why
        # parts that raised on a request (Pipeline.recall, the ranker): name -> what; logged
        # once, left out of the lists they failed, tried again on each request
        self.failing: dict[str, str] = {}
        self.cache = RecommendationCache()
        self.seen: Seen | None = None
        self._catalogue: CatalogueView | None = None
        # state changed since loaded (incremental recallers, the vector index), saved at
        # most every `save_interval` seconds (0: at once) and at close
        self.unsaved: set[str] = set()
        self.save_interval = 0.0
        self._last_save = time.monotonic()
        # whether this process may save incremental state: of several server processes on
        # one database, only the leader does (engine.server.leases); the others keep theirs
        # in memory and load the leader's saves
        self.may_save: Callable[[], bool] = lambda: True
        self.upto: dict[str, int] = {}  # loaded component -> the newest event row id it holds
        self._active: dict[str, int] = {}  # active model name -> artifact row id, as last seen
        self.on_new_models: Callable[[set[str] | None], None] = lambda names: None
        # another connection changed the catalogue (the vector index catches up; the Engine sets it)
        self.on_catalogue_elsewhere: Callable[[], None] = lambda: None
        self.caught_up: int | None = None  # the newest event id `learning.catch_up` folded in

    # -- components ------------------------------------------------------------------------

    def fitted(self, kind: str, name: str) -> Component | None:
        """The component with its active trained state; None if never trained, or if its
        stored model cannot be loaded (a damaged or incompatible file: that component is
        off, with one warning and an entry in `broken`, and the others serve)."""
        key = f"{kind[:-1]}/{name}"
        if key in self.broken or key in self.absent:
            return None
        if key not in self.loaded:
            component = self._make(kind, name)
            try:
                found = self.store.load_artifact(key)
                if found is None:
                    self.absent.add(key)
                    return None
                component.load(load_state(*found))
            except Exception as exc:  # noqa: BLE001 — a plugin's loader may raise anything
                self.disable(key, kind[:-1].capitalize(), name, exc)
                return None
            self.loaded[key] = component
            self.upto[key] = int(found[2].get("events_upto", self._legacy_upto()))
        return self.loaded[key]

    def _legacy_upto(self) -> int:
        if self.seen is None:
            self.sync()
        return self.seen.models_loaded_at

    def disable(self, key: str, what: str, name: str, exc: Exception) -> None:
        why = str(exc) if isinstance(exc, ArtifactError) else (
            f"its stored model cannot be loaded ({type(exc).__name__}: {exc}); it is damaged or "
            f"was trained by another version. Run \"shelfwise train\" to rebuild it.")
        self.broken[key] = f"{what} {name!r} is not used: {why}"
        with warnings.catch_warnings():  # once per damaged model, each one (not once per line)
            warnings.simplefilter("always", RuntimeWarning)
            warnings.warn(self.broken[key], RuntimeWarning, stacklevel=5)

    def refuse_broken(self, key: str) -> None:
        """A component asked for by name whose model is damaged: say so (not "not trained")."""
        if key in self.broken:
            raise ArtifactError(self.broken[key])

    def drop_models(self, names: set[str] | None = None) -> None:
        """New models are active: load these (None: every one) afresh when asked, and try
        the broken again."""
        if names is None:
            self.loaded.clear()
            self.absent.clear()
            self.broken.clear()
            self.upto.clear()
        else:
            for key in names:
                self.loaded.pop(key, None)
                self.absent.discard(key)
                self.broken.pop(key, None)
                self.upto.pop(key, None)
        self.caught_up = None
        self.failing.clear()
        self._catalogue = None
        self.on_new_models(names)

    # -- the catalogue ---------------------------------------------------------------------

    def catalogue(self) -> CatalogueView:
        if self._catalogue is None:
            self._catalogue = self.store.catalogue_view()
        return self._catalogue

    def catalogue_changed(self) -> None:
        self._catalogue = None
        self.cache.clear()

    def first_events(self, events: Sequence[Event]) -> None:
        if self._catalogue is not None:  # a product's first event: no longer new
            self._catalogue.first_event(e.item_id for e in events)

    # -- staying in step with other connections ----------------------------------------------

    def _look(self, **changes: Any) -> Seen:
        store = self.store
        seen = Seen(store.data_version(), store.active_model_ids(), store.catalogue_mark(),
                    store.newest_event_id(), 0)
        self._active = store.active_model_map()
        return replace(seen, models_loaded_at=seen.events, **changes)

    def adopt(self, models: str | None = None, own: bool = False) -> None:
        """After our own writes to the catalogue: what is loaded and cached already reflects
        them. `models` with `own`: the active set our own write produced (read inside its
        transaction). The active set is otherwise never re-read here: models another
        connection activated in the meantime must still be noticed by `sync`. Events are
        noticed by `notice_events` (ours and others' alike)."""
        if self.seen is not None:
            seen = self.seen
            self.seen = replace(seen, catalogue=self.store.catalogue_mark(),
                                models=models if own else seen.models)

    def sync(self) -> None:
        """Notice what other connections changed (see the module's text). Cheap when nothing
        did: PRAGMA data_version moves only when another connection commits."""
        seen = self.seen
        if seen is None:
            self.seen = self._look()
            return
        models = self.store.active_model_ids()
        if models != seen.models:
            before, now = self._active, self.store.active_model_map()
            changed = {name for name in {*before, *now} if before.get(name) != now.get(name)}
            self.drop_models(changed)
            self.unsaved -= changed  # increments of the replaced models
            self.cache.clear()
            self.seen = self._look()
            return
        version = self.store.data_version()
        if version == seen.version:
            return
        catalogue = self.store.catalogue_mark()
        if catalogue != seen.catalogue:
            self.catalogue_changed()
            self.on_catalogue_elsewhere()
        self.seen = replace(seen, version=version, models=models, catalogue=catalogue)
        self.notice_events()

    def notice_events(self) -> list[Event]:
        """Events stored since last noticed (by this connection or any other): their shoppers'
        cached lists and the anonymous ones are dropped, their products are no longer new.
        Returns them, in the order stored."""
        seen = self.seen
        newest = self.store.newest_event_id()
        if seen is None or newest == seen.events:
            return []
        if newest < seen.events:  # the newest were erased: their row ids will be used again
            self.upto = {key: min(upto, newest) for key, upto in self.upto.items()}
            self.caught_up = None
        events = self.store.events_between(seen.events, newest)
        self.cache.drop_users({e.user_id for e in events} | {None})
        self.first_events(events)
        self.seen = replace(seen, events=newest)
        return events

    # -- learning from new events between retrains ---------------------------------------

    def behind(self, names: Sequence[str]) -> dict[int, list[str]]:
        """The recallers of `names` (loaded now if need be) whose state lacks events stored
        since: their `upto` -> their names."""
        newest = self.seen.events if self.seen is not None else 0
        out: dict[int, list[str]] = {}
        for name in names:
            if self.fitted("recallers", name) is not None:
                upto = self.upto[f"recaller/{name}"]
                if upto < newest:
                    out.setdefault(upto, []).append(name)
        return out

    def update_recallers(self, names: Sequence[str], events: Sequence[Event],
                         histories: Mapping[str, Sequence[Interaction]], upto: int) -> None:
        """Fold `events` (those after each recaller's `upto`, up to row id `upto`) in."""
        for name in names:
            key = f"recaller/{name}"
            recaller = self.fitted("recallers", name)
            if recaller is None:
                continue
            try:
                if events and recaller.update(events, histories):
                    self.unsaved.add(key)
            except Exception as exc:  # noqa: BLE001 — a plugin's bug: it serves on without them
                if key not in self.failing:
                    self.failing[key] = f"update: {type(exc).__name__}: {exc}"
                    log.warning("%s could not fold in new events and serves without them: %s",
                                key, self.failing[key])
            self.upto[key] = max(self.upto.get(key, 0), upto)

    def save_due(self) -> bool:
        return (bool(self.unsaved) and time.monotonic() - self._last_save >= self.save_interval
                and self.may_save())

    def save(self, blob_of: Callable[[str], tuple[bytes, str, dict] | None]) -> dict[str, int]:
        """Save what changed since loaded as new active versions (`blob_of` gives the blobs
        of state that is not a loaded component, such as the vector index). Only the newest
        incremental version of each is kept. Nothing is saved if another connection
        activated new models meanwhile: those win."""
        names = sorted(self.unsaved)
        self.unsaved.clear()
        self._last_save = time.monotonic()
        blobs = {}
        for name in names:
            component = self.loaded.get(name)
            blob = dump_state(component.state()) if component is not None else blob_of(name)
            if blob is not None:
                payload, fmt, meta = blob
                meta = {**meta, "incremental": True, "pid": os.getpid()}
                if name in self.upto:
                    meta["events_upto"] = self.upto[name]
                blobs[name] = (payload, fmt, meta)
        if not blobs:
            return {}
        with self.store.db.atomic():
            self.store.delete_inactive_incremental(list(blobs))  # a write first: takes the lock
            if self.seen is not None and self.store.active_model_ids() != self.seen.models:
                return {}
            versions = self.store.save_artifacts(blobs)
            self.store.delete_inactive_incremental(list(blobs))
            mine = self.store.active_model_ids()
            self._active = self.store.active_model_map()
        self.adopt(models=mine, own=True)
        # the superseded copy's pages are free and the next save reuses them: no vacuum or
        # log checkpoint here, in the request path (a TRUNCATE checkpoint waits for readers)
        return versions
