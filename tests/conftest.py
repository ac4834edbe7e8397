import importlib.metadata

import pytest

from engine.db import open_db
from engine.plugins import load_plugins


def pytest_report_header(config):
    versions = []
    for dist in ("shelfwise", "pluggy", "sqlite-utils", "implicit", "numpy", "torch", "textual"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} missing")
    return "shelfwise stack: " + ", ".join(versions)


# The core suite runs on the collaborative plugins only; tests of the semantic layer
# (sentence encoder, vector index, content and search recall) ask for `all_plugins`.
CORE_PLUGINS = "files,recbole,demo,popular,als,cooccurrence,fusion"


@pytest.fixture(autouse=True)
def shelfwise_home(tmp_path, monkeypatch):
    """Every test gets its own home and no stray settings or database."""
    import engine.cli

    monkeypatch.setenv("SHELFWISE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SHELFWISE_CONFIG", raising=False)
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS)
    monkeypatch.delenv("SHELFWISE_DB", raising=False)
    monkeypatch.setattr(engine.cli, "_registry", None)
    return tmp_path / "home"


@pytest.fixture(scope="session")
def semantic_shop_db(tmp_path_factory):
    """A small demo shop (200 products, 300 shoppers) trained with the semantic layer, built
    once a session; tests serve copies of it (server_support.copy_db)."""
    from .server_support import build_semantic_db

    return build_semantic_db(tmp_path_factory.mktemp("semantic-shop"))


@pytest.fixture
def make_engine(tmp_path):
    """make(registry) -> an Engine over tmp_path/shop.db with those plugins, closed after the test."""
    from engine.engine import Engine

    engines = []

    def make(registry):
        eng = Engine(tmp_path / "shop.db", registry=registry)
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        eng.close()


@pytest.fixture
def all_plugins(monkeypatch):
    """Every installed plugin, the semantic layer included."""
    monkeypatch.delenv("SHELFWISE_LOAD_PLUGINS", raising=False)


@pytest.fixture
def db(tmp_path):
    database = open_db(tmp_path / "shelfwise.db")
    yield database
    database.close()


@pytest.fixture
def registry():
    return load_plugins()


@pytest.fixture
def engine(tmp_path, registry):
    from engine.engine import Engine

    eng = Engine(tmp_path / "shelfwise.db", registry=registry)
    yield eng
    eng.close()
