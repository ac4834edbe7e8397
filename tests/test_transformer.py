"""The `transformer` recaller: a learned sequence model of what shoppers do next."""

import numpy as np
import pytest

from engine import Dataset, Interaction, Query
from engine.artifacts import dump_state, load_state
from engine.testing import T0, RecallerContract
from plugins.transformer import TransformerRecaller
from tests.processes import children, linux_only

FAST = {"dim": 16, "max_len": 8, "layers": 1, "heads": 1, "max_epochs": 40, "patience": 40,
        "dropout": 0.0, "lr": 0.01, "threads": 1}


class TestTransformerContract(RecallerContract):
    def make(self):
        return TransformerRecaller(FAST)


def cycle_shop(n_users: int = 60, n_items: int = 12, steps: int = 10, seed: int = 0) -> Dataset:
    """Every shopper walks the same cycle i00 → i01 → … → i11 → i00 from a random start: what
    comes next depends only on the newest item, which counting co-occurrence cannot tell
    from what came before it."""
    rng = np.random.default_rng(seed)
    users, items, kinds, ts = [], [], [], []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for s in range(steps):
            users.append(f"u{u}")
            items.append(f"i{(start + s) % n_items:02d}")
            kinds.append("view")
            ts.append(T0 + u * 1000 + s)
    return Dataset.from_arrays(users, items, kinds, ts, catalogue=[f"i{i:02d}" for i in range(n_items)])


def ask(recaller, items, n=3, exclude=()):
    history = tuple(Interaction(item, "view", T0 + j) for j, item in enumerate(items))
    return recaller.recall([Query(user_id="new", history=history, exclude=frozenset(exclude))], n)[0]


@pytest.fixture(scope="module")
def cycle_model():
    recaller = TransformerRecaller(FAST)
    recaller.fit(cycle_shop())
    return recaller


def test_it_learns_what_comes_next_and_says_what_it_follows(cycle_model):
    walked = ["i00", "i01", "i02", "i03", "i04", "i05"]
    answer = ask(cycle_model, walked)
    assert answer[0].item_id == "i06"
    assert answer[0].reason.startswith("follows your recent ") and "i05" in answer[0].reason
    assert {c.item_id for c in answer}.isdisjoint(walked)  # what it read is not proposed


def test_the_newest_step_changes_the_list_without_a_retrain(cycle_model):
    walked = ["i00", "i01", "i02", "i03", "i04"]
    assert ask(cycle_model, walked)[0].item_id == "i05"
    assert ask(cycle_model, walked + ["i05"])[0].item_id == "i06"


def test_it_stops_early_on_validation_and_reports_it():
    recaller = TransformerRecaller(dict(FAST, max_epochs=200, patience=2))
    recaller.fit(cycle_shop())
    report = recaller.report
    assert report["stopped"] == "early stopping" and report["epochs"] < 200
    assert report["best_epoch"] == report["epochs"] - 2
    assert report["validation_ndcg@10"] == max(report["curve"]) > 0.5


def test_queries_are_answered_in_one_batch_like_one_at_a_time(cycle_model):
    queries = [Query(user_id=f"q{j}", history=(Interaction(f"i{j:02d}", "view", T0),)) for j in range(12)]
    together = cycle_model.recall(queries, 4)
    alone = [cycle_model.recall([q], 4)[0] for q in queries]
    assert [[c.item_id for c in a] for a in together] == [[c.item_id for c in a] for a in alone]


def test_weights_are_safetensors_and_reload_to_the_same_answers(cycle_model):
    payload, fmt, meta = dump_state(cycle_model.state())
    assert fmt == "safetensors"
    again = TransformerRecaller(FAST)
    again.load(load_state(payload, fmt, meta))
    for items in (["i01"], ["i07", "i08"]):
        a, b = ask(cycle_model, items, 5), ask(again, items, 5)
        assert [c.item_id for c in a] == [c.item_id for c in b]
        np.testing.assert_allclose([c.score for c in a], [c.score for c in b], rtol=1e-5)


def test_same_data_same_model():
    a, b = TransformerRecaller(FAST), TransformerRecaller(FAST)
    a.fit(cycle_shop())
    b.fit(cycle_shop())
    assert a.report["curve"] == b.report["curve"]
    assert np.array_equal(a.trained_vectors, b.trained_vectors)


TRIAL_PLUGIN = '''
from engine import Recaller, hookimpl
from plugins.cooccurrence import CooccurrenceRecaller


class Helpful(CooccurrenceRecaller):   # "bought together": helps a popularity-only pipeline
    name = "helpful"
    on_trial = True


class Noise(Recaller):                  # the same few unpopular items for everyone
    name = "noise"
    default_quota = 50
    on_trial = True

    def fit(self, data, progress=None):
        counts = {}
        for i in data.items.tolist():
            counts[i] = counts.get(i, 0) + 1
        self.items = [str(data.item_ids[i]) for i in sorted(counts, key=counts.get)[:30]]
        self._fitted = True

    def state(self):
        from engine import ModelState
        return ModelState(meta={"items": self.items})

    def load(self, state):
        self.items, self._fitted = list(state.meta["items"]), True

    def recall(self, queries, n):
        return [self.candidates([(i, 1.0 / (1 + j), "filler") for j, i in enumerate(
            [i for i in self.items if i not in q.exclude][:n])]) for q in queries]


@hookimpl
def register_recallers(register):
    register(Helpful, Noise)
'''


def test_a_recaller_on_trial_joins_only_when_it_improves_validation(tmp_path, monkeypatch, make_engine):
    """Train fits every recaller; one `on_trial` joins the default pipeline only if the
    validation candidates rank better with it, else its model is kept inactive and asking
    for it by name says why."""
    from engine import NotTrainedError
    from engine.plugins import load_plugins

    from . import shop

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "trial.py").write_text(TRIAL_PLUGIN)
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "files,popular,fusion")
    eng = make_engine(load_plugins(plugins))
    eng.store.write(shop.catalogue() + shop.events())
    report = eng.train()
    assert report.trials["helpful"]["joined"] is True
    assert report.trials["noise"]["joined"] is False
    assert report.trials["noise"]["ndcg@10_with"] < report.trials["noise"]["ndcg@10_without"]
    assert set(eng.pipeline().recallers) == {"popular", "helpful"}
    active = {m["name"] for m in eng.store.active_artifacts()}
    assert "recaller/helpful" in active and "recaller/noise" not in active
    with pytest.raises(NotTrainedError, match="did not join the pipeline.*without"):
        eng.recommend("user001", recallers=["noise"])
    assert eng.recommend("user001", recallers=["helpful"])


def test_the_budget_stops_training_within_an_epoch():
    """At a million shoppers one epoch outlasts the CPU budget: the budget is checked at
    every step, and the steps taken so far are scored and kept (a model that serves)."""
    recaller = TransformerRecaller({**FAST, "batch_size": 4, "budget_seconds": 1e-6})
    recaller.fit(cycle_shop())
    report = recaller.report
    assert report["stopped"] == "budget" and report["epochs"] == 1
    assert report["steps"] == 1  # an epoch here is 15 steps of 4 windows
    assert report["validation_ndcg@10"] >= 0 and len(ask(recaller, ["i00", "i01"])) == 3


def test_naming_a_recaller_in_the_settings_overrules_its_trial(tmp_path, monkeypatch, make_engine):
    from engine.plugins import load_plugins

    from . import shop

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "trial.py").write_text(TRIAL_PLUGIN)
    (tmp_path / "shelfwise.toml").write_text('[pipeline]\nrecallers = { popular = 50, noise = 20 }\n')
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "files,popular,fusion")
    eng = make_engine(load_plugins(plugins))
    eng.store.write(shop.catalogue() + shop.events())
    report = eng.train()
    assert report.trials["noise"]["joined"] is False
    assert set(eng.pipeline().recallers) == {"popular", "noise"}


def test_a_fit_on_more_of_the_data_starts_warm_and_one_on_less_starts_afresh():
    full, part = cycle_shop(), cycle_shop(n_users=40)
    recaller = TransformerRecaller(dict(FAST, patience=3, max_epochs=100))
    recaller.fit(part)
    assert recaller.report["warm_start"] is False
    first = recaller.report["epochs"]
    recaller.fit(full)  # like the final fit after the validation cuts
    assert recaller.report["warm_start"] is True
    assert recaller.report["epochs"] <= first
    recaller.fit(part)  # an earlier cut after a later one: no knowledge of later steps
    assert recaller.report["warm_start"] is False


def test_in_the_pipeline_the_rankers_take_its_score_and_rank(tmp_path, monkeypatch, make_engine):
    """Installed, it is fitted at `train`, tried on validation, and — in the pipeline —
    a feature of the ranker; its reason reaches the shopper."""
    from engine.plugins import load_plugins

    from . import shop

    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "files,popular,cooccurrence,fusion,transformer")
    (tmp_path / "shelfwise.toml").write_text(
        "[pipeline]\nrecallers = { popular = 50, cooccurrence = 50, transformer = 50 }\n"
        "[plugins.transformer]\ndim = 16\nmax_len = 10\nlayers = 1\nheads = 1\nmax_epochs = 15\n")
    eng = make_engine(load_plugins())
    eng.store.write(shop.catalogue() + shop.events())
    report = eng.train()
    assert "transformer" in report.trials and "recaller/transformer" in report.versions
    fusion = eng.pipeline().ranker
    assert "transformer" in fusion.weights
    recs = eng.recommend("user001", 50, recallers=["transformer"], ranker="")
    assert recs and all(r.reason.startswith("follows your recent") for r in recs)
    assert all("“" in r.reason for r in recs), "item titles, not ids, in the reason"


def test_with_text_vectors_a_product_added_after_training_can_be_proposed():
    """Item vectors include a projection of the item's text vector, so a product encoded
    after training (in the engine's vector index, unseen by the model) has a vector too."""
    from engine import Resources
    from engine.vectors import VectorIndex

    rng = np.random.default_rng(0)
    ids = [f"i{i:02d}" for i in range(12)]
    text = rng.normal(size=(13, 32)).astype(np.float32)
    text[12] = text[6] + 0.05 * rng.normal(size=32)  # the newcomer reads like i06
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    recaller = TransformerRecaller(dict(FAST, max_epochs=60, patience=60))
    recaller.attach(Resources(vectors=VectorIndex.build(ids, text[:12])))
    recaller.fit(cycle_shop())
    assert recaller.project is not None
    recaller.resources.vectors.add(["new-i06"], text[12:])
    answer = ask(recaller, ["i01", "i02", "i03", "i04", "i05"], n=12)
    names = [c.item_id for c in answer]
    assert "new-i06" in names, "the new product is not blind"
    assert names.index("new-i06") < len(names) // 2, names  # its text puts it near i06


def test_its_thread_count_is_its_own_and_not_left_for_the_next_plugin():
    """torch's thread count is global: fitting or asking the transformer (1 thread) must not
    leave bert, fitted next, on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        recaller = TransformerRecaller(dict(FAST, max_epochs=2))
        seen = []
        recaller.fit(cycle_shop(), progress=lambda *a: seen.append(torch.get_num_threads()))
        assert seen and set(seen) == {1}, "it trains on its own thread count"
        assert torch.get_num_threads() == 2
        ask(recaller, ["i00", "i01"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_training_windows_cover_every_step_once_and_hold_out_the_newest_new_item():
    """Shopper 0 met items 1..7 (rows 2..8), shopper 1 met 1, 2, 1 (their newest is not new),
    shopper 2 a single item. Windows of 3 steps are cut from the newest back; shopper 0's
    newest goes to validation, and no window trains on it."""
    from plugins.transformer import _training

    users = np.array([0] * 7 + [1] * 3 + [2])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 1, 2, 1, 4])
    ts = np.arange(len(users), dtype=float)
    seqs = _training.user_sequences(users, items, ts)
    prep = _training.prepare(seqs, max_len=3, val_users=10, seed=0)
    assert prep.val_inputs.tolist() == [[5, 6, 7]] and prep.val_targets.tolist() == [8]
    windows = [(a.tolist(), b.tolist()) for a, b in zip(prep.inputs, prep.targets)]
    assert windows == [([4, 5, 6], [5, 6, 7]),   # shopper 0, newest window first
                       ([0, 2, 3], [0, 3, 4]),   # … then what is left, right-aligned
                       ([0, 2, 3], [0, 3, 2])]   # shopper 1: 2, 3, 2 (met again, so not held out)
    assert prep.inputs.dtype == np.int32  # a million shoppers' windows in half the memory


@linux_only
def test_a_partner_process_halves_every_step_and_the_model_repeats_bit_for_bit():
    """Two processes share each batch (the partner computes half of it): the model learns
    what one process learns, and two fits give the same weights bit for bit."""
    before = children()
    one = TransformerRecaller(dict(FAST, processes=1))
    one.fit(cycle_shop())
    a, b = TransformerRecaller(dict(FAST, processes=2)), TransformerRecaller(dict(FAST, processes=2))
    a.fit(cycle_shop())
    b.fit(cycle_shop())
    assert (one.report["processes"], a.report["processes"]) == (1, 2)
    assert a.report["steps"] == one.report["steps"]  # the same batches, each split in two
    assert a.report["curve"] == b.report["curve"]
    assert np.array_equal(a.trained_vectors, b.trained_vectors)
    walked = ["i00", "i01", "i02", "i03", "i04", "i05"]
    assert ask(a, walked)[0].item_id == ask(one, walked)[0].item_id == "i06"
    assert children() <= before, "the partner process is gone after the fit"


@linux_only
def test_the_partner_scores_half_of_each_validation_and_the_score_is_the_same_to_the_bit():
    """While this process scores the first half of the held-out shoppers, the partner
    scores the second: the epoch's validation NDCG is the one process's, bit for bit."""
    import torch

    from plugins.transformer import _training
    from plugins.transformer._model import SequenceModel
    from plugins.transformer._parallel import StepPartner

    data = cycle_shop(n_users=60)
    prep = _training.prepare(_training.user_sequences(data.users, data.items, data.ts), 8, 1000, 0)
    torch.manual_seed(0)
    net = SequenceModel(data.n_items, 16, 8, 1, 1, 0.0, None)
    alone = _training.validation_ndcg(net, torch, prep, batch=7)
    before = children()
    partner = StepPartner.start(net, torch, lambda rows, extra: None,
                                lambda lo, hi, k, batch: _training.validation_sums(net, torch, prep, lo, hi, k, batch),
                                seed=1, threads=1)
    try:
        theirs = []
        gather = partner.gather_validation
        partner.gather_validation = lambda: theirs.append(gather()) or theirs[-1]
        shared = _training.validation_ndcg(net, torch, prep, batch=7, partner=partner)
    finally:
        partner.close()
    batches = -(-len(prep.val_targets) // 7)
    assert batches > 2 and len(theirs[0]) == batches - batches // 2
    assert shared == alone > 0
    assert children() <= before


@linux_only
def test_a_partner_that_dies_fails_the_fit_with_a_clear_error_and_no_process_left():
    import os
    import signal

    from plugins.transformer._parallel import PartnerError

    before = children()

    def kill_partner(*_):
        for pid in children() - before:
            os.kill(pid, signal.SIGKILL)

    recaller = TransformerRecaller(dict(FAST, processes=2, max_epochs=5))
    with pytest.raises(PartnerError, match="partner process .* ended unexpectedly"):
        recaller.fit(cycle_shop(), progress=kill_partner)
    assert children() <= before


@linux_only
def test_a_cancelled_fit_ends_its_partner():
    class Cancelled(Exception):
        pass

    def cancel(*_):
        raise Cancelled()

    before = children()
    recaller = TransformerRecaller(dict(FAST, processes=2, max_epochs=5))
    with pytest.raises(Cancelled):
        recaller.fit(cycle_shop(), progress=cancel)
    assert children() <= before


@linux_only
def test_a_big_shop_trains_without_a_partner():
    """A partner shares the train process's memory only until either side rewrites it: above
    `partner_max_events` (a big shop's train process holds gigabytes) the fit trains alone."""
    data = cycle_shop()
    small = TransformerRecaller(dict(FAST, processes=2, max_epochs=2, partner_max_events=data.n_events))
    big = TransformerRecaller(dict(FAST, processes=2, max_epochs=2, partner_max_events=data.n_events - 1))
    small.fit(data)
    big.fit(data)
    assert (small.report["processes"], big.report["processes"]) == (2, 1)


def test_the_full_softmax_loss_is_cross_entropy_with_its_gradients():
    import torch

    from plugins.transformer._training import full_softmax_loss

    gen = torch.Generator().manual_seed(0)
    h = torch.randn(40, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    items = torch.randn(25, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.randint(0, 25, (40,), generator=gen)
    mine = full_softmax_loss(torch, h, items, target)
    mine.backward()
    grads = h.grad.clone(), items.grad.clone()
    h.grad = items.grad = None
    theirs = torch.nn.functional.cross_entropy(h @ items.T, target, reduction="sum")
    theirs.backward()
    assert torch.allclose(mine, theirs, rtol=1e-12)
    assert torch.allclose(grads[0], h.grad, atol=1e-12) and torch.allclose(grads[1], items.grad, atol=1e-12)
