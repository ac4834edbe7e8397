"""Progress in a log: plain lines, throttled, and never silent for long (engine.cli_progress)."""

import io

from engine.cli_progress import LineProgress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make(every=10.0, heartbeat=30.0):
    clock, stream = Clock(), io.StringIO()
    return LineProgress(stream, every=every, heartbeat=heartbeat, clock=clock), clock, stream


def test_a_line_when_a_stage_starts_and_ends_and_at_most_every_interval():
    progress, clock, stream = make(every=10.0)
    progress("fit als", 0, 100, "starting")
    for done in range(1, 100):
        clock.now += 0.5  # 50 s of steady progress
        progress("fit als", done, 100)
    progress("fit als", 100, 100)
    progress("fit als", 100, 100)  # repeated end: said once
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[    0.0s] fit als: 0/100 (0%) starting"
    assert lines[-1].endswith("fit als: 100/100 (100%) done")
    assert sum("done" in line for line in lines) == 1
    assert 5 <= len(lines) <= 8, lines  # start, about one per 10 s, end


def test_heartbeat_when_a_stage_goes_quiet():
    progress, clock, stream = make(every=10.0, heartbeat=30.0)
    progress("encode minilm", 64, 5000)
    clock.now = 20.0
    progress.beat()
    assert len(stream.getvalue().splitlines()) == 1  # quiet for 20 s: nothing yet
    clock.now = 31.0
    progress.beat()
    last = stream.getvalue().splitlines()[-1]
    assert last == "[   31.0s] encode minilm: still working, at 64/5,000 (1%)"


def test_stages_without_a_total():
    progress, _, stream = make()
    progress("bert", 0, None, "features and cached encoder states")
    assert stream.getvalue() == "[    0.0s] bert: 0 features and cached encoder states\n"
