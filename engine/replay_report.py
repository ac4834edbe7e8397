"""`replay(engine, config)`: estimate a configuration's click-through rate on the logged
impressions before running it as an experiment (estimators: engine.replay).

For each logged request, the configuration's list is what its pipeline answers for the
same shopper, placement and length with the shopper's history *as of the impression time*
(events stored before it; items bought or rated before it excluded), but with the current
models and the placement's current merchandising rules: the models of that time are not
kept. The history matters: recallers leave out what a shopper already interacted with, so
lists built from today's history would drop exactly the items the logged shopper clicked
and bias every comparison with the logged clicks."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import replay as est
from .errors import EngineError
from .store.attribution import parse_since
from .store.replay_log import clicked_impressions
from .types import Candidate, Query

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine


@dataclass
class RecallerShare:
    """The new lists' slots filled by one recaller: share, predicted CTR, evidence."""

    recaller: str
    share: float
    ctr: float
    support: float


@dataclass
class ReplayReport:
    """A configuration's estimated CTR on the logged requests, against the logged CTR.
    Rates are clicks per impression; intervals are 95% cluster-bootstrap intervals."""

    config: str
    since: str | None
    placement: str | None
    requests: int
    shoppers: int
    impressions: int
    clicks: int
    logged_ctr: float
    logged_interval: tuple[float, float]
    ctr: float
    interval: tuple[float, float]
    difference: float
    difference_interval: tuple[float, float]
    support: float  # share of the new lists' slots whose item the logs show MIN_SHOWN+ times
    matched_share: float  # share of new slots the same request's logged list also showed
    matched_ctr: float | None  # item-position IPS over those slots
    matched_interval: tuple[float, float] | None
    position_mixing: float
    position_bias: list[float]  # relative examination per position, 1 at the top
    verdict: str  # higher | lower | no clear difference | too thin
    reasons: list[str]
    message: str
    by_recaller: list[RecallerShare] = field(default_factory=list)
    lists_as_of: str = "the impression time (shopper's history), current models and rules"
    bootstraps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoggedRequest:
    """One logged list: who it was for, where, how long, when."""

    user_id: str | None
    placement: str
    length: int
    ts: float


def lists_as_of(engine: Engine, requests: list[LoggedRequest], batch: int = 256) -> list[list[Candidate]]:
    """`engine`'s pipeline's list for each logged request, for the shopper's history as of
    the request's time (current models; the placement's rules)."""
    ps = engine.settings.pipeline
    histories: dict[str, tuple] = {}

    def query(r: LoggedRequest) -> Query:
        if r.user_id is None:
            return Query(now=r.ts)
        if r.user_id not in histories:
            histories[r.user_id] = engine.store.history(r.user_id)
        before = [h for h in histories[r.user_id] if h.ts < r.ts]
        consumed = frozenset(h.item_id for h in before if h.kind in ps.exclude_kinds)
        return Query(user_id=r.user_id, history=tuple(before[-ps.history:]), exclude=consumed,
                     now=r.ts)

    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for j, r in enumerate(requests):
        groups[(r.placement, r.length)].append(j)
    out: list[list[Candidate]] = [[] for _ in requests]
    for (placement, n), members in groups.items():
        pipe = engine.pipeline(placement=placement)
        for start in range(0, len(members), batch):
            part = members[start:start + batch]
            for j, cands in zip(part, pipe.run([query(requests[j]) for j in part], n)):
                out[j] = cands
    return out


def _index(values) -> tuple[np.ndarray, list]:
    names, idx = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    return idx, [str(n) for n in names]


def replay(engine: Engine, config_path: str | Path, since: str | None = "30d",
           placement: str | None = None, bootstraps: int = 200, seed: int = 0) -> ReplayReport:
    """Estimate the CTR the configuration in `config_path` (a shelfwise.toml) would have had
    on the impressions logged since `since` ('30d', '12h', 'all'), optionally of one
    placement, with the logged CTR beside it and a verdict."""
    from .engine import Engine

    if bootstraps < 20:
        raise EngineError(f"bootstraps={bootstraps}: the intervals need at least 20 resamples "
                          "(200 is the default).", title="Invalid replay")
    candidate = Engine(engine.db_path, registry=engine.registry, config_path=config_path)
    try:
        candidate.pipeline()  # an unknown recaller or ranker, or no trained model: say so now
        rows = clicked_impressions(engine.db, parse_since(since), placement)
        window = f"since {since}" if since not in (None, "", "all") else "in the logs"
        if not rows:
            raise EngineError(f"No impressions logged {window}"
                              + (f" for placement {placement!r}" if placement is not None else "")
                              + ". The HTTP server logs every list it answers; replay needs some. "
                              "Widen --since or check --placement.", title="Nothing to replay")
        log, new, sources, requests = _arrays(candidate, rows)
    finally:
        candidate.close()
    found = est.estimate(log, new, bootstraps, seed)
    verdict, reasons = est.verdict(found)
    return ReplayReport(
        config=str(config_path), since=since, placement=placement, requests=len(requests),
        shoppers=len(np.unique(log.cluster)), impressions=found.impressions, clicks=found.clicks,
        logged_ctr=found.logged_ctr, logged_interval=found.logged_interval, ctr=found.ctr,
        interval=found.interval, difference=found.difference,
        difference_interval=found.difference_interval, support=found.support,
        matched_share=found.matched_share, matched_ctr=found.matched_ctr,
        matched_interval=found.matched_interval, position_mixing=found.position_mixing,
        position_bias=[round(float(t), 4) for t in found.theta], verdict=verdict, reasons=reasons,
        message=_message(verdict, reasons, found), by_recaller=_by_recaller(found, new, sources),
        bootstraps=bootstraps)


def _arrays(candidate: Engine, rows: list[tuple]):
    """The logged impressions and the candidate's lists as index arrays (engine.replay)."""
    rids, positions, items, sources, places, users, times, clicks = zip(*rows)
    request, request_ids = _index(rids)
    item, item_names = _index(items)
    source, source_names = _index(sources)
    first = np.unique(request, return_index=True)[1]
    req_user = [users[j] for j in first]
    req_place = [places[j] or "" for j in first]
    req_time = [times[j] for j in first]
    length = np.bincount(request)
    cluster_key = [u if u is not None else f"\0anonymous {r}" for r, u in enumerate(req_user)]
    cluster, _ = _index(cluster_key)
    log = est.LoggedImpressions(request=request, position=np.asarray(positions) - 1, item=item,
                                source=source, click=np.asarray(clicks, float), cluster=cluster,
                                n_items=len(item_names), n_sources=len(source_names))
    item_at = {name: i for i, name in enumerate(item_names)}
    source_at = {name: i for i, name in enumerate(source_names)}
    new_names = list(source_names)
    requests = [LoggedRequest(req_user[r], req_place[r], int(length[r]), req_time[r])
                for r in range(len(request_ids))]
    slots: list[tuple[int, int, int, int]] = []
    for r, cands in enumerate(lists_as_of(candidate, requests)):
        for k, rec in enumerate(cands):
            if rec.source not in source_at:  # a recaller the window never logged
                source_at[rec.source] = -1 - len(new_names)
                new_names.append(rec.source)
            slots.append((r, k, item_at.get(rec.item_id, -1), source_at[rec.source]))
    if not slots:
        raise EngineError("The configuration answers an empty list for every logged request: "
                          "check its [pipeline] recallers.", title="Nothing to replay")
    a = np.asarray(slots)
    new = est.NewLists(request=a[:, 0], position=a[:, 1], item=a[:, 2],
                       source=np.where(a[:, 3] >= 0, a[:, 3], -1))
    labels = np.asarray(new_names, dtype=object)[np.where(a[:, 3] >= 0, a[:, 3], -1 - a[:, 3])]
    return log, new, labels, request_ids


def _by_recaller(found: est.Estimate, new: est.NewLists, labels: np.ndarray) -> list[RecallerShare]:
    out = []
    for name in sorted(set(labels.tolist())):
        mask = labels == name
        out.append(RecallerShare(recaller=name, share=float(mask.mean()),
                                 ctr=float(found.slot_rates[mask].mean()),
                                 support=float(found.evidence[mask].mean())))
    return sorted(out, key=lambda s: -s.share)


def _message(verdict: str, reasons: list[str], found: est.Estimate) -> str:
    lo, hi = found.interval
    said = (f"Estimated CTR {found.ctr:.2%} (95% interval {lo:.2%}–{hi:.2%}) against "
            f"{found.logged_ctr:.2%} logged.")
    if verdict == "too thin":
        return (f"The logs are too thin to tell: {'; '.join(reasons)}. {said} Log more "
                "impressions (a longer --since) or try the configuration as an experiment.")
    if verdict == "no clear difference":
        return f"{said} No clear difference: the two are within ±{est.PRECISION:.0%} of each other."
    dlo, dhi = found.difference_interval
    return (f"{said} The configuration looks {verdict}: by {found.difference * 100:+.2f} "
            f"points ({dlo * 100:+.2f} to {dhi * 100:+.2f}).")
