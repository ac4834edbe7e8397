"""`shelfwise plugin new`: write a ready plugin package — pyproject.toml with the entry point,
a module with a minimal working component of the asked kind, tests (the `engine.testing`
contract mixins where there is one) and a README — that passes its tests unchanged."""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from .errors import EngineError

KINDS = ("recaller", "ranker", "source", "encoder")
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


def new_plugin(name: str, kind: str, folder: str | Path = ".") -> Path:
    """Write the package `shelfwise-NAME` under `folder` and return its directory.

    `name` is lower-case letters, digits, "-" and "_" ("brand-picks"): the component and the
    entry point are `brand_picks`, the module `shelfwise_brand_picks`."""
    if kind not in KINDS:
        raise EngineError(f"Unknown plugin kind {kind!r}. Choose one of: {', '.join(KINDS)}.",
                          "Cannot create the plugin")
    if not _NAME.match(name):
        raise EngineError(f"{name!r} is not a usable plugin name: use lower-case letters, digits, "
                          '"-" and "_", starting with a letter (for example "brand-picks").',
                          "Cannot create the plugin")
    component = name.replace("-", "_")
    dist = "shelfwise-" + component.replace("_", "-")
    module = "shelfwise_" + component
    target = Path(folder) / dist
    if target.exists() and any(target.iterdir()):
        raise EngineError(f"{target} already exists and is not empty. Choose another name or "
                          "--dir, or remove it.", "Cannot create the plugin")
    values = {
        "component": component, "module": module, "dist": dist, "kind": kind,
        "cls": "".join(part.capitalize() for part in component.split("_")) + _SUFFIX[kind],
        "hook": _HOOK[kind],
    }
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"{module}.py": _MODULES[kind],
        "tests/conftest.py": _CONFTEST,
        f"tests/test_{component}.py": _TESTS[kind],
    }
    for path, text in files.items():
        out = target / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(Template(text).substitute(values).lstrip(), encoding="utf-8")
    return target


_SUFFIX = {"recaller": "Recaller", "ranker": "Ranker", "source": "Source", "encoder": "Encoder"}
_HOOK = {"recaller": "register_recallers", "ranker": "register_rankers",
         "source": "register_sources", "encoder": "register_encoders"}

_PYPROJECT = """
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "A Shelfwise $kind plugin: $component."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["shelfwise"]

[project.optional-dependencies]
test = ["pytest>=8"]

# This line is the whole integration: Shelfwise loads every module of this group.
[project.entry-points.shelfwise]
$component = "$module"

[tool.setuptools]
py-modules = ["$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

_README = """
# $dist

A Shelfwise $kind plugin: `$component`.

```bash
pip install -e .
pytest                      # the engine.testing contract and this plugin's own tests
shelfwise plugins           # lists $component
```

Edit `$module.py`; the reference for hooks, base classes and helpers is
docs/plugins.md in the Shelfwise repository.
"""

_CONFTEST = '''
"""Lets `pytest` run from a plain checkout; after `pip install -e .` this changes nothing."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
'''

_RECALLER = '''
"""$component: items often chosen together with the shopper's recent items."""

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engine import (ModelState, Recaller, banned_items, hookimpl, mention, recent_anchors,
                    top_n)


class ${cls}Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchors: int = Field(20, gt=0, description="recent history items to start from")


class $cls(Recaller):
    name = "$component"
    description = "Items often chosen together with the shopper's recent items"
    Config = ${cls}Config
    default_quota = 0        # > 0 joins the default pipeline; 0: name it in [pipeline] recallers

    def fit(self, data, progress=None):
        m = data.matrix()                       # users x items, summed event weights
        m.data[:] = 1.0
        co = (m.T @ m).tocsr()                  # items x items: shoppers who had both
        co.setdiag(0)
        co.eliminate_zeros()
        self._set(data.item_ids.astype(str), co.indptr, co.indices, co.data.astype(np.float32),
                  dict(data.kind_weights))

    def _set(self, ids, indptr, indices, values, kind_weights):
        self.ids, self.indptr, self.indices, self.values = ids, indptr, indices, values
        self.kind_weights = kind_weights
        self.index = {item: i for i, item in enumerate(ids.tolist())}
        self._fitted = True

    def state(self):
        return ModelState(arrays={"ids": self.ids, "indptr": self.indptr,
                                  "indices": self.indices, "values": self.values},
                          meta={"kind_weights": self.kind_weights})

    def load(self, state):
        a = state.arrays
        self._set(a["ids"], a["indptr"], a["indices"], a["values"],
                  dict(state.meta["kind_weights"]))

    def recall(self, queries, n):
        out = []
        for q in queries:
            anchors = [a for a in recent_anchors(q, self.kind_weights, limit=self.config.anchors,
                                                 decay=0.9) if a.item_id in self.index]
            scores = np.zeros(len(self.ids))
            for a in anchors:
                row = self.index[a.item_id]
                lo, hi = self.indptr[row], self.indptr[row + 1]
                scores[self.indices[lo:hi]] += a.weight * self.values[lo:hi]
            scores[scores <= 0] = -np.inf       # never co-chosen: not a candidate
            banned = banned_items(np.ones(len(self.ids), bool), self.index, q.exclude,
                                  also=[self.index[a.item_id] for a in anchors])
            best = top_n(scores, n, banned)
            reason = f"often chosen with {mention(anchors[0].item_id)}" if anchors else ""
            out.append(self.recalled(self.ids[best].tolist(), scores[best], reason))
        return out


@hookimpl
def register_recallers(register):
    register($cls)
'''

_RANKER = '''
"""$component: orders the candidates by the recaller that did best on validation."""

import numpy as np

from engine import CandidateSet, ModelState, Ranker, hookimpl, ndcg_at, recallers_of


class $cls(Ranker):
    name = "$component"
    description = "Follows the recaller that did best on validation; the others break ties"
    priority = -1            # below fusion: set [pipeline] ranker = "$component" to use it

    def fit(self, examples, data, progress=None):
        examples = [ex for ex in examples if ex.relevant]
        names = recallers_of(ex.candidates for ex in examples)
        quality = {}
        for name in names:
            self.lead = name
            quality[name] = self._ndcg(examples)
        self.lead = max(names, key=quality.get, default="")
        self._fitted = True
        return {"ndcg@10": self._ndcg(examples)}

    def _ndcg(self, examples):
        scores = [ndcg_at([c.item_id in ex.relevant for c in self.rank(ex.query, ex.candidates)],
                          len(ex.relevant), k=10) for ex in examples]
        return float(np.mean(scores)) if scores else 0.0

    def state(self):
        return ModelState(meta={"lead": self.lead})

    def load(self, state):
        self.lead, self._fitted = state.meta["lead"], True

    def rank(self, query, candidates):
        cands = CandidateSet.of(candidates)
        ranks = cands.ranks                                   # (rows, recallers); 0: not proposed
        rrf = np.where(ranks > 0, 1.0 / (60 + ranks), 0.0).sum(axis=1)
        names = list(cands.names)
        lead = np.zeros(len(rrf))
        if self.lead in names:
            r = ranks[:, names.index(self.lead)]
            lead = np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0)
        order = np.lexsort((-rrf, -lead))                     # the lead recaller first
        score = np.empty(len(order))
        score[order] = 1.0 - np.arange(len(order)) / max(len(order), 1)
        return cands.ranked(score)


@hookimpl
def register_rankers(register):
    register($cls)
'''

_SOURCE = '''
"""$component: imports events from a JSON-lines file, one {"user", "item", "kind", "ts"} a line."""

import json

from engine import DataSource, Event, ImportDataError, Item, hookimpl


class $cls(DataSource):
    name = "$component"
    description = 'JSON lines: {"user": ..., "item": ..., "kind": "view", "ts": epoch seconds}'

    def read(self, location, **options):
        if location is None:
            raise ImportDataError("$component", None, None, "give the file to read: "
                                  "shelfwise import $component FILE")
        items = set()
        with open(location, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    user, item, kind, ts = row["user"], row["item"], row["kind"], float(row["ts"])
                except (ValueError, TypeError) as exc:
                    raise ImportDataError(location, n, None, f"not a JSON event: {exc}") from None
                except KeyError as exc:
                    raise ImportDataError(location, n, str(exc.args[0]), "missing") from None
                origin = f"{location} line {n}"
                if item not in items:
                    items.add(item)
                    yield Item(str(item), title=str(item), origin=origin)
                yield Event(str(user), str(item), str(kind), ts, origin=origin)


@hookimpl
def register_sources(register):
    register($cls)
'''

_ENCODER = '''
"""$component: a bag of hashed words (replace `encode` with your model)."""

import zlib

import numpy as np

from engine import Encoder, hookimpl


class $cls(Encoder):
    name = "$component"
    description = "Bag of hashed words"
    dim = 256
    priority = -10           # below a real sentence encoder

    def encode(self, texts, progress=None):
        v = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                v[i, zlib.crc32(word.encode()) % self.dim] += 1
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


@hookimpl
def register_encoders(register):
    register($cls)
'''

_MODULES = {"recaller": _RECALLER, "ranker": _RANKER, "source": _SOURCE, "encoder": _ENCODER}

_HOOK_TEST = '''

def test_hook_$hook():
    registered = []
    $hook(register=lambda *classes: registered.extend(classes))
    assert registered == [$cls]
'''

_TESTS = {
    "recaller": '''
from engine.testing import RecallerContract

from $module import $cls, register_recallers


class Test$cls(RecallerContract):
    def make(self):
        return $cls()
''' + _HOOK_TEST,
    "ranker": '''
from engine.testing import RankerContract

from $module import $cls, register_rankers


class Test$cls(RankerContract):
    def make(self):
        return $cls()
''' + _HOOK_TEST,
    "source": '''
import pytest

from engine import Event, ImportDataError, Item

from $module import $cls, register_sources


def test_reads_items_and_events(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"user": "u1", "item": "mug", "kind": "view", "ts": 1700000000}\\n'
                    '{"user": "u1", "item": "mug", "kind": "purchase", "ts": 1700000060}\\n')
    records = list($cls().read(str(path)))
    assert [type(r) for r in records] == [Item, Event, Event]
    assert records[2].kind == "purchase" and records[2].origin.endswith("line 2")


def test_bad_line_names_the_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"user": "u1", "item": "mug", "kind": "view"}\\n')
    with pytest.raises(ImportDataError, match="line 1"):
        list($cls().read(str(path)))
''' + _HOOK_TEST,
    "encoder": '''
import numpy as np

from $module import $cls, register_encoders


def test_encodes_normalised_rows():
    v = $cls().encode(["blue mug", "blue mug", "steel kettle"])
    assert v.shape == (3, $cls.dim) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert np.allclose(v[0], v[1])
''' + _HOOK_TEST,
}
