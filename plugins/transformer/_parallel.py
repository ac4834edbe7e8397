"""Data-parallel training steps on one machine: a forked partner process takes part of every
batch.

Each step the batch is split in two: this process computes the loss and gradients of its
part while the partner computes those of the other part; the partner's gradients are added
to this process's (in that order) and this process alone steps the optimizer. The weights
live in shared memory (`share_memory_`), so the partner reads the updated weights at the
next step without a copy. Both parts divide their summed loss by the whole batch's target
count, so the sum of the two gradients is the gradient of the batch's mean loss.
Each epoch's validation is split the same way: the partner scores the second half of
the held-out shoppers (on the demo shop 0.4 s an epoch, half of it now on the other core).

The model depends on the number of processes (the partner's dropout has its own seed, and
two partial sums round differently from one), not on the machine: two processes on a
one-core machine give the same weights as on two cores, only slower. Torch's own threads
would not: with two intra-op threads two runs of the same fit differed, and on a busy
machine every operator waited for the second thread (a step took ten times as long); a
partner process waits once per step.

Linux only (fork): elsewhere `StepPartner.start` returns None and the caller trains alone."""

from __future__ import annotations

import gc
import os
import struct
import sys
import traceback
from typing import Callable

import numpy as np

from engine import give_back_memory

from ._training import TRIM_EVERY  # the partner gives its freed heap back as this process does

# how long this process waits for the partner's part of a step before giving up
STEP_TIMEOUT = 600.0


class PartnerError(RuntimeError):
    """The partner process failed or went away; its traceback is in the message."""


class StepPartner:
    """The partner process of one training run. `step(rows, extra, total)` hands it its part
    of the next step (the batch rows and any shared per-step array, e.g. sampled negatives);
    `gather()` waits for it and adds its gradients to this process's. `close()` ends it."""

    def __init__(self, pid: int, conn, grads, params):
        self.pid, self._conn, self._grads, self._params = pid, conn, grads, params

    @classmethod
    def start(cls, net, torch, part_loss: Callable, part_validation: Callable, seed: int,
              threads: int) -> StepPartner | None:
        """Fork the partner. `part_loss(rows, extra)` -> the summed loss tensor is what both
        processes run on their part of a step, and `part_validation(lo, hi, k, batch)` -> a
        list of floats on their part of a validation (both close over the model and the data, which
        the fork shares). The weights are moved to shared memory."""
        if not hasattr(os, "fork") or sys.platform != "linux":
            return None
        import multiprocessing

        params = [p for p in net.parameters() if p.requires_grad]
        for p in params:
            p.data.share_memory_()
        size = sum(p.numel() for p in params)
        grads = torch.zeros(size, dtype=torch.float32).share_memory_()
        mine, theirs = multiprocessing.Pipe()
        # free-but-resident heap (the last fit's temporaries) would stay with the partner:
        # this process gives it back later, the partner's copy of it would stay resident
        give_back_memory()
        pid = os.fork()
        if pid == 0:  # the partner: never returns
            code = 1
            try:
                mine.close()
                _serve(theirs, net, torch, params, grads, part_loss, part_validation, seed, threads)
                code = 0
            except BaseException:  # noqa: BLE001 — said to the parent, then gone
                try:
                    theirs.send_bytes(b"E" + traceback.format_exc().encode())
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(code)
        theirs.close()
        return cls(pid, mine, grads, params)

    def step(self, rows: np.ndarray, extra: np.ndarray | None, total: int) -> None:
        """Start the partner on its part of a step (the weights are already current): its
        loss is summed over its targets and divided by `total`, the whole batch's count."""
        extra = np.zeros(0, np.int64) if extra is None else extra
        rows, extra = np.asarray(rows, np.int64), np.asarray(extra, np.int64)
        self._conn.send_bytes(b"S" + struct.pack("<qq", len(rows), total) + rows.tobytes()
                              + extra.tobytes())

    def gather(self) -> float:
        """Wait for the partner's part; add its gradients to the parameters' own. Returns its
        summed loss."""
        message = self._receive()
        (loss,) = struct.unpack("<d", message[1:9])
        at = 0
        for p in self._params:
            n = p.numel()
            part = self._grads[at:at + n].view_as(p)
            if p.grad is None:
                p.grad = part.clone()
            else:
                p.grad.add_(part)
            at += n
        return loss

    def validate(self, lo: int, hi: int, k: int, batch: int) -> None:
        """Start the partner on validation rows `lo:hi`, NDCG@`k` in batches of `batch`
        (between steps: the weights are still)."""
        self._conn.send_bytes(b"V" + struct.pack("<qqqq", lo, hi, k, batch))

    def gather_validation(self) -> list[float]:
        """Wait for the partner's part of the validation: its `part_validation` floats."""
        body = self._receive()[1:]
        return list(struct.unpack(f"<{len(body) // 8}d", body))

    def _receive(self) -> bytes:
        if not self._conn.poll(STEP_TIMEOUT):
            raise PartnerError(f"the training partner process (pid {self.pid}) did not answer "
                               f"within {STEP_TIMEOUT:.0f} s")
        try:
            message = self._conn.recv_bytes()
        except (EOFError, OSError) as exc:
            raise PartnerError(f"the training partner process (pid {self.pid}) ended "
                               f"unexpectedly ({exc or type(exc).__name__})") from None
        if message[:1] == b"E":
            raise PartnerError("the training partner process failed:\n" + message[1:].decode())
        return message

    def close(self) -> None:
        """End the partner (at the end of training, or after a failure or a cancel) and give
        the weights private memory again."""
        try:
            self._conn.send_bytes(b"Q")
        except (OSError, ValueError):
            pass
        self._conn.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        for p in self._params:
            p.data = p.data.clone()


def _serve(conn, net, torch, params, grads, part_loss, part_validation, seed: int,
           threads: int) -> None:
    """The partner's loop: for each step, its part's gradients into `grads`; for each
    validation, its part's floats."""
    gc.freeze()  # the parent's objects: a collection here would write to (and copy) their pages
    torch.set_num_threads(max(threads, 1))
    torch.manual_seed(seed)
    net.train()
    steps = 0
    while True:
        message = conn.recv_bytes()
        if message[:1] == b"Q":
            return
        if message[:1] == b"V":
            lo, hi, k, batch = struct.unpack("<qqqq", message[1:33])
            sums = part_validation(lo, hi, k, batch)
            net.train()
            conn.send_bytes(b"W" + struct.pack(f"<{len(sums)}d", *sums))
            continue
        n, total = struct.unpack("<qq", message[1:17])
        body = np.frombuffer(message[17:], np.int64)
        rows, extra = body[:n], body[n:]
        for p in params:
            p.grad = None
        loss = part_loss(rows, extra if len(extra) else None)
        (loss / total).backward()
        at = 0
        for p in params:
            k = p.numel()
            if p.grad is None:
                grads[at:at + k].zero_()
            else:
                grads[at:at + k].copy_(p.grad.reshape(-1))
            at += k
        conn.send_bytes(b"D" + struct.pack("<d", float(loss.detach())))
        steps += 1
        if steps % TRIM_EVERY == 0:  # as the parent does: each step's tensors differ in size
            give_back_memory(collect=False)
