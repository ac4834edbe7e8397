"""Training the sequence model: shoppers' item sequences, windows of them, and epochs until
the validation score stops improving.

Validation is each (sampled) shopper's newest item, when it is one they had not met before:
the model learns from everything before it and is scored on ranking it among all items but
the shopper's earlier ones (NDCG@10). The weights of the best epoch are kept. A budget of
CPU seconds spent in training steps (checked at every step; validation and waiting for a busy machine do not
count) stops a run that would not converge in time; with the default settings early
stopping ends it first, so the same data gives the same model bit for bit."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from engine import give_back_memory

TRIM_EVERY = 10  # training steps between giving the freed heap back


@dataclass
class Sequences:
    """Each shopper's items in time order, end to end: shopper j's are
    `items[bounds[j]:bounds[j + 1]]` (model rows: item index + 1)."""
    items: np.ndarray   # int32
    bounds: np.ndarray  # int64, (shoppers + 1,)

    def __len__(self) -> int:
        return len(self.bounds) - 1


def user_sequences(users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> Sequences:
    """Each shopper's items in time order (ties by item), as model rows (item index + 1);
    the same item met again straight away (viewed, then carted) counts once. One flat
    array, not an array per shopper: a million small arrays cost more than their items."""
    order = np.lexsort((items, ts, users))
    u, i = users[order], items[order].astype(np.int32) + 1
    del order
    keep = np.ones(len(i), bool)
    keep[1:] = (i[1:] != i[:-1]) | (u[1:] != u[:-1])
    u, i = u[keep], i[keep]
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(u)) + 1, [len(i)]]) if len(i) else np.zeros(1)
    return Sequences(i, bounds.astype(np.int64))


@dataclass
class Prepared:
    inputs: np.ndarray    # (windows, L) int32 model rows, right-aligned, 0 = padding
    targets: np.ndarray   # (windows, L) int32 the next item at each step, 0 = none
    val_inputs: np.ndarray  # (shoppers, L)
    val_targets: np.ndarray  # (shoppers,) model rows


def prepare(seqs: Sequences, max_len: int, val_users: int, seed: int,
            chunk: int = 100_000) -> Prepared:
    """Validation: a sample of `val_users` shoppers whose newest item is new to them (at
    least 3 items) lose it to validation. Training windows: each shopper's items cut from
    the newest back into windows of `max_len` steps, each step a target once; windows in
    shopper order, newest first. Filled `chunk` windows at a time, as int32 (at a million
    shoppers the windows are 1.2M x 50)."""
    rng = np.random.default_rng(seed)
    flat, bounds, L = seqs.items, seqs.bounds, max_len
    n = np.diff(bounds)
    last = bounds[1:] - 1
    owner = np.repeat(np.arange(len(n)), n)
    again = flat == flat[last][owner]  # the newest item met before, in the same sequence
    again[last] = False
    seen_before = np.bincount(owner[again], minlength=len(n)) > 0
    del owner, again
    eligible = np.flatnonzero((n >= 3) & ~seen_before)
    if len(eligible) > val_users:
        eligible = np.array(sorted(rng.choice(eligible, val_users, replace=False).tolist()), np.int64)
    cols = np.arange(L)
    # the held-out shoppers' items before the newest, right-aligned
    pos = (n[eligible] - 1 - L)[:, None] + cols[None]
    val_in = np.where(pos >= 0, flat[bounds[eligible][:, None] + np.maximum(pos, 0)], 0).astype(np.int64)
    val_t = flat[last[eligible]].astype(np.int64)
    m = n.copy()
    m[eligible] -= 1  # the held-out item is no one's training target
    count = np.where(m > 1, (m - 1 + L - 1) // L, 0)  # windows ending at m, m - L, ... (> 1)
    w_owner = np.repeat(np.arange(len(n)), count)
    w_k = np.arange(len(w_owner)) - np.repeat(np.cumsum(count) - count, count)
    inputs = np.zeros((len(w_owner), L), np.int32)
    targets = np.zeros((len(w_owner), L), np.int32)
    for lo in range(0, len(w_owner), chunk):
        o, k = w_owner[lo:lo + chunk], w_k[lo:lo + chunk]
        end = m[o] - k * L
        pos = (end - 1 - L)[:, None] + cols[None]  # the inputs' places in the sequence
        at = bounds[o][:, None] + np.maximum(pos, 0)
        real = pos >= 0
        inputs[lo:lo + chunk] = np.where(real, flat[at], 0)
        targets[lo:lo + chunk] = np.where(real, flat[at + 1], 0)
    return Prepared(inputs, targets, val_in, val_t)


def validation_ndcg(net, torch, prep: Prepared, k: int = 10, batch: int = 256, partner=None) -> float:
    """NDCG@k of each held-out newest item ranked among all items but the shopper's earlier
    ones. With a `partner` (`_parallel.StepPartner`), it scores the second half of the
    batches meanwhile; the batches' sums are added in the same order either way, so the
    score is the same to the bit."""
    n = len(prep.val_targets)
    if not n:
        return 0.0
    batches = -(-n // batch)
    split = batches // 2 * batch if partner is not None and batches > 1 else n
    if split < n:
        partner.validate(split, n, k, batch)
    sums = validation_sums(net, torch, prep, 0, split, k, batch)
    if split < n:
        sums += partner.gather_validation()
    total = 0.0
    for part in sums:
        total += part
    return total / n


def validation_sums(net, torch, prep: Prepared, lo: int, hi: int, k: int = 10, batch: int = 256) -> list[float]:
    """The NDCG@k sums of held-out shoppers `lo:hi`, one per `batch` of them (`lo` starts a
    batch)."""
    net.eval()
    sums = []
    with torch.no_grad():
        vectors = net.item_vectors()
        for start in range(lo, hi, batch):
            seqs = torch.from_numpy(prep.val_inputs[start:min(start + batch, hi)])
            target = torch.from_numpy(prep.val_targets[start:min(start + batch, hi)]) - 1
            scores = net.last_scores(seqs, vectors)
            seen = (seqs - 1).clamp(min=0)
            scores.scatter_(1, seen, float("-inf"))
            own = scores.gather(1, target[:, None])
            rank = (scores > own).sum(1)
            sums.append(float(torch.where(rank < k, 1.0 / torch.log2(rank.double() + 2), 0.0).sum()))
    return sums


def full_softmax_loss(torch, h, items, target):
    """The summed cross-entropy of scores `h @ items.T` against `target` (rows of `items`),
    keeping one (steps x items) matrix from the forward pass to the backward: the backward
    turns the saved scores into the softmax in place. torch's cross_entropy keeps its
    log-softmax and makes two more such matrices in the backward — on the demo shop 33 MB
    each, every step, mapped and page-faulted afresh."""
    return _loss_function(torch).apply(h, items, target)


_LOSS = None


def _loss_function(torch):
    global _LOSS
    if _LOSS is None:
        class FullSoftmaxLoss(torch.autograd.Function):
            @staticmethod
            def forward(ctx, h, items, target):
                scores = h @ items.T
                lse = torch.logsumexp(scores, dim=1)
                loss = (lse - scores.gather(1, target[:, None])[:, 0]).sum()
                ctx.save_for_backward(h, items, target, scores, lse)
                return loss

            @staticmethod
            def backward(ctx, grad):
                h, items, target, scores, lse = ctx.saved_tensors
                probs = scores.sub_(lse[:, None]).exp_()  # the softmax, in the scores' place
                probs[torch.arange(len(target)), target] -= 1
                probs.mul_(grad)
                return probs @ items, probs.T @ h, None
        _LOSS = FullSoftmaxLoss
    return _LOSS


def train(net, torch, prep: Prepared, cfg, progress) -> dict:
    """Epochs of next-item cross-entropy over all items (sampled items beyond
    `cfg.full_softmax_items`), early stopping on validation NDCG@10. With `cfg.processes`
    2, a forked partner process computes half of every batch (`_parallel`). Returns a
    report."""
    from ._parallel import StepPartner

    gen = np.random.default_rng(cfg.seed)
    lengths = (prep.inputs > 0).sum(1)

    def part_loss(rows: np.ndarray, sample: np.ndarray | None):
        """The summed cross-entropy of these windows' steps."""
        width = max(int(lengths[rows].max()), 1)  # the longest window: no all-padding columns
        seqs = torch.from_numpy(prep.inputs[rows, -width:].astype(np.int64))
        target = torch.from_numpy(prep.targets[rows, -width:].astype(np.int64))
        real = target > 0
        vectors = net.item_vectors()
        h = net.hidden(seqs, vectors)[real]          # (steps, dim)
        t = target[real] - 1
        if sample is None:
            return full_softmax_loss(torch, h, vectors[1:], t)
        sample = torch.from_numpy(sample)  # the targets against a shared sample of other items
        pos = (h * vectors[1:][t]).sum(1, keepdim=True)
        neg = h @ vectors[1:][sample].T
        neg = neg.masked_fill(sample[None] == t[:, None], float("-inf"))
        return torch.nn.functional.cross_entropy(
            torch.cat([pos, neg], 1), torch.zeros(len(t), dtype=torch.long), reduction="sum")

    def part_validation(lo: int, hi: int, k: int, batch: int) -> list[float]:
        return validation_sums(net, torch, prep, lo, hi, k, batch)

    net.train()
    partner = StepPartner.start(net, torch, part_loss, part_validation, cfg.seed + 1, cfg.threads) \
        if cfg.processes > 1 and len(prep.inputs) > 1 else None
    try:
        report = _epochs(net, torch, prep, cfg, progress, gen, lengths, part_loss, partner)
    finally:
        if partner is not None:
            partner.close()
    report["processes"] = 2 if partner is not None else 1
    return report


def _epochs(net, torch, prep: Prepared, cfg, progress, gen, lengths, part_loss, partner) -> dict:
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampled = net.n_items > cfg.full_softmax_items
    best, best_epoch, best_state, stale, epochs, steps = -1.0, 0, None, 0, 0, 0
    cpu_used, history = 0.0, []
    stopped = "max_epochs"
    for epoch in range(1, cfg.max_epochs + 1):
        started = time.process_time()
        net.train()
        losses = []
        for rows in _batches(lengths, cfg.batch_size, gen):
            if losses and cpu_used + time.process_time() - started >= cfg.budget_seconds:
                stopped = "budget"  # mid-epoch: at a million shoppers one epoch outlasts a budget
                break
            sample = gen.integers(0, net.n_items, cfg.negatives) if sampled else None
            total = int((prep.targets[rows] > 0).sum())
            mine = rows
            if partner is not None and len(rows) > 1:  # the partner takes the second half
                mine, theirs = rows[:len(rows) // 2], rows[len(rows) // 2:]
                partner.step(theirs, sample, total)
            opt.zero_grad()
            loss = part_loss(mine, sample)
            (loss / total).backward()
            loss = float(loss.detach())
            if partner is not None and len(rows) > 1:
                loss += partner.gather()
            opt.step()
            losses.append(loss / total)
            steps += 1
            if steps % TRIM_EVERY == 0:  # each step's tensors are a different size: glibc's
                give_back_memory(collect=False)  # heap keeps them (+1 GB at 300k shoppers)
        cpu_used += time.process_time() - started
        epochs = epoch
        score = validation_ndcg(net, torch, prep, partner=partner)
        history.append(round(score, 6))
        if progress:
            progress("transformer", epoch, cfg.max_epochs,
                     f"epoch {epoch}: loss {np.mean(losses):.3f}, validation NDCG@10 {score:.4f}")
        if score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                stopped = "early stopping"
                break
        if cpu_used >= cfg.budget_seconds:
            stopped = "budget"
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return {"epochs": epochs, "steps": steps, "best_epoch": best_epoch, "validation_ndcg@10": round(best, 6),
            "stopped": stopped, "cpu_seconds": round(cpu_used, 1), "curve": history,
            "windows": int(len(prep.inputs)), "validation_users": int(len(prep.val_targets))}


def _batches(lengths: np.ndarray, size: int, gen: np.random.Generator) -> list[np.ndarray]:
    """An epoch's batches: windows of similar length together (shuffled within each length),
    the batches in random order. Windows are right-aligned, so a batch of short windows is
    trimmed to its longest and skips the padding (a third of the demo shop's steps)."""
    shuffled = gen.permutation(len(lengths))
    order = shuffled[np.argsort(lengths[shuffled], kind="stable")]
    batches = [order[lo:lo + size] for lo in range(0, len(order), size)]
    return [batches[j] for j in gen.permutation(len(batches))]
