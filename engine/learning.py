"""Learning between retrains: new events are stored (idempotent, attributed to the
recommendation they came from) and folded into the recallers that learn incrementally,
whichever connection stored them; after a retrain or another process's incremental save,
the events that arrived after the saved state are folded into the new models."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Sequence

from .components import Recaller
from .store import attribution
from .db import write_transaction
from .errors import EngineError, UnknownComponentError
from .types import Event

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine


# events: beyond this many stored since a model's state, they are not folded in one by one
# (about 5,000 a second on the demo shop: a retrain is the way, "shelfwise train"); the
# model serves as it is, with a warning
FOLD_IN_MAX = 50_000


def ingest(engine: Engine, events: Sequence[Event],
           recommendation_ids: dict[str, str] | None = None) -> dict[str, Any]:
    """Store new events (idempotent) and fold them into incremental recallers at once.

    `recommendation_ids` maps event_id -> the recommendation_id of the response the
    event came from; stored events are attributed to it in the same transaction."""
    engine.sync()
    with write_transaction(engine.db):
        added, duplicates, conflicts = engine.store.add_events(events)
        if conflicts:
            raise EngineError(
                f"event_id {conflicts[0].event_id!r} was already stored with a different "
                f"payload; nothing of this batch was stored.", title="Conflict")
        if recommendation_ids:
            attribution.attribute(engine.db, added, recommendation_ids)
    if added:
        catch_up(engine)
    return {"accepted": len(added), "duplicates": duplicates}


def catch_up(engine: Engine) -> int:
    """Notice the events stored since last time, by this connection or any other (their
    shoppers' cached lists go), and fold them into the pipeline's incremental recallers,
    each from the newest event its state holds (`Serving.upto`), in the order stored: so
    every process serving the database learns every event, and a model loaded from a save
    or a retrain learns what came after its snapshot. Returns how many events were folded
    into the recallers furthest behind."""
    serving = engine.serving
    serving.notice_events()
    if serving.seen is None or serving.caught_up == serving.seen.events:
        return 0
    newest, folded = serving.seen.events, 0
    for upto, names in sorted(serving.behind(incremental(engine)).items()):
        if newest - upto > FOLD_IN_MAX:
            warnings.warn(f"{newest - upto:,} events were stored since the {', '.join(names)} "
                          f"model was made; they are not folded in one by one. Run \"shelfwise "
                          f"train\" to learn from them.", RuntimeWarning, stacklevel=2)
            serving.update_recallers(names, [], {}, newest)
            continue
        events = engine.store.events_between(upto, newest)
        history = engine.settings.pipeline.history
        histories = {user: engine.store.history(user, history, upto=upto)
                     for user in {e.user_id for e in events}}
        serving.update_recallers(names, events, histories, newest)
        serving.cache.drop_users(histories)
        folded = max(folded, len(events))
    serving.caught_up = newest
    if serving.save_due():
        engine.save_incremental()
    return folded


def incremental(engine: Engine) -> list[str]:
    """The pipeline's recallers that learn between retrains (their class has `update`).
    Never raises: a recaller named in shelfwise.toml but not installed is said so by the
    requests that build the pipeline, not by every sync."""
    found = engine.registry.components()["recallers"]
    try:
        names = list(engine.lineup.quotas())
    except UnknownComponentError:
        names = list(engine.settings.pipeline.recallers or {})
    return [name for name in names if name in found and found[name][1].update is not Recaller.update]
