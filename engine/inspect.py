"""Read-only analysis for the views: where a recommendation came from, why an item is
missing, knowledge-graph neighbours, run comparisons, events over time.

Every function takes an Engine and returns plain data (dicts, lists, numbers), so the
terminal UI (and anyone else) shows what the engine computes without computing anything
of its own. Nothing here writes to the database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .errors import EngineError
from .relations import readable_relation

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine

METRICS = ("ndcg", "recall", "hit", "mrr", "precision", "coverage")


# -- users ---------------------------------------------------------------------------------

def find_users(engine: Engine, text: str = "", limit: int = 50) -> list[dict[str, Any]]:
    """Users whose id or attributes contain `text` (case-insensitive), exact id first,
    with their number of events. An empty text lists the most active users."""
    return engine.store.find_users(text.strip(), limit)


def user_profile(engine: Engine, user_id: str, limit: int = 200) -> dict[str, Any]:
    """A user's attributes and history, newest first, with item titles and event counts by kind."""
    if not engine.store.has_user(user_id):
        raise EngineError(f"Unknown user {user_id!r}. Search users by id or attribute "
                          f"(for example a country or segment).", title="Unknown user")
    history = list(reversed(engine.store.history(user_id, limit)))
    items = engine.store.items(h.item_id for h in history)
    by_kind = engine.store.events_by_kind(user_id=user_id)
    return {
        "user_id": user_id, "attrs": engine.store.user_attrs([user_id]).get(user_id, {}),
        "events_by_kind": by_kind, "events": sum(by_kind.values()),
        "history": [{"item_id": h.item_id, "title": items[h.item_id].title if h.item_id in items else "",
                     "in_catalogue": h.item_id in items, "kind": h.kind, "ts": h.ts, "value": h.value}
                    for h in history],
    }


def pipeline_choices(engine: Engine) -> dict[str, Any]:
    """The trained recallers and rankers a view may toggle, and which are on by default."""
    comps = engine.components()
    default = set(engine.default_recallers())
    recallers = [{"name": c["name"], "default": c["name"] in default, "description": c["description"]}
                 for c in comps.get("recallers", []) if c["trained"]]
    rankers = [c["name"] for c in comps.get("rankers", []) if c["trained"]]
    default_ranker = engine.serving_ranker() if rankers else None
    return {"recallers": recallers, "rankers": rankers, "default_ranker": default_ranker}


def why_not(engine: Engine, user_id: str, item_id: str, n: int = 10,
            recallers: Sequence[str] | None = None, ranker: str | None = None,
            category: str | None = None, depth: int = 1000, placement: str = "") -> dict[str, Any]:
    """Where `item_id` falls out of `user_id`'s recommendations with these settings (the
    same arguments as Engine.recommend): was it recalled by each recaller and at what rank
    (also below the recaller's quota, down to `depth`), was it filtered (already consumed,
    out of stock, not in the catalogue, another category, a filter rule), where did the
    ranker put it, which merchandising rules moved it (`rules`).

    `verdict` is one of: "recommended", "not recalled", "filtered", "ranked low"."""
    item = engine.store.item(item_id)
    if item is None and not engine.store.item_events(item_id, 1):
        raise EngineError(f"Unknown item {item_id!r}. Find ids by searching items by name.",
                          title="Unknown item")
    pipe = engine.pipeline(recallers, ranker, placement)  # what Engine.recommend would use right now
    trace = pipe.trace(engine.query_for(user_id, category), n)
    per_recaller = []
    for name, proposed in trace.recalled.items():
        quota = trace.quotas.get(name, 100)
        rank = trace.recall_rank(name, item_id)
        entry = {"recaller": name, "quota": quota, "rank": rank, "within_quota": rank is not None,
                 "reason": proposed[rank - 1].reason if rank else ""}
        if rank is None and depth > quota:  # would a deeper list have found it?
            deep = pipe.recallers[name].recall([trace.query], depth)[0]
            entry["rank"] = next((i + 1 for i, c in enumerate(deep) if c.item_id == item_id), None)
        per_recaller.append(entry)
    # the pipeline's own filters, asked about this item (also when nobody proposed it)
    filters = [_filter_said(engine, name, item, category) for name in pipe.removals(trace.query, [item_id])
               if name != "category" or item is not None]
    position, shown = trace.ranked_at(item_id), trace.shown_at(item_id)
    score = trace.ranked[position - 1].score if position else None
    rules = trace.rules_of(item_id)
    if shown is not None:  # a pin shows an item no recaller proposed
        verdict, position = "recommended", shown
    elif not any(e["within_quota"] for e in per_recaller):
        verdict = "not recalled"
    elif filters or position is None:
        verdict = "filtered"
    else:
        verdict = "ranked low"
    summary = _why_not_summary(verdict, per_recaller, filters, position, n, len(trace.ranked), trace.ranker)
    moved = [r for r in rules if not r.startswith("filtered by")]
    if moved:
        summary += f" Merchandising: {', '.join(moved)}."
    return {
        "item_id": item_id, "title": item.title if item else "", "user_id": user_id, "n": n,
        "verdict": verdict, "recallers": per_recaller, "filters": filters, "ranker": trace.ranker,
        "position": position, "score": score, "candidates": len(trace.ranked), "rules": rules,
        "summary": summary,
    }


def _filter_said(engine: Engine, name: str, item, category: str | None) -> str:
    """A pipeline filter's removal of one item, in words."""
    if name == "excluded":
        kinds = ", ".join(engine.settings.pipeline.exclude_kinds)
        return f"already consumed by the user ({kinds} items are not recommended again)"
    if name == "unavailable":
        return ("not in the catalogue (events mention it, but it is not a product)" if item is None
                else "out of stock")
    if name.startswith("rule "):
        rule = next((r for r in engine.rules() if f"rule {r.id}" == name), None)
        return f"filtered by {name}" + (f" ({rule.where})" if rule is not None else "")
    return f"category is {item.category if item else ''!r}, the request asks for {category!r}"


def _why_not_summary(verdict, per_recaller, filters, position, n, candidates, ranker) -> str:
    if verdict == "not recalled":
        deeper = [f"{e['recaller']} ranks it {e['rank']} (quota {e['quota']})"
                  for e in per_recaller if e["rank"] is not None]
        return "No recaller proposed it" + (": " + "; ".join(deeper) if deeper else
                                            ", not even in a much longer list.")
    found = ", ".join(f"{e['recaller']} #{e['rank']}" for e in per_recaller if e["within_quota"])
    if verdict == "recommended" and not found:
        return f"Recommended at {position}: no recaller proposed it, a pin placed it."
    if verdict == "filtered":
        return f"Recalled by {found}, then filtered: " + "; ".join(filters or ["removed by a filter"])
    by = f"the {ranker} ranker" if ranker else "the merged order (no ranker)"
    if verdict == "ranked low" and position <= n:
        return (f"Recalled by {found}; {by} put it at {position} of {candidates}, then the "
                f"pipeline's rules (merchandising, diversity, new products) moved it below the top {n}.")
    if verdict == "ranked low":
        return f"Recalled by {found}; {by} put it at {position} of {candidates}, below the top {n}."
    return f"Recommended at {position} (recalled by {found}; ordered by {by})."


# -- items ---------------------------------------------------------------------------------

def item_profile(engine: Engine, item_id: str, interactions: int = 50) -> dict[str, Any]:
    """An item's catalogue fields, its event counts by kind and the latest interactions."""
    item = engine.store.item(item_id)
    events = engine.store.item_events(item_id, interactions)
    if item is None and not events:
        raise EngineError(f"Unknown item {item_id!r}.", title="Unknown item")
    by_kind = engine.store.events_by_kind(item_id=item_id)
    users = engine.store.item_users(item_id)
    fields = {}
    if item is not None:
        fields = {"title": item.title, "category": item.category, "brand": item.brand,
                  "price": item.price, "in_stock": item.in_stock, "tags": list(item.tags),
                  "description": item.description, "attrs": dict(item.attrs)}
    return {"item_id": item_id, "in_catalogue": item is not None, **fields,
            "events_by_kind": by_kind, "users": users, "interactions": events}


def kg_neighbours(engine: Engine, item_id: str, limit: int = 50, examples: int = 3) -> list[dict[str, Any]]:
    """The item's knowledge-graph neighbours: for each entity the item is linked to, every
    triple touching that entity (either direction), with the relation's readable name, the
    node at the other end (its item title when that node is a product) and the other items
    that reach the same node by the same relation; the most specific shared nodes first."""
    out = []
    for relation, node, direction in engine.store.item_links(item_id, 20 * limit):
        others = engine.store.items_sharing(node, relation, direction, but=item_id)
        node_items = [found] if (found := engine.store.entity_item(node)) else []
        titles = engine.store.items(others[:examples] + node_items)
        node_title = titles[node_items[0]].title if node_items and node_items[0] in titles else ""
        out.append({"relation": relation, "name": readable_relation(relation),
                    "direction": direction,
                    "node": node, "node_title": node_title, "shared": len(others),
                    "examples": [{"item_id": o, "title": titles[o].title if o in titles else ""}
                                 for o in others[:examples]]})
    # The most telling first: a director shared with three films says more than a genre
    # shared with six hundred; nodes no other item reaches come last. One row per node.
    out.sort(key=lambda r: (r["shared"] == 0, r["shared"], r["direction"] != "out", r["name"], r["node"]))
    seen: set[str] = set()
    return [r for r in out if not (r["node"] in seen or seen.add(r["node"]))][:limit]


# -- the shop over time --------------------------------------------------------------------

def events_over_time(engine: Engine, buckets: int = 30) -> dict[str, Any]:
    """Events per time bucket and kind: {"start", "end", "bucket_seconds", "kinds":
    {kind: [count per bucket]}} over the whole span of the stored events."""
    start, end = engine.store.event_span()
    if start is None:
        return {"start": None, "end": None, "bucket_seconds": 0, "kinds": {}}
    width = max((end - start) / buckets, 1e-9)
    kinds: dict[str, list[int]] = {}
    for kind, bucket, count in engine.store.events_per_bucket(start, width, buckets):
        kinds.setdefault(kind, [0] * buckets)[bucket] += count
    return {"start": start, "end": end, "bucket_seconds": width, "kinds": kinds}


def long_tail(engine: Engine) -> dict[str, Any]:
    """Events per catalogue item, most popular first (items never touched count 0), and how
    concentrated demand is: the share of events that go to the top 10% / 20% of items."""
    counts = engine.store.item_event_counts()
    total = sum(counts)

    def share(fraction: float) -> float:
        top = max(1, round(len(counts) * fraction)) if counts else 0
        return sum(counts[:top]) / total if total else 0.0

    return {"counts": counts, "items": len(counts), "never": sum(1 for c in counts if c == 0),
            "top10_share": share(0.1), "top20_share": share(0.2)}


def overview(engine: Engine, buckets: int = 30) -> dict[str, Any]:
    """Everything the overview shows: counts, active models, last runs, time series, tail."""
    return {**engine.status(), "timeline": events_over_time(engine, buckets),
            "long_tail": long_tail(engine), "online": engine.report("7d")}


# -- evaluation runs -------------------------------------------------------------------------

def evaluation_runs(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """Finished evaluation runs, newest first, with the pipeline's headline metrics."""
    out = []
    for run in engine.store.runs("evaluate", limit):
        metrics = run["metrics"]
        k = metrics.get("k") or run["config"].get("k")
        pipeline = next((r for r in metrics.get("results", []) if r.get("kind") == "pipeline"), None)
        out.append({"id": run["id"], "status": run["status"], "started_at": run["started_at"],
                    "finished_at": run.get("finished_at"), "k": k, "users": metrics.get("users"),
                    "ranker": run["config"].get("ranker"),
                    "recallers": sorted(run["config"].get("recallers") or {}),
                    "ndcg": pipeline["metrics"].get(f"ndcg@{k}") if pipeline else None,
                    "recall": pipeline["metrics"].get(f"recall@{k}") if pipeline else None,
                    "note": run.get("note") or ""})
    return out


def run_metrics(engine: Engine, run_id: int, slice_: str = "metrics") -> dict[str, Any]:
    """One evaluation run's metrics per model (recallers and the pipeline) as rows."""
    run = engine.store.run(run_id)
    if run is None or run["kind"] != "evaluate":
        raise EngineError(f"There is no evaluation run {run_id}.", title="Unknown run")
    if run["status"] != "ok":
        raise EngineError(f"Evaluation run {run_id} did not finish ({run['status']}"
                          f"{': ' + run['note'] if run.get('note') else ''}).", title="Unfinished run")
    k = run["metrics"]["k"]
    rows = []
    for r in run["metrics"].get("results", []):
        if slice_ not in r:
            continue
        name = r["name"] + (f" ({r['ranker']})" if r.get("ranker") else "")
        rows.append({"name": name, "kind": r["kind"],
                     **{m: r[slice_].get(f"{m}@{k}") for m in METRICS}})
    return {"id": run_id, "k": k, "users": run["metrics"].get("users"), "rows": rows,
            "started_at": run["started_at"]}


def compare_runs(engine: Engine, a: int, b: int, slice_: str = "metrics") -> dict[str, Any]:
    """Two evaluation runs side by side: for every model in either run and every metric,
    the value in run a, in run b, and b - a (None where a run lacks the model)."""
    ra, rb = run_metrics(engine, a, slice_), run_metrics(engine, b, slice_)
    if ra["k"] != rb["k"]:
        note = f"Run {a} used k={ra['k']} and run {b} k={rb['k']}; the metrics are not comparable."
    else:
        note = ""
    by_a = {r["name"]: r for r in ra["rows"]}
    by_b = {r["name"]: r for r in rb["rows"]}
    names = list(by_a) + [n for n in by_b if n not in by_a]
    rows = []
    for name in names:
        for metric in METRICS:
            va = by_a.get(name, {}).get(metric)
            vb = by_b.get(name, {}).get(metric)
            rows.append({"name": name, "metric": metric, "a": va, "b": vb,
                         "delta": None if va is None or vb is None else vb - va})
    return {"a": a, "b": b, "k": (ra["k"], rb["k"]), "rows": rows, "note": note}


def recommend(engine: Engine, user_id: str, n: int = 10, recallers: Sequence[str] | None = None,
              ranker: str | None = None, category: str | None = None):
    """Engine.recommend for views that toggle the ranker: `ranker=""` switches it off
    (candidates in merged order, as the pipeline gives them to a ranker)."""
    return engine.recommend(user_id, n, recallers=recallers, ranker=ranker, category=category)


def resolve_item(engine: Engine, text: str) -> str:
    """An item id from what a person typed: the id itself, or the best title match."""
    text = text.strip()
    if engine.store.item(text) is not None or engine.store.item_events(text, 1):
        return text
    found = engine.store.find_items(text, 1)
    if not found:
        raise EngineError(f"No item has the id {text!r} or a title containing it.",
                          title="Unknown item")
    return found[0].item_id
