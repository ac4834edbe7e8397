"""Time and peak memory of a command and every process it forks (Linux).

    python benchmarks/tree_memory.py -- shelfwise --db demo.db demo
    python benchmarks/tree_memory.py --series mem.json -- shelfwise --db demo.db demo

`/usr/bin/time -v` reports the largest single process's peak RSS; since `train` forks helper
processes (the transformer's training partner, a ranker fitted beside bert), that misses
what the helpers add. Here the process tree is sampled every 50 ms: the sum of the
proportional set sizes (PSS: a page shared by two processes counts half in each, so the sum
is the memory the tree holds), and its peak is reported next to the main process's own peak
RSS. A sample can miss a spike shorter than 50 ms; the main process's peak is exact.

Prints one line of JSON: wall seconds, CPU seconds (user, system, of the whole tree), the
main process's peak RSS and the tree's sampled peak PSS, in MiB, and when the peak was.
`--series FILE` writes each process's PSS once a second (JSON)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return found


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeSampler:
    """Samples the PSS of `pid`'s process tree in a thread until `stop()`; `peak_kib`."""

    def __init__(self, pid: int, every: float = 0.05):
        self.pid, self.every, self.peak_kib, self.most_processes = pid, every, 0, 0
        self.started, self.peak_at = time.perf_counter(), 0.0
        self.series: list[tuple[float, list[int]]] = []  # (seconds, each process's PSS in KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = descendants(self.pid)
            sizes = [pss_kib(p) for p in pids]
            at = time.perf_counter() - self.started
            if sum(sizes) > self.peak_kib:
                self.peak_kib, self.peak_at = sum(sizes), at
            if not self.series or at - self.series[-1][0] >= 1.0:
                self.series.append((round(at, 1), sizes))
            self.most_processes = max(self.most_processes, len(pids))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(argv: list[str], series: str | None = None, **popen) -> dict:
    """Run `argv`; its wall and CPU time, exit code and peak memory (see the module doc)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, **popen)
    sampler = TreeSampler(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    sampler.stop()
    tree = resource.getrusage(resource.RUSAGE_CHILDREN)  # every reaped descendant's CPU
    found = {"wall_s": round(time.perf_counter() - started, 1),
            "user_s": round(tree.ru_utime, 1), "system_s": round(tree.ru_stime, 1),
            "exit": os.waitstatus_to_exitcode(status),
            "main_peak_rss_mib": round(usage.ru_maxrss / 1024),
            "tree_peak_pss_mib": round(sampler.peak_kib / 1024),
            "tree_peak_at_s": round(sampler.peak_at, 1), "most_processes": sampler.most_processes}
    if series:  # a sample a second: each process's PSS in MiB
        with open(series, "w") as f:
            json.dump([[t, [round(k / 1024) for k in sizes]] for t, sizes in sampler.series], f)
    return found


def main() -> None:
    argv, series = sys.argv[1:], None
    if argv[:1] == ["--series"]:
        series, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit(__doc__)
    result = measure(argv, series)
    print(json.dumps(result), file=sys.stderr)
    raise SystemExit(result["exit"])


if __name__ == "__main__":
    main()
