"""The child processes of this test process (Linux: /proc): a job that forks must leave none
(compare with those before it: other tests' servers may be running)."""

import os
import sys

import pytest

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the job forks a process beside this one (Linux)")


def children() -> set[int]:
    found = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
            found += [int(pid) for pid in f.read().split()]
    return set(found)
