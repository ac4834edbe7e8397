"""Learning between retrains: new events are stored (idempotent, attributed to the
recommendation they came from) and folded into the recallers that learn incrementally;
after a retrain in another process, the events that arrived meanwhile are folded into
the new models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .store import attribution
from .db import write_transaction
from .errors import EngineError
from .types import Event

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine


def ingest(engine: Engine, events: Sequence[Event],
           recommendation_ids: dict[str, str] | None = None) -> dict[str, Any]:
    """Store new events (idempotent) and fold them into incremental recallers at once.

    `recommendation_ids` maps event_id -> the recommendation_id of the response the
    event came from; stored events are attributed to it in the same transaction."""
    histories = {u: engine.store.history(u, engine.settings.pipeline.history) for u in {e.user_id for e in events}}
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
        engine.serving.first_events(added)
        # anonymous lists (popular, visitors' items) move with everyone's events
        engine.serving.cache.drop_users({e.user_id for e in added} | {None})
        engine.serving.adopt()
        learn(engine, added, histories)
    return {"accepted": len(added), "duplicates": duplicates}


def learn(engine: Engine, events: Sequence[Event], histories) -> None:
    engine.serving.update_recallers(list(engine.lineup.quotas()), events, histories)
    if engine.serving.save_due():
        engine.save_incremental()


def fold_in_since(engine: Engine, after_id: int) -> int:
    """After another connection activated models trained on events up to id `after_id`
    (its `dataset_events_upto`): fold the events stored after that snapshot into the
    incremental recallers, so what arrived during a retrain is not forgotten."""
    events, histories = engine.serving.events_to_fold_in(after_id, engine.settings.pipeline.history)
    if not events:
        return 0
    learn(engine, events, histories)
    engine.serving.cache.drop_users(histories)
    return len(events)
