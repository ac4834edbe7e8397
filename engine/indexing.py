"""The text encoder and the vector index over the catalogue, kept up to date.

The `embeddings` table (one vector per item and encoder, with the hash of the text it was
made from) is the source of truth; the HNSW index is built from it and updated in place
when products are added, edited or removed. The index is stored with the other
incremental state (`Serving.save`), so a loaded copy may lag the table: `Vectors.index`
catches it up when it loads."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .components import Encoder, ProgressCallback, no_progress
from .executor import chunked
from .memory import give_back_memory
from .serving import Serving

if TYPE_CHECKING:  # pragma: no cover
    from .executor import Executor
    from .plugins import PluginRegistry
    from .vectors import VectorIndex

# the index is rebuilt from the embeddings once it holds more replaced (deleted) vectors
# than this and than half its live ones
REBUILD_AFTER = 256
# an encode of at least this many items is a bulk one: the encoder is released after it
BULK = 256


class Vectors:
    def __init__(self, serving: Serving, choose_encoder: Callable[[], Encoder | None]):
        self.serving = serving
        self.store = serving.store
        self._choose = choose_encoder
        self._encoder: Encoder | None = None
        self._chosen = False
        self._index: VectorIndex | None = None
        self._indexed: dict[str, str] = {}  # item -> content hash of its vector in the index

    def encoder(self) -> Encoder | None:
        """The text encoder (`[pipeline] encoder`, else the installed one of the highest
        priority); None when no encoder plugin is installed."""
        if not self._chosen:
            self._encoder, self._chosen = self._choose(), True
        return self._encoder

    def _release_encoder(self) -> None:
        """After a bulk encode (an import, a first train) the encoder's weights and the
        heap its batches used are given back: `train` comes next and needs the memory
        (the demo shop's peak was 2.14 GiB with them, the target 2 GB). The next text to
        encode (a search, a new product) loads a fresh encoder."""
        self._encoder, self._chosen = None, False
        give_back_memory()

    def forget(self, names: set[str] | None = None) -> None:
        """New models were activated (`names`; None: all): if the index is one of them, the
        stored one is read again when next asked."""
        if names is None or any(name.startswith("index/") for name in names):
            self._index = None

    def catch_up(self) -> None:
        """Another connection changed the catalogue: bring the loaded index up to the
        embeddings it stored (new, edited and removed products)."""
        enc = self._encoder
        if self._index is not None and enc is not None:
            self._indexed = self._catch_up(self._index, enc.name, self._indexed)

    def key(self) -> str:
        enc = self.encoder()
        return f"index/{enc.name}" if enc else ""

    def index(self) -> VectorIndex | None:
        """The active vector index (None before the first `train`, and when the stored one
        cannot be read: then content and search answer nothing and the rest serves)."""
        enc = self.encoder()
        key = self.key()
        if self._index is None and enc is not None and key not in self.serving.broken:
            try:
                found = self.store.load_artifact(key)
                if found is not None:
                    from .vectors import VectorIndex

                    index = VectorIndex.from_bytes(found[0], found[2])
                    self._indexed = self._catch_up(index, enc.name, found[2].get("content"))
                    self._index = index
            except Exception as exc:  # noqa: BLE001 — whatever the damage, only this part stops
                self.serving.disable(key, "Vector index", enc.name, exc)
        return self._index

    def _catch_up(self, index: VectorIndex, encoder: str, saved: dict[str, str] | None) -> dict[str, str]:
        """Bring a loaded index up to the `embeddings` table. `saved`: item -> content hash
        the stored index holds (None: an index from before this was recorded, whose items
        are taken as current). Returns that map, now current."""
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
            self.serving.unsaved.add(f"index/{encoder}")
        return stored

    def blob(self, name: str) -> tuple[bytes, str, dict] | None:
        """The index as a stored artifact (for `Serving.save`), with the content it holds."""
        if name != self.key() or self._index is None:
            return None
        payload, meta = self._index.to_bytes()
        return payload, "hnsw", {**meta, "content": self._indexed}

    def refresh(self, progress: ProgressCallback = no_progress, rebuild: bool = False,
                executor: Executor | None = None, registry: PluginRegistry | None = None) -> dict[str, Any]:
        """Encode new and edited items, drop removed ones, and bring the index up to date
        incrementally (or rebuild it). Returns what was done; the index is marked unsaved.
        `executor`: where the items are encoded (default: here; `registry`: the plugins
        the workers load to make the same encoder)."""
        enc = self.encoder()
        if enc is None:
            return {}
        items = list(self.store.catalogue())
        stored = self.store.embedding_hashes(enc.name)
        hashes = {item.item_id: enc.content_hash(item) for item in items}
        todo = [item for item in items if stored.get(item.item_id) != hashes[item.item_id]]
        gone = sorted(set(stored) - set(hashes))
        started = time.perf_counter()
        vectors = None
        if todo:
            progress(f"encode {enc.name}", 0, len(todo), f"{len(todo):,} new or changed items")
            vectors = encode(enc, todo, progress, executor, registry)
            self.store.save_embeddings(enc.name, [i.item_id for i in todo],
                                       [hashes[i.item_id] for i in todo], vectors)
            if len(todo) >= BULK:
                self._release_encoder()
        if gone:
            self.store.delete_embeddings(enc.name, gone)
        encode_seconds = time.perf_counter() - started
        started = time.perf_counter()
        index, changed = self._updated(None if rebuild else self.index(), enc, todo, vectors, gone, progress)
        if index is None:
            return {"encoded": 0, "removed": 0, "indexed": 0}
        self._index = index
        self._indexed = {item_id: hashes[item_id] for item_id in index.ids if item_id in hashes}
        self.serving.broken.pop(self.key(), None)  # rebuilt from the embeddings if it was damaged
        if changed:
            self.serving.unsaved.add(self.key())
        return {"encoder": enc.name, "encoded": len(todo), "removed": len(gone),
                "indexed": len(index), "encode_seconds": encode_seconds,
                "index_seconds": time.perf_counter() - started}

    def _updated(self, index, enc: Encoder, todo, vectors, gone, progress):
        """(the index with the changes applied, whether it changed); built afresh from the
        embeddings when there is none, its dimension differs, or it holds too many
        replaced vectors. (None, False) when there is nothing to index."""
        if index is not None and index.deleted_count > max(REBUILD_AFTER, len(index) // 2):
            index = None  # replaced vectors leave deleted graph nodes: start afresh now and then
        if index is None or index.dim != enc.dim:
            from .vectors import VectorIndex

            ids, matrix = self.store.embeddings(enc.name)
            if not ids:
                return None, False
            return VectorIndex.build(ids, matrix, progress=progress), True
        if todo:
            index.add([i.item_id for i in todo], vectors)
        if gone:
            index.remove(gone)
        return index, bool(todo or gone)


# items per task when a cluster encodes the catalogue
ENCODE_CHUNK = 256


def encode(enc: Encoder, items: list, progress: ProgressCallback, executor: Executor | None,
           registry: PluginRegistry | None) -> np.ndarray:
    """The items' vectors, by `enc` here, or by the same encoder (plugin, name, settings)
    on the executor's workers, in chunks of ENCODE_CHUNK, concatenated in order. The
    caller (the driver) writes them in one transaction."""
    stage = f"encode {enc.name}"
    if executor is None or executor.kind == "local" or registry is None:
        return enc.encode_items(items, progress=lambda _s, d, t, m="": progress(stage, d, t, m))
    from .snapshot import EncoderShared

    chunks = chunked(items, ENCODE_CHUNK)
    parts, done = [], 0
    for part, vectors in zip(chunks, executor.map(_encode_chunk, chunks, EncoderShared(enc, registry))):
        parts.append(vectors)
        done += len(part)
        progress(stage, done, len(items), f"on {executor.describe()}")
    return np.concatenate(parts).astype(np.float32, copy=False)


def _encode_chunk(items: list, enc: Encoder) -> np.ndarray:
    return enc.encode_items(items)
