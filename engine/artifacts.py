"""Model state <-> bytes. npz without pickle, or safetensors; metadata as JSON. No pickle."""

from __future__ import annotations

import io
import json

import numpy as np

from .components import ModelState
from .errors import ArtifactError


def dump_state(state: ModelState) -> tuple[bytes, str, dict]:
    for key, arr in state.arrays.items():
        if np.asarray(arr).dtype == object:
            raise ArtifactError(f"State array {key!r} has dtype object; store strings as "
                                f"a fixed-width unicode array or in meta (JSON).")
    json.dumps(state.meta)  # fails early if the metadata is not JSON
    if state.format == "safetensors":
        from safetensors.numpy import save

        payload = save({k: np.ascontiguousarray(v) for k, v in state.arrays.items()})
    elif state.format == "npz":
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in state.arrays.items()})
        payload = buf.getvalue()
    else:
        raise ArtifactError(f"Unknown state format {state.format!r}; use npz or safetensors.")
    return payload, state.format, state.meta


def load_state(payload: bytes, fmt: str, meta: dict) -> ModelState:
    if fmt == "safetensors":
        from safetensors.numpy import load

        arrays = load(payload)
    elif fmt == "npz":
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    else:
        raise ArtifactError(f"Unknown artifact format {fmt!r}.")
    return ModelState(arrays=arrays, meta=meta, format=fmt)
