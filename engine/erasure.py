"""Forgetting a shopper: their rows in every table, their rows in any stored model that
keeps some (`Component.forget`), their cached lists, and every older copy of those pages
(secure_delete, then the write-ahead log checkpointed and emptied)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .store import attribution
from .artifacts import dump_state, load_state
from .components import Component
from .db import write_transaction
from .errors import UnknownComponentError

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine


def erase_user(engine: Engine, user_id: str) -> dict[str, Any]:
    store = engine.store
    rewritten = models_without(engine, user_id)
    with write_transaction(engine.db):
        erased = attribution.erase_user(engine.db, user_id)
        erased["events"] = store.delete_user(user_id)
        for name, (blob, active) in rewritten.items():
            version = store.save_artifacts({name: blob}, activate=active)[name]
            store.delete_versions_except(name, version)
    erased["models_rewritten"] = sorted(rewritten)
    erased["cached_lists"] = engine.serving.cache.drop_users([user_id])
    erased["log_emptied"] = store.checkpoint()
    engine.serving.adopt()
    return {"user_id": user_id, **erased}


def models_without(engine: Engine, user_id: str) -> dict[str, tuple[tuple[bytes, str, dict], bool]]:
    """The stored models that keep rows of this shopper, rewritten without them: name ->
    (new blob, whether it is the active version). Each model's active version is rewritten
    (or its newest, when none is active); the erasure then deletes every other version,
    since each holds the same rows."""
    store = engine.store
    history = store.history(user_id)
    if not history:
        return {}
    attrs = store.user_attrs([user_id]).get(user_id, {})
    out = {}
    for name in store.model_names():
        kind, plugin = name.split("/", 1)
        try:
            component = engine.make(f"{kind}s", plugin)
        except UnknownComponentError:  # not installed: nothing here can read or serve it
            continue
        if type(component).forget is Component.forget:  # keeps nothing per shopper
            continue
        active = any(a["name"] == name for a in store.active_artifacts(name))
        found = store.load_artifact(name, None if active else store.latest_artifact(name)["version"])
        component.load(load_state(*found))
        if component.forget(history, attrs):
            payload, fmt, meta = dump_state(component.state())
            if "events_upto" in found[2]:  # the events it holds, less this shopper's
                meta = {**meta, "events_upto": found[2]["events_upto"]}
            out[name] = ((payload, fmt, meta), active)
    return out
