"""The engine's schema, as numbered sqlite-utils migrations. Never edit one that has landed:
add the next number instead."""

from __future__ import annotations

from sqlite_utils.migrations import Migrations

migrations = Migrations("engine")


@migrations()
def m001_core_tables(db):
    db["items"].create({
        "item_id": str, "title": str, "description": str, "category": str, "brand": str,
        "price": float, "tags": str, "in_stock": int, "attrs": str,
        "created_at": float, "updated_at": float,
    }, pk="item_id")
    db["items"].create_index(["category"])
    db["users"].create({"user_id": str, "attrs": str, "created_at": float}, pk="user_id")
    db["events"].create({
        "id": int, "event_id": str, "user_id": str, "item_id": str, "kind": str,
        "value": float, "ts": float,
    }, pk="id", not_null={"event_id", "user_id", "item_id", "kind", "ts"})
    db["events"].create_index(["event_id"], unique=True)
    db["events"].create_index(["user_id", "ts"])
    db["events"].create_index(["item_id"])
    db["events"].create_index(["ts"])


@migrations()
def m002_knowledge_graph(db):
    db["triples"].create({"head": str, "relation": str, "tail": str},
                         not_null={"head", "relation", "tail"})
    db["triples"].create_index(["head", "relation", "tail"], unique=True)
    db["triples"].create_index(["tail"])
    db["item_entities"].create({"item_id": str, "entity": str}, not_null={"item_id", "entity"})
    db["item_entities"].create_index(["item_id", "entity"], unique=True)
    db["item_entities"].create_index(["entity"])


@migrations()
def m003_models(db):
    db["embeddings"].create({
        "encoder": str, "item_id": str, "content_hash": str, "dim": int, "vector": bytes,
    }, pk=("encoder", "item_id"))
    db["artifacts"].create({
        "id": int, "name": str, "version": int, "format": str, "bytes": bytes,
        "sha256": str, "size": int, "meta": str, "created_at": float, "active": int,
    }, pk="id", not_null={"name", "version", "format", "bytes", "sha256"})
    db["artifacts"].create_index(["name", "version"], unique=True)
    db["artifacts"].create_index(["name", "active"])
    db["runs"].create({
        "id": int, "kind": str, "status": str, "started_at": float, "finished_at": float,
        "config": str, "metrics": str, "note": str,
    }, pk="id")


@migrations()
def m004_item_search(db):
    """Full-text index over the catalogue (FTS5, porter stemming), kept in sync by triggers."""
    db["items"].enable_fts(["item_id", "title", "category", "brand", "tags", "description"],
                           fts_version="FTS5", tokenize="porter unicode61", create_triggers=True)


@migrations()
def m005_serving(db):
    """HTTP serving: what each recommendation response showed (for click-through and
    conversion attribution), which events came back with a recommendation id, and API keys
    (only a SHA-256 of each key is stored)."""
    db["impressions"].create({
        "recommendation_id": str, "position": int, "item_id": str, "source": str,
        "ranker": str, "placement": str, "user_id": str, "ts": float,
    }, pk=("recommendation_id", "position"), not_null={"item_id", "ts"})
    db["impressions"].create_index(["ts"])
    db["impressions"].create_index(["user_id"])
    db["attributed_events"].create({
        "event_id": str, "recommendation_id": str, "item_id": str, "user_id": str,
        "kind": str, "value": float, "ts": float,
    }, pk="event_id", not_null={"recommendation_id", "item_id", "kind"})
    db["attributed_events"].create_index(["recommendation_id", "item_id"])
    db["attributed_events"].create_index(["user_id"])
    db["api_keys"].create({
        "id": int, "name": str, "prefix": str, "key_hash": str, "scope": str,
        "created_at": float, "revoked_at": float, "last_used_at": float,
    }, pk="id", not_null={"key_hash", "scope", "prefix"})
    db["api_keys"].create_index(["key_hash"], unique=True)


@migrations()
def m006_run_owner(db):
    """Which process runs a training run (its pid and host), so that a run whose process is
    gone (killed, the machine restarted) can be told from one still running."""
    db["runs"].add_column("pid", int)
    db["runs"].add_column("host", str)


@migrations()
def m007_merchandising_rules(db):
    """The shop owner's merchandising rules (engine.merchandising): pins, boosts, burials and
    filters, optionally per placement and until a time. A removed rule keeps its row
    (`removed_at`), so a rule id is never given to another rule."""
    db["rules"].create({
        "id": int, "kind": str, "item_id": str, "position": int, "condition": str,
        "weight": float, "placement": str, "category": str, "until": float,
        "created_at": float, "removed_at": float,
    }, pk="id", not_null={"kind", "created_at"})
    db["rules"].create_index(["removed_at"])


@migrations()
def m008_experiments(db):
    """A/B experiments (engine.experiments): each experiment's arms (name, share of shoppers,
    the arm's pipeline settings as JSON), its placement ("" : every placement), when it
    started and stopped, and the winner chosen at stop. Each logged impression records the
    experiment and arm it was served under ("" outside experiments), so the report splits
    by arm."""
    db["experiments"].create({
        "name": str, "placement": str, "arms": str, "split": str, "started_at": float,
        "stopped_at": float, "winner": str,
    }, pk="name", not_null={"arms", "started_at"})
    db["experiments"].create_index(["stopped_at"])
    db["impressions"].add_column("experiment", str, not_null_default="")
    db["impressions"].add_column("arm", str, not_null_default="")
    db["impressions"].create_index(["experiment", "arm", "user_id"])


@migrations()
def m009_artifact_parts(db):
    """Artifacts bigger than one SQLite value may be (1 GB; the co-occurrence model of a
    shop with 20 million events is about 1.6 GB): the artifact's row holds the first part of
    its bytes, this table the rest, in order. Deleting an artifact deletes its parts."""
    db["artifact_parts"].create({"artifact_id": int, "part": int, "bytes": bytes},
                                pk=("artifact_id", "part"), not_null={"bytes"})
    db.execute("CREATE TRIGGER artifact_parts_follow AFTER DELETE ON artifacts "
               "BEGIN DELETE FROM artifact_parts WHERE artifact_id = old.id; END")
