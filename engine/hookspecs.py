"""The plugin contract. Every hook here is public API: only ever add arguments.

A plugin is a module (or object) with functions decorated by `engine.hookimpl`, named
after these specs, published through the `shelfwise` entry-point group in its
pyproject.toml. Built-in plugins are registered exactly the same way.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("shelfwise")
hookimpl = pluggy.HookimplMarker("shelfwise")


@hookspec
def register_sources(register: Callable[..., None]) -> None:
    """Register data sources that `shelfwise import NAME` can read.

    :param register: call ``register(SourceClass, ...)`` with one or more subclasses of
        ``engine.DataSource``. Each class has a unique ``name`` and implements
        ``read(location, **options)`` yielding ``Item``/``User``/``Event``/``Triple``/
        ``ItemEntity`` records with ``origin`` set to "FILE line N"; bad input raises
        ``engine.ImportDataError`` so that nothing of the import is written.

    Called once per process, the first time the engine needs its components. Return
    value ignored.
    """


@hookspec
def register_encoders(register: Callable[..., None]) -> None:
    """Register text encoders.

    :param register: call ``register(EncoderClass, ...)`` with subclasses of
        ``engine.Encoder``: ``name``, ``dim`` and ``encode(texts) -> float32 (n, dim)``
        with L2-normalised rows.

    Called once per process, the first time the engine needs its components. Return
    value ignored.
    """


@hookspec
def register_recallers(register: Callable[..., None]) -> None:
    """Register recall strategies.

    :param register: call ``register(RecallerClass, ...)`` with subclasses of
        ``engine.Recaller``: a unique ``name``; ``fit(data, progress)`` on an
        ``engine.Dataset``; batch-first ``recall(queries, n)`` returning, per query, up to
        ``n`` ``Candidate`` objects (best first, never an item in ``query.exclude``, each
        with a readable ``reason``); ``state()``/``load(state)`` as arrays plus JSON
        (never pickle); optionally ``update(events, data)`` for incremental learning.

    Called once per process, the first time the engine needs its components. Return
    value ignored. The pipeline uses a
    registered recaller only if the configuration names it (or it is in the defaults).
    """


@hookspec
def register_rankers(register: Callable[..., None]) -> None:
    """Register rankers that order the merged candidates.

    :param register: call ``register(RankerClass, ...)`` with subclasses of
        ``engine.Ranker``: ``fit(examples, data, progress)`` learns from validation
        ``RankingExample`` objects and returns validation metrics;
        ``rank(query, candidates)`` returns the candidates re-scored, best first, with
        ``source`` and ``reason`` kept.

    Called once per process, the first time the engine needs its components. Return
    value ignored.
    """


@hookspec
def register_commands(cli: "click.Group") -> None:  # noqa: F821 (click stays out of the core)
    """Add commands to the ``shelfwise`` command line.

    :param cli: the root ``click.Group``; decorate new commands with ``@cli.command()``.
        Commands should call the ``engine.Engine`` API (``ctx.obj.engine()``) rather than
        reach into the store.

    Called when the CLI starts, after the built-in commands exist. Return value ignored.
    """
