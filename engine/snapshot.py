"""What Ray workers receive (engine.executor's `Shared` and `Portable`): they never read
the shop's SQLite file, which on a cluster they cannot see.

`ShopSnapshot` is a read-only copy of the database: `sqlite3.Connection.serialize()`
bytes, taken in one read, put once in Ray's object store; a worker deserializes them into
an in-memory database of its own (nothing written to its disk, nothing left behind when
it is killed) and opens an `Engine` over that copy with the driver's settings and plugins,
once per job. Everything a worker does then runs the code a local
run runs — the same stored models loaded the way serving loads them, the same history
reads, the same rendering — so its answers are the local executor's. A snapshot rather
than each model's arrays: recallers and rankers read the store, the encoder and the vector
index while they answer (a shopper's history, item texts, item vectors), so a faithful
worker needs the shop, and the file is the shop. Whatever a worker writes stays in its
copy and is thrown away; the driver is the only writer of the real file.

`FittedSnapshot` adds components fitted in this job and not stored (evaluate's, fitted on
the visible part): their state as the artifacts' bytes (`dump_state`, never pickle),
loaded on the worker into fresh components as serving loads a stored model."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .artifacts import dump_state, load_state
from .config import Settings
from .errors import EngineError, PluginError
from .pipeline import Pipeline

if TYPE_CHECKING:  # pragma: no cover
    from .components import Encoder, Ranker, Recaller
    from .engine import Engine
    from .plugins import PluginRegistry


def plugin_names(registry: PluginRegistry) -> tuple[str, ...]:
    return tuple(sorted(name for name, plugin in registry.pm.list_name_plugin()
                        if plugin is not None and not name.startswith("_")))


def worker_registry(names: tuple[str, ...]) -> PluginRegistry:
    from .plugins import load_plugins

    try:
        return load_plugins(only=names)
    except PluginError as exc:
        raise EngineError(f"On the Ray worker {socket.gethostname()}: {exc} Every plugin the "
                          f"driver loaded must be installed on every machine of the cluster (a "
                          f"--plugins-dir folder is not shipped).", title="Plugin missing") from exc


@dataclass
class ShopSnapshot:
    key: str
    database: bytes
    settings: Settings
    plugins: tuple[str, ...]

    def open(self) -> Engine:
        """On a worker: an Engine over an in-memory copy of the database (nothing on disk)."""
        from .engine import Engine

        image = bytearray(self.database)
        image[18] = image[19] = 1  # the header's WAL mark off: a memory database has no WAL
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        conn.deserialize(image)
        return Engine(":memory:", settings=self.settings, registry=worker_registry(self.plugins),
                      connection=conn)


def snapshot(engine: Engine) -> ShopSnapshot:
    """The shop as it is now, for workers. Incremental state not yet saved (an index caught
    up with new products) is saved first, so that workers see what this engine sees."""
    if engine.serving.unsaved:
        engine.save_incremental()
    database = engine.db.conn.serialize()
    return ShopSnapshot(uuid.uuid4().hex, database, engine.settings, plugin_names(engine.registry))


@dataclass
class FittedPipeline:
    """A pipeline, with the engine whose store its components read (a worker's copy stays
    open while the pipeline is used)."""

    pipe: Pipeline
    engine: Engine


@dataclass
class FittedSnapshot:
    """A pipeline of components fitted in this job, for workers (see the module's text).
    `plain`: recallers and quotas only (the validation candidates of `train`), else with the
    catalogue's categories, the new items and the re-rank rules (evaluate's pipeline)."""

    key: str
    shop: ShopSnapshot
    recallers: dict[str, tuple[bytes, str, dict]]
    quotas: dict[str, int]
    ranker: tuple[str, tuple[bytes, str, dict]] | None
    new_items: set[str] = field(default_factory=set)
    plain: bool = False

    def open(self) -> FittedPipeline:
        engine = self.shop.open()
        recallers = {name: _loaded(engine, "recallers", name, blob) for name, blob in self.recallers.items()}
        ranker = _loaded(engine, "rankers", *self.ranker) if self.ranker else None
        if self.plain:
            return FittedPipeline(Pipeline(recallers, dict(self.quotas), ranker), engine)
        pipe = Pipeline(recallers, dict(self.quotas), ranker,
                        categories=engine.serving.catalogue().categories, new_items=self.new_items,
                        **engine.lineup.rules())
        return FittedPipeline(pipe, engine)


@dataclass
class ServingSnapshot:
    """The serving pipeline of a shop (recommend --all), for workers."""

    shop: ShopSnapshot
    recallers: tuple[str, ...] | None
    ranker: str | None
    placement: str

    @property
    def key(self) -> str:
        return self.shop.key

    def open(self) -> FittedPipeline:
        engine = self.shop.open()
        return FittedPipeline(engine.pipeline(self.recallers, self.ranker, self.placement), engine)


@dataclass
class ServingShared:
    """The serving pipeline for a batch job: this engine's here (built once), a snapshot's
    on workers (built once per worker)."""

    engine: Engine
    recallers: tuple[str, ...] | None
    ranker: str | None
    placement: str

    def here(self) -> FittedPipeline:
        return FittedPipeline(self.engine.pipeline(self.recallers, self.ranker, self.placement),
                              self.engine)

    def shipped(self) -> ServingSnapshot:
        return ServingSnapshot(snapshot(self.engine), self.recallers, self.ranker, self.placement)


def _loaded(engine: Engine, kind: str, name: str, blob: tuple[bytes, str, dict]):
    component = engine.make(kind, name)
    component.load(load_state(*blob))
    return component


@dataclass
class FittedShared:
    """A pipeline of components fitted in this job: `pipe` here; on workers, rebuilt from
    the components' state. `shop`: a snapshot taken earlier in the same job, reused (the
    validation cuts of `train` ship new recallers, not a new copy of the shop)."""

    engine: Engine
    pipe: Pipeline
    recallers: dict[str, Recaller]
    ranker: Ranker | None
    new_items: set[str] = field(default_factory=set)
    plain: bool = False
    shop: ShopSnapshot | None = None

    def here(self) -> FittedPipeline:
        return FittedPipeline(self.pipe, self.engine)

    def shipped(self) -> FittedSnapshot:
        ranker = (self.ranker.name, dump_state(self.ranker.state())) if self.ranker else None
        return FittedSnapshot(uuid.uuid4().hex, self.shop or snapshot(self.engine),
                              {n: dump_state(r.state()) for n, r in self.recallers.items()},
                              dict(self.pipe.quotas), ranker, set(self.new_items), self.plain)


@dataclass
class EncoderSpec:
    """The text encoder, for workers: its plugin, name and settings (no database)."""

    key: str
    name: str
    config: dict[str, Any]
    plugins: tuple[str, ...]

    def open(self) -> Encoder:
        return worker_registry(self.plugins).component("encoders", self.name)(self.config)


@dataclass
class EncoderShared:
    encoder: Encoder
    registry: PluginRegistry

    def here(self) -> Encoder:
        return self.encoder

    def shipped(self) -> EncoderSpec:
        config = self.encoder.config.model_dump(mode="json")
        plugins = plugin_names(self.registry)
        # the same encoder has the same key: a worker that made it keeps it for the next job
        key = hashlib.sha256(json.dumps([self.encoder.name, config, plugins], sort_keys=True,
                                        default=str).encode()).hexdigest()
        return EncoderSpec(key, self.encoder.name, config, plugins)
