"""VectorIndex: approximate nearest neighbours over item vectors (hnswlib, cosine space).

Items are addressed by their string ids; hnswlib only knows integer labels, so the index
keeps a label -> id list (a label is never reused: replacing an item's vector marks its old
label deleted and adds a new one, and `remove` marks labels deleted). Deleted labels stay
in the graph, which keeps it connected, until the next `build` compacts it.

Beside the graph the index keeps a float32 copy of the (unit-length) vectors, one row per
label. hnswlib holds them too, but its `get_items` builds Python objects and costs about
65 microseconds per 384-d vector: exact search over 1,000 eligible items took 65 ms through
it and well under 1 ms from the copy, and `vector(id)` is called for every hit by the content
recaller. The copy costs dim x 4 bytes per label: 3 MB for a 2,000-item catalogue at 384-d,
150 MB for 100,000 items.

Persistence is hnswlib's own file format plus JSON metadata (`to_bytes`/`from_bytes`),
never pickle; the copy is read back out of hnswlib's file. hnswlib is imported inside
methods, so `import engine` stays light.

Threads: every public method takes one lock, so queries from several threads (the HTTP
server) may run alongside `add`/`remove`. Queries are serialised by it too: hnswlib's `ef`
is one setting of the whole index, and a query that asks for k > ef raises it for itself.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
from typing import Callable, Collection, Iterable, Optional, Sequence, Union

import numpy as np

from .errors import ArtifactError

Allowed = Optional[Union[Collection[str], Callable[[str], bool]]]  # ids, or a test on an id
Hits = list[list[tuple[str, float]]]

META_VERSION = 1
BUILD_BATCH = 5_000     # vectors per add_items call in `build` (one progress report each)
EXACT_CHUNK = 8_192     # vectors per step of an exact search (bounds its memory)


def _hnswlib():
    import hnswlib

    return hnswlib


class VectorIndex:
    """An HNSW index over L2-normalised float32 item vectors, keyed by string ids.

    :param dim: vector dimension.
    :param M: graph degree (hnswlib's M); more is better recall, more memory.
    :param ef_construction: candidate list size while inserting; more is a better graph.
    :param ef: candidate list size while searching (raised to k for a query asking for more).
    :param seed: hnswlib's random seed; with ``threads=1`` the graph, hence every answer,
        is the same on every run.
    :param threads: threads for inserting. More builds faster but the graph then depends on
        thread timing, so answers may differ (slightly) from run to run.
    :param brute_force_limit: a query restricted by `allowed` ids (not a predicate) to at
        most this many eligible items is answered by exact search, which is then exact and
        cheaper: the filtered graph search wades through ineligible neighbours, calling
        a Python filter for each. Measured on 2 CPUs (benchmarks/bench_vectors.py), graph
        vs exact p50: 100k items, 1k eligible 33 vs 0.4 ms, 5k 15 vs 10 ms, 10k 15 vs
        21 ms; 20k items, 2k eligible 3.1 vs 1.4 ms, 5k 2.3 vs 4.2 ms.
    """

    def __init__(self, dim: int, *, M: int = 16, ef_construction: int = 200, ef: int = 64,
                 seed: int = 100, threads: int = 1, brute_force_limit: int = 4_096):
        if int(dim) < 1:
            raise ValueError(f"dim must be at least 1, not {dim!r}")
        self.dim = int(dim)
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self._ef = int(ef)
        self.seed = int(seed)
        self.threads = int(threads)
        self.brute_force_limit = int(brute_force_limit)
        self._index = None                 # hnswlib.Index, made by the first add
        self._label_ids: list[str] = []    # label -> id, deleted labels included
        self._label_of: dict[str, int] = {}  # live id -> label
        self._deleted: set[int] = set()
        self._matrix = np.zeros((0, self.dim), np.float32)  # label -> unit vector
        self._lock = threading.Lock()

    @property
    def ef(self) -> int:
        """Search candidate list size: higher is better recall and slower queries."""
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        with self._lock:
            self._ef = int(value)
            if self._index is not None:
                self._index.set_ef(self._ef)

    def params(self) -> dict:
        return {"M": self.M, "ef_construction": self.ef_construction, "ef": self.ef,
                "seed": self.seed, "threads": self.threads,
                "brute_force_limit": self.brute_force_limit}

    # -- building and changing -------------------------------------------------------------

    @classmethod
    def build(cls, ids: Sequence[str], vectors: np.ndarray, progress=None,
              **params) -> "VectorIndex":
        """A new index over `ids` (row i of `vectors` is the vector of ids[i]).

        `progress(stage, done, total, message)` is called before the first batch and after
        each batch of BUILD_BATCH vectors."""
        ids = list(ids)
        matrix = _as_matrix(vectors, len(ids))
        index = cls(matrix.shape[1], **params)
        ids, matrix = _last_wins(ids, matrix)
        total = len(ids)
        with index._lock:
            index._reserve(total, exact=True)
        if progress:
            progress("index", 0, total, f"indexing {total:,} vectors")
        for start in range(0, total, BUILD_BATCH):
            stop = min(start + BUILD_BATCH, total)
            with index._lock:
                index._insert(ids[start:stop], matrix[start:stop])
            if progress:
                progress("index", stop, total, f"{stop:,} of {total:,} vectors indexed")
        return index

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add items; an id already present gets the new vector (its old label is marked
        deleted). The graph is extended, never rebuilt; capacity grows as needed."""
        ids = list(ids)
        matrix = _as_matrix(vectors, len(ids), self.dim)
        ids, matrix = _last_wins(ids, matrix)
        if not ids:
            return
        with self._lock:
            self._reserve(len(self._label_ids) + len(ids))
            self._insert(ids, matrix)

    def remove(self, ids: Iterable[str]) -> int:
        """Mark items deleted (unknown ids are ignored); returns how many were removed."""
        removed = 0
        with self._lock:
            for item_id in dict.fromkeys(ids):
                label = self._label_of.pop(item_id, None)
                if label is not None:
                    self._index.mark_deleted(label)
                    self._deleted.add(label)
                    removed += 1
        return removed

    def _reserve(self, needed: int, exact: bool = False) -> None:
        if self._index is None:
            self._index = _hnswlib().Index(space="cosine", dim=self.dim)
            self._index.init_index(max_elements=max(needed, 1), M=self.M,
                                   ef_construction=self.ef_construction, random_seed=self.seed)
            self._index.set_ef(self.ef)
        capacity = self._index.get_max_elements()
        if needed > capacity:
            # Grow by half at least, so adding items one by one stays cheap.
            capacity = needed if exact else max(needed, capacity * 3 // 2, 1_024)
            self._index.resize_index(capacity)
        if len(self._matrix) < capacity:
            grown = np.empty((capacity, self.dim), np.float32)
            used = len(self._label_ids)
            grown[:used] = self._matrix[:used]
            self._matrix = grown

    def _insert(self, ids: list[str], matrix: np.ndarray) -> None:
        """Add rows with fresh labels, then retire the labels they replace. Input is
        validated before this, so add_items cannot fail half-way on bad data."""
        first = len(self._label_ids)
        labels = np.arange(first, first + len(ids), dtype=np.uint64)
        self._index.add_items(matrix, labels, num_threads=self.threads)
        self._matrix[first:first + len(ids)] = _unit_like_hnswlib(matrix)
        for offset, item_id in enumerate(ids):
            old = self._label_of.pop(item_id, None)  # so `ids` follows label order
            if old is not None:
                self._index.mark_deleted(old)
                self._deleted.add(old)
            self._label_of[item_id] = first + offset
            self._label_ids.append(item_id)

    # -- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._label_of

    @property
    def ids(self) -> list[str]:
        """Live ids, in the order they were (last) added."""
        with self._lock:
            return list(self._label_of)

    @property
    def deleted_count(self) -> int:
        """Dead labels still in the graph (removed or replaced items); a rebuild drops them."""
        return len(self._deleted)

    def vector(self, item_id: str) -> np.ndarray | None:
        """The stored (unit-length) vector of an item, or None."""
        with self._lock:
            label = self._label_of.get(item_id)
            if label is None:
                return None
            return self._matrix[label].copy()

    def vectors(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The stored (unit-length) vectors of `ids` in one gather: (len(ids) x dim matrix,
        whether each id has one; rows of ids without one are zero). About 10 µs for 30
        ids: the diversity re-rank reads its pool this way on every request."""
        with self._lock:
            labels = np.fromiter((self._label_of.get(i, -1) for i in ids), np.int64, len(ids))
            found = labels >= 0
            out = self._matrix[np.where(found, labels, 0)] if len(self._matrix) else \
                np.zeros((len(ids), self.dim), np.float32)
        out[~found] = 0.0
        return out, found

    def query(self, vectors: np.ndarray, k: int, allowed: Allowed = None,
              exclude: Iterable[str] = ()) -> Hits:
        """For each row of `vectors`, up to k (id, cosine similarity), best first.

        Never returns a removed id or one in `exclude`; with `allowed` (a set of ids or a
        predicate on ids) only allowed ids. Each row gets exactly min(k, eligible live
        items) results: hnswlib's filtered search with ef >= k, then exact search for any
        row it could not fill. Sets of at most `brute_force_limit` eligible ids (and k >= all
        eligible items) go straight to exact search."""
        q = _as_queries(vectors, self.dim)
        if k <= 0 or not len(q):
            return [[] for _ in range(len(q))]
        with self._lock:
            if not self._label_of:
                return [[] for _ in range(len(q))]
            skip = self._labels_of(exclude)
            eligible: set[int] | None = None
            if allowed is None:
                wanted = min(k, len(self._label_of) - len(skip))
                accept = (lambda label: label not in skip) if skip else None
            elif callable(allowed):
                # Counting eligible items would call the predicate on every item; try the
                # graph first and count only if it comes back short.
                wanted = min(k, len(self._label_of) - len(skip))
                ids, test = self._label_ids, allowed
                accept = lambda label: label not in skip and bool(test(ids[label]))  # noqa: E731
            else:
                eligible = self._labels_of(allowed) - skip
                wanted = min(k, len(eligible))
                accept = eligible.__contains__
            if wanted <= 0:
                return [[] for _ in range(len(q))]
            if eligible is None and wanted == len(self._label_of) - len(skip):
                eligible = set(self._label_of.values()) - skip  # all of them: no search needed
            if eligible is not None and len(eligible) <= max(self.brute_force_limit, wanted):
                labels, sims = self._exact(q, _labels(eligible), wanted)
                return self._hits(labels, sims)
            rows = self._graph_search(q, wanted, accept)
            short = [r for r, found in enumerate(rows) if found is None]
            if short:
                if eligible is None:
                    eligible = self._eligible(allowed, skip)
                    wanted = min(k, len(eligible))
                labels, sims = self._exact(q[short], _labels(eligible), wanted)
                for r, found in zip(short, self._hits(labels, sims)):
                    rows[r] = found
            return rows

    def exact(self, vectors: np.ndarray, k: int, allowed: Allowed = None,
              exclude: Iterable[str] = ()) -> Hits:
        """Like `query`, by brute force over all live items: the reference for tests and
        recall measurements."""
        q = _as_queries(vectors, self.dim)
        if k <= 0 or not len(q):
            return [[] for _ in range(len(q))]
        with self._lock:
            skip = self._labels_of(exclude)
            eligible = self._eligible(allowed, skip)
            labels, sims = self._exact(q, _labels(eligible), min(k, len(eligible)))
            return self._hits(labels, sims)

    def _eligible(self, allowed, skip: set[int]) -> set[int]:
        if allowed is None:
            return set(self._label_of.values()) - skip
        if callable(allowed):
            return {label for item_id, label in self._label_of.items()
                    if label not in skip and allowed(item_id)}
        return self._labels_of(allowed) - skip

    def _labels_of(self, ids) -> set[int]:
        """Labels of the live ones among `ids` (looked up by `map`, not a Python loop)."""
        if isinstance(ids, (str, bytes)):
            ids = (ids,)
        labels = set(map(self._label_of.get, ids))
        labels.discard(None)
        return labels

    def _graph_search(self, q: np.ndarray, k: int,
                      accept) -> list[list[tuple[str, float]] | None]:
        """hnswlib's search; None for each row it could not fill with k results."""
        index = self._index
        # A Python filter is called with the GIL held, once per visited node: threads then
        # fight over the GIL (a 200-query batch took 40x longer on 2 threads than on 1).
        threads = 1 if accept is not None else -1
        if k > self.ef:
            index.set_ef(k)
        try:
            try:
                labels, distances = index.knn_query(q, k=k, num_threads=threads, filter=accept)
                return self._hits(labels, 1.0 - distances)
            except RuntimeError:  # "Cannot return the results in a contiguous 2D array"
                if len(q) == 1:
                    return [None]
            rows: list[list[tuple[str, float]] | None] = []
            for row in q:  # one short row fails the whole batch: find which
                try:
                    labels, distances = index.knn_query(row[None, :], k=k, num_threads=1,
                                                        filter=accept)
                    rows.append(self._hits(labels, 1.0 - distances)[0])
                except RuntimeError:
                    rows.append(None)
            return rows
        finally:
            if k > self.ef:
                index.set_ef(self.ef)

    def _exact(self, q: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by dot product against the vectors of `labels`: (labels, sims), each (m, k).

        Gathers EXACT_CHUNK rows of the vector copy at a time, so memory stays bounded
        however many items are eligible."""
        m = len(q)
        if k <= 0 or not len(labels):
            return np.zeros((m, 0), np.uint64), np.zeros((m, 0), np.float32)
        labels = np.sort(labels)  # a fixed order makes ties come out the same every time
        q = _unit_like_hnswlib(q)
        best_l = np.zeros((m, 0), np.uint64)
        best_s = np.zeros((m, 0), np.float32)
        for start in range(0, len(labels), EXACT_CHUNK):
            part = labels[start:start + EXACT_CHUNK]
            sims = _dot(q, self._matrix[part.astype(np.intp)])
            cand_s = np.concatenate([best_s, sims], axis=1)
            cand_l = np.concatenate([best_l, np.broadcast_to(part, sims.shape)], axis=1)
            if cand_s.shape[1] > k:
                keep = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
                cand_s = np.take_along_axis(cand_s, keep, axis=1)
                cand_l = np.take_along_axis(cand_l, keep, axis=1)
            best_s, best_l = cand_s, cand_l
        order = np.lexsort((best_l, -best_s), axis=1)
        return np.take_along_axis(best_l, order, axis=1), np.take_along_axis(best_s, order, axis=1)

    def _hits(self, labels: np.ndarray, sims: np.ndarray) -> Hits:
        ids = self._label_ids
        return [[(ids[int(label)], float(sim)) for label, sim in zip(row_l, row_s)]
                for row_l, row_s in zip(labels, sims)]

    # -- persistence -----------------------------------------------------------------------

    def to_bytes(self) -> tuple[bytes, dict]:
        """(hnswlib's own serialisation of the index, JSON-able metadata)."""
        with self._lock:
            self._reserve(0)
            with tempfile.TemporaryDirectory(prefix="shelfwise-hnsw-") as folder:
                path = os.path.join(folder, "index.hnsw")
                self._index.save_index(path)
                with open(path, "rb") as f:
                    payload = f.read()
            meta = {
                "format": "hnswlib", "meta_version": META_VERSION, "space": "cosine",
                "dim": self.dim, "params": self.params(),
                "capacity": int(self._index.get_max_elements()),
                "count": len(self._label_ids), "live": len(self._label_of),
                "labels": list(self._label_ids), "deleted": sorted(self._deleted),
            }
        return payload, meta

    @classmethod
    def from_bytes(cls, payload: bytes, meta: dict) -> "VectorIndex":
        """The index `to_bytes` saved. Raises ArtifactError if payload and meta disagree."""
        try:
            if meta.get("format") != "hnswlib" or meta.get("space") != "cosine":
                raise ValueError(f"format {meta.get('format')!r}, space {meta.get('space')!r}")
            if meta.get("meta_version", 0) > META_VERSION:
                raise ValueError(f"written by a newer Shelfwise "
                                 f"(meta version {meta['meta_version']})")
            index = cls(int(meta["dim"]), **meta["params"])
            labels = [str(i) for i in meta["labels"]]
            deleted = {int(d) for d in meta["deleted"]}
            count = int(meta["count"])
            capacity = int(meta["capacity"])
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"The vector index's metadata is not usable ({e}). "
                                f"Run \"shelfwise train\" to rebuild the index.") from e
        if count != len(labels) or not deleted <= set(range(count)):
            raise ArtifactError("The vector index's metadata does not add up (label count). "
                                "Run \"shelfwise train\" to rebuild the index.")
        hnsw = _hnswlib().Index(space="cosine", dim=index.dim)
        with tempfile.TemporaryDirectory(prefix="shelfwise-hnsw-") as folder:
            path = os.path.join(folder, "index.hnsw")
            with open(path, "wb") as f:
                f.write(payload)
            try:
                hnsw.load_index(path, max_elements=max(capacity, count))
            except RuntimeError as e:
                raise ArtifactError(f"The vector index could not be read ({e}). "
                                    f"Run \"shelfwise train\" to rebuild it.") from e
        if hnsw.element_count != count or hnsw.dim != index.dim:
            raise ArtifactError(f"The vector index holds {hnsw.element_count} vectors of "
                                f"dimension {hnsw.dim}, its metadata says {count} of "
                                f"{index.dim}. Run \"shelfwise train\" to rebuild it.")
        hnsw.set_ef(index.ef)
        index._index = hnsw
        index._matrix = _saved_vectors(payload, hnsw, count, deleted)
        index._label_ids = labels
        index._deleted = deleted
        index._label_of = {item_id: label for label, item_id in enumerate(labels)
                           if label not in deleted}
        if len(index._label_of) != count - len(deleted):
            raise ArtifactError("The vector index's metadata lists an id twice. "
                                "Run \"shelfwise train\" to rebuild the index.")
        return index

    def __reduce_ex__(self, protocol):
        raise TypeError("VectorIndex is not picklable; use to_bytes() and from_bytes().")

    def __repr__(self) -> str:
        return (f"<VectorIndex dim={self.dim} live={len(self._label_of)} "
                f"deleted={len(self._deleted)} M={self.M} ef={self.ef}>")


# -- helpers ---------------------------------------------------------------------------------

def _as_matrix(vectors, n: int, dim: int | None = None) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != n or (dim is not None and matrix.shape[1] != dim):
        want = f"({n}, {dim})" if dim is not None else f"({n}, dim)"
        raise ValueError(f"vectors must have shape {want}, not {matrix.shape}")
    if n and not np.isfinite(matrix).all():
        raise ValueError("vectors contain NaN or infinite values")
    return matrix


def _as_queries(vectors, dim: int) -> np.ndarray:
    q = np.ascontiguousarray(vectors, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"query vectors must have shape (n, {dim}), not {q.shape}")
    if not np.isfinite(q).all():
        raise ValueError("query vectors contain NaN or infinite values")
    return q


def _last_wins(ids: list[str], matrix: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Drop all but the last occurrence of an id repeated within one call."""
    last = {item_id: pos for pos, item_id in enumerate(ids)}
    if len(last) == len(ids):
        return ids, matrix
    keep = sorted(last.values())
    return [ids[p] for p in keep], matrix[keep]


def _dot(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """q @ x.T. For a few queries, numpy's own loop rather than BLAS: OpenBLAS starts its
    thread pool for products this small, and on a busy 2-CPU machine one query against
    2,000 vectors then took 7 ms instead of 0.1 ms."""
    if len(q) <= 4:
        return np.einsum("ij,kj->ik", q, x)
    return q @ x.T


def _labels(labels: set[int]) -> np.ndarray:
    return np.fromiter(labels, np.uint64, len(labels))


def _unit_like_hnswlib(x: np.ndarray) -> np.ndarray:
    """Row-normalise as hnswlib's cosine space does, bit for bit: a float32 sum of squares
    in order, then multiply by 1 / (sqrt + 1e-30); zero rows stay zero. So the copy equals
    what hnswlib stores and exact search agrees with the graph to the last bit."""
    out = np.empty(x.shape, np.float32)
    for start in range(0, len(x), BUILD_BATCH):
        part = x[start:start + BUILD_BATCH]
        squares = np.cumsum(part * part, axis=1, dtype=np.float32)[:, -1]
        scale = np.float32(1.0) / (np.sqrt(squares) + np.float32(1e-30))
        out[start:start + BUILD_BATCH] = part * scale[:, None]
    return out


_HEADER = struct.Struct("=6Q i I 3Q d Q")  # HierarchicalNSW::saveIndex, hnswlib 0.5 to 0.8


def _saved_vectors(payload: bytes, hnsw, count: int, deleted: set[int]) -> np.ndarray:
    """The vectors of a saved index, by label, read from the level-0 block of hnswlib's
    file (a header, then per element: links, vector, label), checked against get_items
    for a few labels; all through get_items (slow) if the layout is not the expected one."""
    dim = hnsw.dim
    out = np.zeros((max(hnsw.get_max_elements(), count), dim), np.float32)
    live = [label for label in range(count) if label not in deleted]
    try:
        offset0, _, n, size, label_at, data_at = _HEADER.unpack_from(payload, 0)[:6]
    except struct.error:
        offset0 = n = size = label_at = data_at = -1
    if (offset0 == 0 and n == count and data_at + 4 * dim <= label_at
            and label_at + 8 <= size and _HEADER.size + n * size <= len(payload)):
        block = np.frombuffer(payload, np.uint8, n * size, _HEADER.size).reshape(n, size)
        labels = block[:, label_at:label_at + 8].copy().view(np.uint64)[:, 0]
        if np.array_equal(np.sort(labels), np.arange(count)):  # every label, once
            vectors = block[:, data_at:data_at + 4 * dim].copy().view(np.float32)
            out[labels.astype(np.intp)] = vectors
            probe = live[:: max(1, len(live) // 3)][:4]
            if not probe or np.array_equal(out[probe], _items(hnsw, probe)):
                return out
    for start in range(0, len(live), EXACT_CHUNK):
        part = live[start:start + EXACT_CHUNK]
        out[part] = _items(hnsw, part)
    return out


def _items(hnsw, labels) -> np.ndarray:
    return np.asarray(hnsw.get_items(labels), np.float32).reshape(len(labels), hnsw.dim)
