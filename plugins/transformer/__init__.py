"""`transformer`: a learned sequence model of what shoppers do next (SASRec-style).

Causal self-attention over the shopper's last `max_len` items (in time order) predicts the
next item among the whole catalogue. Item vectors are learned, plus a learned projection of
the item's text vector (MiniLM) when the catalogue is encoded — so similar products share
what is learned, and a product added after training is not blind: its text gives it a
vector. Trained on CPU with early stopping on each shopper's newest item (see `_training`);
the weights are stored as safetensors.

At request time it reads the shopper's current history, so the newest click changes the
next list without a retrain; queries are answered in batches (one forward pass each)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engine import Dataset, ModelState, Query, Recaller, banned_items, hookimpl, mention, top_n


class TransformerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_len: int = Field(50, ge=2, le=512, description="most recent items of a shopper the model reads")
    dim: int = Field(64, ge=8, description="size of item vectors and hidden states")
    layers: int = Field(2, ge=1, description="self-attention blocks")
    heads: int = Field(2, ge=1, description="attention heads per block (must divide dim)")
    dropout: float = Field(0.2, ge=0, lt=1)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1, description="sequence windows per training step")
    max_epochs: int = Field(200, ge=1)
    patience: int = Field(5, ge=1, description="epochs without a better validation score before stopping")
    warm_patience: int = Field(2, ge=1, description="the same for a fit that starts from the previous fit")
    budget_seconds: float = Field(900.0, gt=0, description="CPU seconds of training steps at most (this process's; a partner process works alongside)")
    validation_users: int = Field(2000, ge=0, description="shoppers whose newest item is held out to stop training")
    text: bool = Field(True, description="add a learned projection of the item's text vector (MiniLM)")
    full_softmax_items: int = Field(20000, ge=1, description="above this many items, train against a sample")
    negatives: int = Field(2000, ge=1, description="sampled items per step beyond full_softmax_items")
    threads: int = Field(1, ge=0, description="torch threads per training process (0: torch's default; more than one spins and slows down on a busy machine, and makes two runs differ)")
    processes: int = Field(2, ge=1, le=2, description="training processes sharing every batch: 2 forks a partner that computes half of each step (Linux; the model depends on this number, not on the machine's cores)")
    partner_max_events: int = Field(1_000_000, ge=0, description="above this many events the fit trains in one process: a forked partner shares the train process's memory only until either side rewrites it, and a big shop's train process holds gigabytes")
    seed: int = 0


class TransformerRecaller(Recaller):
    name = "transformer"
    description = "A self-attentive sequence model of what shoppers do next (SASRec-style, trained)"
    Config = TransformerConfig
    default_quota = 100
    on_trial = True  # joins the default pipeline only when it improves it on validation
    # fitted again at every validation cut (each fit starts warm from the previous one): one
    # fit for all cuts (`refit_per_cut = False`) saved 45 s on MovieLens-100K but cost its
    # pipeline 2.5% (NDCG@10 0.1837 -> 0.1792): the rankers learn its weight from those cuts

    def __init__(self, config=None):
        super().__init__(config)
        self._net = None
        self.report: dict = {}
        self._fit_ids: list[str] = []
        self._fit_size = (0, 0.0)  # the last fit's (events, newest time)
        self._fit_trained = None  # the last fit's weights (a warm start for the next fit)

    # -- fitting -----------------------------------------------------------------------

    @contextmanager
    def _torch(self):
        """torch with this model's thread count, restored afterwards: the setting is global,
        and another plugin's fit (bert's, on all cores) must not inherit it."""
        import torch

        before = torch.get_num_threads()
        if self.config.threads and self.config.threads != before:
            torch.set_num_threads(self.config.threads)
        try:
            yield torch
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    def _text_vectors(self, item_ids: Sequence[str]) -> np.ndarray | None:
        """The items' text vectors from the engine's index (zeros where an item has none),
        or None when there is no index or `text` is off."""
        index = self.resources.vectors
        if not self.config.text or index is None or not len(index):
            return None
        dim = index.dim
        out = np.zeros((len(item_ids), dim), np.float32)
        for j, item in enumerate(item_ids):
            v = index.vector(item)
            if v is not None:
                out[j] = v
        return out

    def fit(self, data: Dataset, progress=None) -> None:
        with self._torch() as torch:
            self._fit(data, progress, torch)

    def _fit(self, data: Dataset, progress, torch) -> None:
        from . import _training
        from ._model import SequenceModel

        cfg = self.config
        torch.manual_seed(cfg.seed)
        seqs = _training.user_sequences(data.users, data.items, data.ts)
        prep = _training.prepare(seqs, cfg.max_len, cfg.validation_users, cfg.seed)
        ids = [str(i) for i in data.item_ids]
        text = self._text_vectors(ids)
        net = SequenceModel(len(ids), cfg.dim, cfg.max_len, cfg.layers, cfg.heads, cfg.dropout,
                            None if text is None else torch.from_numpy(text))
        self.report = {"warm_start": False}
        size = (data.n_events, float(data.ts.max()) if data.n_events else 0.0)
        self._warm_start(net, ids, torch, size)
        if len(prep.inputs):
            if self.report["warm_start"]:
                cfg = cfg.model_copy(update={"patience": cfg.warm_patience})
            if data.n_events > cfg.partner_max_events:
                cfg = cfg.model_copy(update={"processes": 1})
            self.report.update(_training.train(net, torch, prep, cfg, progress))
        self._fit_ids, self._fit_size = ids, size
        self._fit_trained = {k: v.detach().clone() for k, v in net.state_dict().items()}
        known = data.known if data.known is not None else np.ones(data.n_items, bool)
        with torch.no_grad():
            vectors = net.item_vectors().numpy().copy()
        project = net.project.weight.detach().numpy().copy() if net.project is not None else None
        self._set(net, ids, np.asarray(known, bool), vectors, project)

    def _warm_start(self, net, ids: list[str], torch, data_size: tuple[int, float]) -> None:
        """A fit on more of the same data than the previous fit of this instance (in a
        `train`, the validation cuts come first, each on less data than the one before, and
        the fit on all of it last) starts from the previous weights, item rows matched by id,
        so it needs a few epochs instead of dozens. A fit on less data starts afresh: a model
        that saw a shopper's later steps must not propose them at an earlier cut."""
        previous = self._net
        if previous is None or self._fit_trained is None or \
                (previous.dim, previous.max_len) != (net.dim, net.max_len) or \
                self._fit_size[0] > data_size[0] or self._fit_size[1] > data_size[1]:
            return
        old = self._fit_trained
        row = {item: j for j, item in enumerate(self._fit_ids)}
        with torch.no_grad():
            for name, value in net.state_dict().items():
                if name in old and old[name].shape == value.shape and name != "item.weight":
                    value.copy_(old[name])
            weight = net.item.weight
            for j, item in enumerate(ids):
                k = row.get(item)
                if k is not None:
                    weight[j + 1] = old["item.weight"][k + 1]
        self.report["warm_start"] = True

    def _set(self, net, ids: list[str], known: np.ndarray, vectors: np.ndarray,
             project: np.ndarray | None) -> None:
        self._net, self.ids, self.known = net, ids, known
        self.trained_vectors, self.project = vectors, project
        self._serving = None  # (index of ids, ids, recallable, torch vectors), built on first use
        self._fitted = True

    # -- state ---------------------------------------------------------------------------

    def state(self) -> ModelState:
        arrays = {k: v.detach().numpy() for k, v in self._net.state_dict().items()
                  if not k.startswith(("item.", "project."))}
        arrays["vectors"] = self.trained_vectors
        arrays["known"] = self.known.astype(np.uint8)
        if self.project is not None:
            arrays["project"] = self.project
        cfg = self.config
        meta = {"item_ids": self.ids, "report": self.report,
                "shape": {"dim": cfg.dim, "max_len": cfg.max_len, "layers": cfg.layers,
                          "heads": cfg.heads}}
        return ModelState(arrays=arrays, meta=meta, format="safetensors")

    def load(self, state: ModelState) -> None:
        import torch

        from ._model import SequenceModel

        shape, a = state.meta["shape"], state.arrays
        ids = list(state.meta["item_ids"])
        net = SequenceModel(len(ids), shape["dim"], shape["max_len"], shape["layers"], shape["heads"], 0.0)
        weights = {k: torch.from_numpy(np.array(v)) for k, v in a.items()
                   if k not in ("vectors", "known", "project")}
        weights["item.weight"] = torch.from_numpy(np.array(a["vectors"]))  # the combined vectors
        net.load_state_dict(weights, strict=True)
        net.eval()
        self.report = state.meta.get("report", {})
        self._set(net, ids, np.asarray(a["known"], bool), np.array(a["vectors"]),
                  np.array(a["project"]) if "project" in a else None)

    # -- serving -------------------------------------------------------------------------

    def _serving_items(self):
        """The items the model can name: those it was trained with, and — when it learned
        from text — every product encoded since (its vector is the projection of its text).
        Rebuilt when the vector index grows."""
        index = self.resources.vectors
        size = len(index) if index is not None else 0
        if self._serving is not None and self._serving[0] == size:
            return self._serving[1:]
        import torch

        ids, vectors, known = list(self.ids), self.trained_vectors, self.known
        position = {item: j for j, item in enumerate(ids)}
        if self.project is not None and index is not None:
            new = [item for item in index.ids if item not in position]
            if new:
                text = np.stack([index.vector(item) for item in new]).astype(np.float32)
                vectors = np.concatenate([vectors, text @ self.project.T])
                known = np.concatenate([known, np.ones(len(new), bool)])
                position.update({item: len(ids) + j for j, item in enumerate(new)})
                ids = ids + new
        self._serving = (size, position, ids, known, torch.from_numpy(np.ascontiguousarray(vectors, np.float32)))
        return self._serving[1:]

    def _inputs(self, q: Query, position: dict[str, int]) -> list[int]:
        """The model rows of the query's recent items, oldest first (an item-to-item query:
        that item alone); the same item twice in a row counts once."""
        steps = [h.item_id for h in q.history] if q.history else ([q.item_id] if q.item_id else [])
        rows: list[int] = []
        for item in steps:
            j = position.get(item)
            if j is not None and (not rows or rows[-1] != j + 1):
                rows.append(j + 1)
        return rows[-self._net.max_len:]

    def recall(self, queries: Sequence[Query], n: int):
        with self._torch() as torch:
            return self._recall(queries, n, torch)

    def _recall(self, queries: Sequence[Query], n: int, torch):
        position, ids, known, vectors = self._serving_items()
        length = self._net.max_len
        inputs = [self._inputs(q, position) for q in queries]
        asked = [j for j, rows in enumerate(inputs) if rows]
        scores: dict[int, np.ndarray] = {}
        with torch.no_grad():
            for lo in range(0, len(asked), 256):
                part = asked[lo:lo + 256]
                seqs = np.zeros((len(part), length), np.int64)
                for r, j in enumerate(part):
                    seqs[r, length - len(inputs[j]):] = inputs[j]
                out = self._net.last_scores(torch.from_numpy(seqs), vectors).numpy()
                scores.update(zip(part, out))
        results = []
        for j, q in enumerate(queries):
            if j not in scores:
                results.append(self.candidates([]))
                continue
            rows = inputs[j]
            banned = banned_items(known, position, q.exclude, [r - 1 for r in rows])
            top = top_n(scores[j], n, banned)
            recent = list(dict.fromkeys(ids[r - 1] for r in reversed(rows)))[:2]
            reason = "follows your recent " + ", ".join(mention(item) for item in recent)
            results.append(self.recalled([ids[i] for i in top.tolist()], scores[j][top], reason))
        return results


@hookimpl
def register_recallers(register):
    register(TransformerRecaller)
