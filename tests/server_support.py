"""Helpers shared by the server tests: a trained synthetic shop database built once, copies
of it per test, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.engine import Engine
from engine.plugins import load_plugins

from . import shop
from .conftest import CORE_PLUGINS


def _trained(path: Path, plugins: str, fill) -> Path:
    """A database at `path`, filled by fill(engine) and trained with `plugins`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHELFWISE_LOAD_PLUGINS", plugins)
        mp.delenv("SHELFWISE_CONFIG", raising=False)
        eng = Engine(path, registry=load_plugins())
        fill(eng)
        eng.train()
        eng.close()
    return path


def build_shop_db(folder: Path, n_users: int = 120, per_user: int = 15) -> Path:
    """The synthetic shop (tests/shop.py), imported and trained with the core plugins."""
    return _trained(folder / "shop.db", CORE_PLUGINS,
                    lambda eng: eng.store.write(shop.catalogue() + shop.events(n_users, per_user)))


SEMANTIC_PLUGINS = CORE_PLUGINS + ",minilm,content,search"


def build_semantic_db(folder: Path, users: int = 300, items: int = 200) -> Path:
    """A small demo shop trained with the semantic layer (real MiniLM, real HNSW index)."""
    return _trained(folder / "demo.db", SEMANTIC_PLUGINS,
                    lambda eng: eng.import_data("demo", None, seed=7, users=users, items=items))


def copy_db(src: Path, dest_dir: Path) -> Path:
    dest = dest_dir / "served.db"
    shutil.copy(src, dest)
    for suffix in ("-wal", "-shm"):
        if Path(str(src) + suffix).exists():
            shutil.copy(str(src) + suffix, str(dest) + suffix)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def uvicorn_server(app, timeout: float = 30.0):
    """Serve `app` with uvicorn on a free loopback port; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
