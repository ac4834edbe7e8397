"""Contract tests for plugin authors: subclass a mixin in your own pytest module.

    from engine.testing import RecallerContract

    class TestMyRecaller(RecallerContract):
        def make(self):
            return MyRecaller()

Every built-in recaller and ranker passes these; so should yours. The mixins build a small
"checkerboard" shop: two groups of users, each interacting only with its own half of the
catalogue, so any sensible recaller must recommend a user's own half. The halves differ in
what a catalogue says too (category, brand, price, tags, text), so a recaller that reads
the catalogue (`Dataset.catalogue`) can learn them as well as one that reads behaviour.

`SourceContract` and `EncoderContract` do the same for data sources and text encoders.
"""

from __future__ import annotations

import json

import numpy as np

from .artifacts import dump_state, load_state
from .components import Ranker, RankingExample, Recaller
from .dataset import Dataset
from .pipeline import merge
from .errors import ImportDataError
from .types import Candidate, Event, Interaction, Item, Query, Record, User

N_USERS, N_ITEMS, PER_USER = 40, 40, 8
T0 = 1_700_000_000.0


def checkerboard(seed: int = 0) -> Dataset:
    """Users u0..u39, items i00..i19; even users touch even items, odd users odd items."""
    rng = np.random.default_rng(seed)
    users, items, kinds, ts = [], [], [], []
    t = T0
    for u in range(N_USERS):
        own = np.arange(u % 2, N_ITEMS, 2)
        for i in rng.choice(own, PER_USER, replace=False):
            t += 60
            users.append(f"u{u}")
            items.append(f"i{i:02d}")
            kinds.append(str(rng.choice(["view", "cart", "purchase"], p=[0.6, 0.25, 0.15])))
            ts.append(t)
    return Dataset.from_arrays(users, items, kinds, ts, catalogue=checkerboard_items())


def checkerboard_items() -> list[Item]:
    """The checkerboard's catalogue: even items are teas, odd items coffees (category,
    brand, price band, tags and description differ by half); one coffee is out of stock."""
    out = []
    for i in range(N_ITEMS):
        tea = i % 2 == 0
        kind = "tea" if tea else "coffee"
        out.append(Item(f"i{i:02d}", title=f"{'Green' if tea else 'Dark roast'} {kind} no. {i}",
                        description=f"A {'delicate loose-leaf tea' if tea else 'bold espresso coffee'}.",
                        category="Tea" if tea else "Coffee", brand="Leafline" if tea else "Roastery",
                        price=8.0 + i % 5 if tea else 15.0 + i % 7, tags=(kind, "gift" if i % 3 == 0 else "daily"),
                        in_stock=i != 39, attrs={"origin": "Japan" if tea else "Brazil"}))
    return out


def query_for(data: Dataset, user: str, exclude_history: bool = True) -> Query:
    u = data.user_index[user]
    history = data.history(u)
    exclude = frozenset(h.item_id for h in history) if exclude_history else frozenset()
    return Query(user_id=user, history=history, exclude=exclude, now=data.now)


class RecallerContract:
    """What every recaller promises. Override `make()`; `data()` if you need more."""

    def make(self) -> Recaller:
        raise NotImplementedError

    def data(self) -> Dataset:
        return checkerboard()

    def fitted(self) -> tuple[Recaller, Dataset]:
        data = self.data()
        r = self.make()
        r.fit(data)
        return r, data

    def test_contract_has_name_and_description(self):
        r = self.make()
        assert isinstance(r, Recaller)
        assert r.name and r.name.isidentifier(), "name must be a short identifier"
        assert r.description, "describe the recaller in one line"

    def test_contract_unfitted_then_fitted(self):
        r, _ = self.fitted()
        assert r.is_fitted()

    def test_contract_recall_shape_and_candidates(self):
        r, data = self.fitted()
        queries = [query_for(data, "u0"), query_for(data, "u1")]
        lists = r.recall(queries, 5)
        assert len(lists) == 2, "one list per query"
        for q, cands in zip(queries, lists):
            assert len(cands) <= 5
            assert all(isinstance(c, Candidate) for c in cands)
            ids = [c.item_id for c in cands]
            assert len(ids) == len(set(ids)), "no duplicates"
            assert not set(ids) & q.exclude, "excluded items must never be returned"
            scores = [c.score for c in cands]
            assert scores == sorted(scores, reverse=True), "best first"
            for rank, c in enumerate(cands, start=1):
                assert c.source == r.name
                assert c.reason and isinstance(c.reason, str), "every candidate needs a reason"
                assert c.ranks.get(r.name) == rank and r.name in c.scores
                assert c.item_id in data.item_index

    def test_contract_learns_the_checkerboard(self):
        """Users should mostly get items of their own half of the catalogue (among what
        they have not met yet); and a recaller that proposes nothing at all for shoppers
        with a history fails (unless it answers only typed text: `text_queries`)."""
        r, data = self.fitted()
        users = ("u0", "u1", "u2", "u3")
        if not r.text_queries:
            proposed = sum(len(r.recall([query_for(data, u, exclude_history=False)], 3)[0]) for u in users)
            assert proposed, f"{r.name} proposed nothing for shoppers with a history"
        right = total = 0
        for user in users:
            for c in r.recall([query_for(data, user)], 3)[0]:
                total += 1
                right += int(c.item_id[1:]) % 2 == int(user[1:]) % 2
        if total:
            assert right / total >= self.min_checkerboard_accuracy

    min_checkerboard_accuracy = 0.7

    def test_contract_empty_history_does_not_fail(self):
        r, _ = self.fitted()
        lists = r.recall([Query(user_id="nobody")], 5)
        assert len(lists) == 1

    def test_contract_unknown_items_in_history_are_ignored(self):
        r, _ = self.fitted()
        q = Query(user_id="new", history=(Interaction("not-in-catalogue", "view", T0),))
        assert len(r.recall([q], 5)) == 1

    def test_contract_state_round_trip(self):
        """Saved state (npz/safetensors + JSON, no pickle) reloads to identical answers."""
        r, data = self.fitted()
        payload, fmt, meta = dump_state(r.state())
        json.dumps(meta)
        clone = self.make()
        clone.load(load_state(payload, fmt, json.loads(json.dumps(meta))))
        assert clone.is_fitted()
        queries = [query_for(data, u) for u in ("u0", "u1", "u5")]
        for a, b in zip(r.recall(queries, 5), clone.recall(queries, 5)):
            assert [c.item_id for c in a] == [c.item_id for c in b]
            assert np.allclose([c.score for c in a], [c.score for c in b])
            assert [c.reason for c in a] == [c.reason for c in b]


class RankerContract:
    """What every ranker promises. Override `make()` and, optionally, `recallers()`."""

    def make(self) -> Ranker:
        raise NotImplementedError

    def recallers(self) -> list[Recaller]:
        """Recallers whose candidates the ranker is tested on (need not be built-ins)."""
        return [_HalfRecaller(), _AllRecaller()]

    def examples(self) -> tuple[list[RankingExample], Dataset]:
        data = checkerboard()
        recs = self.recallers()
        for r in recs:
            r.fit(data)
        examples = []
        for u in range(N_USERS):
            user = f"u{u}"
            idx = data.user_events(data.user_index[user])
            seen = data.items[idx]
            hidden = str(data.item_ids[seen[-1]])
            visible = tuple(h for h in data.history(data.user_index[user]) if h.item_id != hidden)
            q = Query(user_id=user, history=visible,
                      exclude=frozenset(h.item_id for h in visible))
            cands = merge({r.name: r.recall([q], 10)[0] for r in recs})
            examples.append(RankingExample(q, cands, frozenset([hidden])))
        return examples, data

    def test_contract_fit_returns_validation_ndcg(self):
        examples, data = self.examples()
        ranker = self.make()
        metrics = ranker.fit(examples, data)
        assert 0.0 <= metrics["ndcg@10"] <= 1.0
        assert ranker.is_fitted()

    def test_contract_rank_keeps_candidates_and_reasons(self):
        examples, data = self.examples()
        ranker = self.make()
        ranker.fit(examples, data)
        ex = examples[0]
        ranked = ranker.rank(ex.query, ex.candidates)
        assert sorted(c.item_id for c in ranked) == sorted(c.item_id for c in ex.candidates)
        assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)
        for c in ranked:
            assert c.reason and c.source in c.ranks

    def test_contract_state_round_trip(self):
        examples, data = self.examples()
        ranker = self.make()
        ranker.fit(examples, data)
        payload, fmt, meta = dump_state(ranker.state())
        clone = self.make()
        clone.load(load_state(payload, fmt, json.loads(json.dumps(meta))))
        for ex in examples[:5]:
            a, b = ranker.rank(ex.query, ex.candidates), clone.rank(ex.query, ex.candidates)
            assert [c.item_id for c in a] == [c.item_id for c in b]
            assert np.allclose([c.score for c in a], [c.score for c in b])

    def test_contract_prefers_the_informative_recaller(self):
        """Given a recaller that knows the checkerboard and one that does not, a tuned
        ranker must do at least as well as the informed recaller's own order."""
        examples, data = self.examples()
        ranker = self.make()
        metrics = ranker.fit(examples, data)
        from .metrics import aggregate

        ranked = [[c.item_id for c in ranker.rank(ex.query, ex.candidates)] for ex in examples]
        informed = [[c.item_id for c in sorted(ex.candidates, key=lambda c: c.ranks.get("half", 10**6))]
                    for ex in examples]
        rel = [ex.relevant for ex in examples]
        assert aggregate(ranked, rel, 10, N_ITEMS)["ndcg@10"] >= \
            aggregate(informed, rel, 10, N_ITEMS)["ndcg@10"] - 0.05
        assert metrics["ndcg@10"] > 0


class _HalfRecaller(Recaller):
    """Test helper: proposes the user's own half of the checkerboard, by popularity."""

    name = "half"
    description = "checkerboard oracle"

    def fit(self, data, progress=None):
        self.pop = np.bincount(data.items, minlength=data.n_items)
        self.ids = data.item_ids
        self._fitted = True

    def recall(self, queries, n):
        out = []
        for q in queries:
            parity = int(q.user_id[1:]) % 2 if q.user_id and q.user_id[1:].isdigit() else 0
            order = [i for i in np.argsort(-self.pop, kind="stable")
                     if int(self.ids[i][1:]) % 2 == parity and self.ids[i] not in q.exclude]
            out.append(self.candidates([(str(self.ids[i]), float(self.pop[i]), "same half")
                                        for i in order[:n]]))
        return out


class _AllRecaller(_HalfRecaller):
    """Test helper: every item by popularity, whatever the user."""

    name = "everything"
    description = "popularity oracle"

    def recall(self, queries, n):
        out = []
        for q in queries:
            order = [i for i in np.argsort(-self.pop, kind="stable") if self.ids[i] not in q.exclude]
            out.append(self.candidates([(str(self.ids[i]), float(self.pop[i]), "popular")
                                        for i in order[:n]]))
        return out


class SourceContract:
    """What every data source promises. Override `make()` and `sample(folder)`, which writes
    a small valid input into `folder` and returns (location, options) for `read`; and
    `broken(folder)`, which writes an input with one bad value (same return)."""

    def make(self):
        raise NotImplementedError

    def sample(self, folder) -> tuple[str | None, dict]:
        raise NotImplementedError

    def broken(self, folder) -> tuple[str | None, dict]:
        raise NotImplementedError

    def test_contract_source_has_name_and_description(self):
        source = self.make()
        assert source.name and source.description

    def test_contract_reads_records_of_known_kinds(self, tmp_path):
        location, options = self.sample(tmp_path)
        records = list(self.make().read(location, **options))
        assert records, "the sample gave no records"
        assert all(isinstance(r, Record) for r in records)
        assert any(isinstance(r, Event) for r in records) or any(isinstance(r, Item) for r in records)
        for r in records:
            if isinstance(r, Event):
                assert r.user_id and r.item_id and r.kind and r.ts > 0
            if isinstance(r, (Item, User)):
                assert (r.item_id if isinstance(r, Item) else r.user_id)

    def test_contract_reading_twice_gives_the_same_records(self, tmp_path):
        location, options = self.sample(tmp_path)
        first = list(self.make().read(location, **dict(options)))
        assert first == list(self.make().read(location, **dict(options)))

    def test_contract_bad_input_names_where(self, tmp_path):
        location, options = self.broken(tmp_path)
        try:
            list(self.make().read(location, **options))
        except ImportDataError as exc:
            assert str(exc), "an ImportDataError says what is wrong"
        else:
            raise AssertionError("bad input was accepted")


class EncoderContract:
    """What every text encoder promises. Override `make()`."""

    texts = ["green tea, loose leaf", "dark roast espresso coffee", "green tea, loose leaf"]

    def make(self):
        raise NotImplementedError

    def test_contract_vectors_are_unit_float32_rows_of_dim(self):
        enc = self.make()
        vectors = enc.encode(self.texts)
        assert vectors.dtype == np.float32 and vectors.shape == (len(self.texts), enc.dim)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        assert np.allclose(vectors[0], vectors[2], atol=1e-5), "the same text, the same vector"

    def test_contract_items_encode_by_their_text_and_hash_by_it(self):
        enc = self.make()
        items = checkerboard_items()[:2]
        vectors = enc.encode_items(items)
        assert vectors.shape == (2, enc.dim)
        renamed = Item(items[0].item_id, title="Something else entirely", category="Other")
        assert enc.content_hash(items[0]) == enc.content_hash(items[0])
        assert enc.content_hash(items[0]) != enc.content_hash(renamed), "an edit is seen"
