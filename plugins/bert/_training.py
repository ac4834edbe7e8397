"""One fit of the `bert` ranker (`BertRanker.fit`): what its stages share — the moments,
their recall features and contexts, the best weights so far — and the stages themselves.

Stage 1 trains the head on the recall features alone (cheap: no text). Stage 2 lets the
text in through the fine-tuned top layer, starting from stage 1's best; early stopping over
both on the early-stopping moments' NDCG@10, and the text is kept only if it beats stage 1
beyond chance. The random draws happen in a fixed order and the work is counted in steps
(a wall-clock cap only when `max_minutes` asks for one), so a fit is deterministic by seed.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from engine import Candidate, CandidateSet, RankingExample, give_back_memory, item_ids, ndcg_at

from ._features import ItemStats, feature_names

if TYPE_CHECKING:
    from . import BertRanker

K = 10  # the NDCG cut-off early stopping watches
KV_BYTES = 256 << 20  # the early-stopping items' keys and values held at once
TRIM_EVERY = 10  # steps between giving the freed heap back (each step's tensors are a
# different size, and glibc's heap keeps them: the demo shop's feature stage swung by 0.4 GB)


class Training:
    """The state of one `BertRanker.fit`; `run()` trains and returns the fit's report."""

    def __init__(self, ranker: BertRanker, examples: Sequence[RankingExample], data,
                 progress=None, started: float | None = None):
        self.ranker, self.net, self.data, self.cfg = ranker, ranker.net, data, ranker.config
        self.torch = ranker._torch()
        self.say = progress or (lambda *a: None)
        self.started = time.perf_counter() if started is None else started
        self.usable = [ex for ex in examples if ex.candidates and ex.relevant]
        self.rng = np.random.default_rng(self.cfg.seed)
        self.val, self.train = self._split()
        self.views = {id(data): ranker._item_stats}  # dataset -> its item statistics
        self.position = feature_names(ranker.recallers).index("position")
        self.attrs = data.user_attrs
        self.ctx_train: list[str] = []
        self.ctx_val: list[str] = []
        self.u_val = None  # early-stopping contexts' states, encoded when the text stage starts
        self.u_train: dict[int, tuple] = {}  # moment -> (states, mask), encoded when first drawn
        self.item_width, self.hidden = 1, 1  # the cached item states' widest and size
        self.val_groups: list[list[int]] = []  # early-stopping moments scored together
        self.step, self.total_steps = 0, 0
        self.losses: list[float] = []
        self.curve: list[tuple[str, int, float]] = []  # (stage, step, validation NDCG@10)
        self.text_test: dict = {}
        self.cut_by_minutes = False  # the `max_minutes` cap ended a stage early

    def _split(self) -> tuple[list[RankingExample], list[RankingExample]]:
        """(early-stopping moments, training moments with a recalled relevant item)."""
        cfg, usable = self.cfg, self.usable
        order = self.rng.permutation(len(usable))
        n_val = min(max(1, int(round(cfg.val_share * len(usable)))), cfg.max_val_examples) \
            if len(usable) > 1 else 0
        val = [usable[i] for i in sorted(order[:n_val])]
        train = [usable[i] for i in sorted(order[n_val:])]
        return val, [ex for ex in train if not ex.relevant.isdisjoint(item_ids(ex.candidates))]

    # -- features and texts ------------------------------------------------------------

    def _stats_of(self, ex: RankingExample) -> ItemStats:
        """Item statistics as of the example's cut (an earlier cut has its own view)."""
        known = ex.known if ex.known is not None else self.data
        if id(known) not in self.views:
            self.views[id(known)] = ItemStats.from_dataset(known)
        return self.views[id(known)]

    def _features(self, cands, ex: RankingExample) -> np.ndarray:
        return self.ranker._features(cands, ex.query, self._stats_of(ex), self.attrs.get(ex.query.user_id, {}))

    def _labelled(self, ex: RankingExample) -> tuple[np.ndarray, np.ndarray]:
        cands = CandidateSet.of(ex.candidates)
        labels = np.array([item in ex.relevant for item in cands.items], dtype=bool)
        return self._features(cands, ex), labels

    def prepare(self) -> None:
        """The moments' recall features; with the text, their contexts and the items whose
        encoder states the text stage needs."""
        cfg, data, ranker = self.cfg, self.data, self.ranker
        self.say("bert", 0, None, "features and cached encoder states")
        catalogue = [str(i) for i in data.item_ids[data.known]] if data.known is not None \
            else [str(i) for i in data.item_ids]
        # the training moments' features in half precision (the demo shop's 7,000 moments
        # x 450 candidates x 47 features: 0.7 GB as float32); a step reads them back as float32
        self.train_f = [(f.astype(np.float16), labels) for f, labels in map(self._labelled, self.train)]
        self.val_f = [self._labelled(ex) for ex in self.val]
        if cfg.text:
            self.ctx_train = [ranker.context_text(ex.query) for ex in self.train]
            self.ctx_val = [ranker.context_text(ex.query) for ex in self.val]
            self.ctx_width = ranker._context_width(self.ctx_train)
            if len(catalogue) > 4000:  # random negatives from a sample of a big catalogue
                catalogue = [catalogue[j] for j in self.rng.choice(len(catalogue), 4000, replace=False)]
            self.text_ids = sorted({i for ex in self.usable for i in item_ids(ex.candidates)} | set(catalogue))
        self.catalogue = catalogue

    def _encode_texts(self) -> float:
        """The frozen layers' states of every item and context, computed when the text
        stage starts: a shop whose budget ends with stage 1 never pays for them (and the
        contexts go through in chunks: in one batch they took gigabytes). Seconds taken."""
        began = time.perf_counter()
        self.say("bert", self.step, self.total_steps, f"encoding {len(self.text_ids):,} items and "
                                                      f"{len(self.ctx_val):,} early-stopping contexts")
        self.ranker._encode_items(self.text_ids, with_kv=False)
        if self.val:  # kept in half precision (as the training contexts): read back as float32
            states, masks = self.ranker._encode_contexts(self.ctx_val)
            self.u_val = (states.half(), masks)
        cache = self.ranker._item_cache
        self.item_width = max((cache[i][0].shape[0] for i in cache), default=1)
        self.hidden = next(iter(cache.values()))[0].shape[1] if cache else 1
        self.val_groups = self._group_val()
        return time.perf_counter() - began

    # -- early stopping ----------------------------------------------------------------

    def _val_ndcg(self) -> np.ndarray:
        """NDCG@10 of each early-stopping moment (a paired comparison needs them all)."""
        if not self.val:
            return np.zeros(1)
        torch, net = self.torch, self.net
        net.eval()
        out = np.zeros(len(self.val))
        with torch.no_grad():
            for group in (self.val_groups if net.use_text else [range(len(self.val))]):
                item_kv = self._item_kv(group) if net.use_text else {}
                for e in group:
                    feats, labels = self.val_f[e]
                    x = torch.from_numpy(feats)
                    ex = self.val[e]
                    if net.use_text:
                        us, um = self.u_val[0][e:e + 1].float(), self.u_val[1][e:e + 1]
                        rows = [item_kv[i] for i in item_ids(ex.candidates)]
                        ik = torch.stack([r[0] for r in rows])
                        iv = torch.stack([r[1] for r in rows])
                        im = torch.stack([r[2] for r in rows])
                        s = net.score(x, us[:, 0], net.key_values(us), um, (ik, iv), im, None)
                    else:
                        s = net.score(x)
                    ranked = labels[np.argsort(-s.numpy(), kind="stable")[:K]]
                    out[e] = ndcg_at(ranked, len(ex.relevant), K)
        return out

    def _item_kv(self, group: Sequence[int]) -> dict:
        """The top layer's keys and values of the items the early-stopping moments in
        `group` rank (padded to the widest cached item, so a moment's rows stack), computed
        1,024 items at a time: all cached items at once took 3.5 GB at 300,000 shoppers."""
        torch, net, ranker = self.torch, self.net, self.ranker
        wanted = list(dict.fromkeys(i for e in group for i in item_ids(self.val[e].candidates)))
        item_kv = {}
        for lo in range(0, len(wanted), 1024):
            part = wanted[lo:lo + 1024]
            (k, v), mask = ranker._pad_items(torch, [ranker._item_cache[i] for i in part], False, net,
                                             width=self.item_width)
            item_kv.update({item: (k[j], v[j], mask[j]) for j, item in enumerate(part)})
        return item_kv

    def _group_val(self) -> list[list[int]]:
        """The early-stopping moments in groups whose items' keys and values take at most
        `KV_BYTES` (one group, the items computed once, unless the shop is big)."""
        per_item = self.item_width * self.hidden * 4 * 2
        cap = max(1, KV_BYTES // per_item)
        groups: list[list[int]] = [[]]
        seen: set[str] = set()
        for e, ex in enumerate(self.val):
            items = set(item_ids(ex.candidates))
            if groups[-1] and len(seen | items) > cap:
                groups.append([])
                seen = set()
            groups[-1].append(e)
            seen |= items
        return groups

    def _snapshot(self) -> dict:
        return {k: p.detach().clone() for k, p in self.params.items()}

    def _check(self, stage: str) -> bool:
        """Score the early-stopping moments; keep the weights if they beat the best so far.
        First the steps' freed tensors go back to the system (each step's are a different
        size, and glibc's heap would keep them: +0.6 GB over 300 feature steps)."""
        give_back_memory(collect=False)
        per = self._val_ndcg()
        score = float(per.mean())
        self.curve.append((stage, self.step, round(score, 4)))
        if score > self.best + 1e-6:
            self.best, self.best_per, self.best_step, self.best_stage = score, per, self.step, stage
            self.best_state = self._snapshot()
            return True
        return False

    # -- the stages --------------------------------------------------------------------

    def _optimizer(self, use_text: bool):
        """Stage 1 trains the head; stage 2 the text's projection and the top layer only:
        the feature model stays as stage 1 left it and the text learns a correction
        (letting the head move on small noisy text batches made it worse: README)."""
        cfg, params, torch = self.cfg, self.params, self.torch
        if not use_text:
            head = [p for k, p in params.items() if k.startswith("mlp.")]
            return torch.optim.AdamW(head, lr=cfg.lr_head, weight_decay=0.01)
        proj = [p for k, p in params.items() if k.startswith("text_proj.")]
        enc = [p for k, p in params.items() if k.startswith("top.")]
        return torch.optim.AdamW([{"params": proj, "lr": cfg.lr_head / 4},
                                  {"params": enc, "lr": cfg.lr_encoder}], weight_decay=0.01)

    def _stages(self) -> list[tuple[str, bool, int]]:
        """(name, uses the text, steps at most) of each stage."""
        cfg = self.cfg

        def steps_for(n_steps: int, batch: int) -> int:
            return min(n_steps, max(1, math.ceil(cfg.max_epochs * len(self.train) / batch)))

        stages = [("features", False, steps_for(cfg.feature_steps, cfg.feature_batch))]
        if cfg.text and cfg.max_steps:
            stages.append(("text", True, steps_for(cfg.max_steps, cfg.batch_examples)))
        return stages

    def run(self) -> dict:
        self.prepare()
        self.params = self.net.trainable()
        self.net.use_text = False
        self.best_per = self._val_ndcg()
        self.start_ndcg = self.best = float(self.best_per.mean())
        self.best_state = self._snapshot()
        self.best_step, self.best_stage = 0, "untrained"
        # steps bound the work; a wall-clock cap only if the config asks for one (then the
        # model depends on the machine's speed: `cut_by_minutes` in the report says so)
        minutes = self.cfg.max_minutes
        self.deadline = math.inf if minutes is None else time.perf_counter() + minutes * 60
        stages = self._stages()
        self.total_steps = sum(n for _, _, n in stages)
        for stage, use_text, n_steps in stages:
            if not self._stage(stage, use_text, n_steps):
                break
        return self._finish()

    def _stage(self, stage: str, use_text: bool, n_steps: int) -> bool:
        """Train one stage from the best weights so far; False: the budget was spent before
        it began (the text stage is skipped)."""
        cfg, torch = self.cfg, self.torch
        if self.step and self.best_state:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(self.best_state[k])
        if use_text:  # what the text must beat
            before = (self.best, self.best_per, self.best_state, self.best_step, self.best_stage)
            if time.perf_counter() >= self.deadline:
                self.cut_by_minutes = True
                self.text_test = {"text_skipped": f"the {cfg.max_minutes:g}-minute budget was spent "
                                                  f"by the feature stage"}
                return False
            self.deadline += self._encode_texts()
        self.net.use_text = use_text
        opt = self._optimizer(use_text)
        stage_end, checks_without = self.step + n_steps, 0
        floor = self.step + (0 if use_text else min(cfg.min_feature_steps, n_steps))
        while self.train and self.step < stage_end:
            if self.step >= floor and time.perf_counter() >= self.deadline:
                self.cut_by_minutes = True
                break
            self._train_step(opt, stage, use_text)
            if self.step % TRIM_EVERY == 0 and self.step % cfg.eval_every:  # (a check trims)
                give_back_memory(collect=False)
            if self.step % cfg.eval_every == 0:  # the text must show it is worth its cost
                gained = self._check(stage) and (not use_text or self._text_gain(before)[2])
                checks_without = 0 if gained else checks_without + 1
                if checks_without >= (cfg.text_patience if use_text else cfg.patience):
                    break
        if self.train and self.step % cfg.eval_every:
            self._check(stage)
        if use_text and self.best_stage == "text":
            self._test_text(before)
        return True

    def _text_gain(self, before: tuple) -> tuple[float, float, bool]:
        """(mean gain of the best model over the features', its standard error, whether it
        is more than chance). The text costs 10-20x the serving time, and its gains on these
        moments did not always carry to later ones (README): it must win by more than chance."""
        diff = self.best_per - before[1]
        se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
        return float(diff.mean()), se, bool(diff.mean() > self.cfg.text_evidence * se)

    def _test_text(self, before: tuple) -> None:
        gain, se, kept = self._text_gain(before)
        self.text_test = {"text_gain": gain, "text_gain_se": se, "text_kept": kept}
        if not kept:
            self.best, self.best_per, self.best_state, self.best_step, self.best_stage = before

    # -- one step ----------------------------------------------------------------------

    def _train_step(self, opt, stage: str, use_text: bool) -> None:
        """One optimiser step on a batch of training moments: a listwise softmax loss."""
        cfg, torch = self.cfg, self.torch
        self.net.train()
        size = cfg.batch_examples if use_text else cfg.feature_batch
        batch = self.rng.choice(len(self.train), size=min(size, len(self.train)), replace=False)
        feats, owners, items, targets = [], [], [], []
        for b, e in enumerate(batch):
            rows, ids, tgt, off = self._training_list(e)
            feats.append(rows)
            owners += [b] * len(ids)
            items += ids
            targets.append((tgt, off))
        x = torch.from_numpy(np.vstack(feats))
        s = self._text_batch_scores(x, batch, items, owners) if use_text else self.net.score(x)
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
        self.losses.append(float(loss.detach()))
        self.step += 1
        self.say("bert", self.step, self.total_steps,
                 f"{stage}: loss {np.mean(self.losses[-25:]):.3f}, best NDCG@10 {self.best:.4f}")

    def _training_list(self, e) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        """Moment e's training list: (feature rows, item ids when the text is used, targets,
        log-weight offsets of the sampled negatives)."""
        cfg, rng, use_text = self.cfg, self.rng, self.net.use_text
        ex = self.train[e]
        f, labels = self.train_f[e]
        pos = np.flatnonzero(labels)
        neg = np.flatnonzero(~labels)
        if use_text and len(pos) > cfg.max_positives:
            pos = rng.choice(pos, cfg.max_positives, replace=False)
        # without the text a whole list costs little: the softmax over every candidate;
        # with it, the hardest negatives and a sample of the rest
        hard = neg[:cfg.hard_negatives] if use_text else neg
        rest = neg[len(hard):]
        n_rand = max(0, cfg.list_size - len(pos) - len(hard) - cfg.catalogue_negatives)
        rand = rng.choice(rest, min(n_rand, len(rest)), replace=False) if len(rest) else rest
        chosen = np.concatenate([pos, hard, rand]).astype(int)
        # the feature stage needs only the rows; the text stage also the items
        names = item_ids(ex.candidates) if use_text else []
        ids = [names[j] for j in chosen] if use_text else []
        rows = f[chosen].astype(np.float32)
        tgt = labels[chosen].astype(np.float32)
        # sampled softmax: a random negative stands for len(rest)/len(rand) of them, so the
        # loss estimates the softmax over the whole candidate list (without this the model
        # learns that top-recalled items are usually wrong)
        off = np.zeros(len(chosen), np.float32)
        if len(rand):
            off[len(pos) + len(hard):] = math.log(len(rest) / len(rand))
        if cfg.catalogue_negatives and use_text:
            return self._with_catalogue_negatives(ex, rows, ids, tgt, off)
        return rows, ids, tgt, off

    def _with_catalogue_negatives(self, ex: RankingExample, rows, ids, tgt, off):
        """The list with a few random catalogue items nobody recalled, placed after every
        recalled item."""
        cfg = self.cfg
        taken = set(item_ids(ex.candidates)) | ex.query.exclude
        picks = [self.catalogue[j] for j in self.rng.choice(len(self.catalogue), cfg.catalogue_negatives * 3)]
        picks = [p for p in dict.fromkeys(picks) if p not in taken][:cfg.catalogue_negatives]
        if not picks:
            return rows, ids, tgt, off
        extra = [Candidate(p, 0.0, "", "") for p in picks]
        ef = self._features(extra, ex)
        ef[:, self.position] = 1.0  # after every recalled item
        return (np.vstack([rows, ef]), ids + picks,
                np.concatenate([tgt, np.zeros(len(extra), np.float32)]),
                np.concatenate([off, np.zeros(len(extra), np.float32)]))

    def _text_batch_scores(self, x, batch, items: list[str], owners: list[int]):
        """The cross-encoder's scores of a batch's lists (a training context is encoded
        when a step first draws it)."""
        torch, net, ranker = self.torch, self.net, self.ranker
        todo = [int(e) for e in batch if int(e) not in self.u_train]
        if todo:
            states, masks = ranker._encode_contexts([self.ctx_train[e] for e in todo], self.ctx_width)
            self.u_train.update({e: (states[j].half(), masks[j]) for j, e in enumerate(todo)})
        us = torch.stack([self.u_train[int(e)][0] for e in batch]).float()
        um = torch.stack([self.u_train[int(e)][1] for e in batch])
        ikv, im = ranker._pad_items(torch, [ranker._item_cache[i] for i in items], False, net)
        return net.score(x, us[:, 0], net.key_values(us), um, ikv, im, torch.as_tensor(owners))

    # -- the result --------------------------------------------------------------------

    def _finish(self) -> dict:
        """Keep the best weights (fp16-rounded, as stored), make the ranker ready to serve
        and report."""
        torch, net, ranker = self.torch, self.net, self.ranker
        net.use_text = self.best_stage == "text"
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.best_state[k].half().float())
        net.eval()
        stored_ndcg = float(self._val_ndcg().mean())
        ranker._forget_item_states()
        ranker._prepare_serving()
        ranker._fitted = True
        seconds = time.perf_counter() - self.started
        self.say("bert", self.total_steps, self.total_steps, self._summary(stored_ndcg))
        return {"ndcg@10": stored_ndcg, "ndcg@10_untrained": self.start_ndcg, "best_step": self.best_step,
                "best_stage": self.best_stage, "uses_text": net.use_text, **self.text_test,
                "steps": self.step, "cut_by_minutes": self.cut_by_minutes, "curve": self.curve,
                "examples": len(self.train) + len(self.val),
                "train_examples": len(self.train), "val_examples": len(self.val),
                "seconds": seconds, "recallers": list(ranker.recallers)}

    def _summary(self, stored_ndcg: float) -> str:
        if not self.train:
            summary = "not trained: no validation moment has a recalled item the shopper met next"
        elif self.best_step == 0:
            summary = (f"NDCG@10 {stored_ndcg:.4f}: {self.step} training steps did not beat the "
                       f"untrained head")
        else:
            summary = (f"NDCG@10 {stored_ndcg:.4f}, best after {self.best_step} of {self.step} steps "
                       f"({self.best_stage})")
        if "text_skipped" in self.text_test:
            summary += f"; text stage skipped: {self.text_test['text_skipped']}"
        elif self.cut_by_minutes:
            summary += f"; stopped by the {self.cfg.max_minutes:g}-minute cap"
        return summary
