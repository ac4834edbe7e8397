"""Offline replay estimators: a configuration's click-through rate, estimated from the
impressions and clicks logged for another configuration. Pure numpy, no I/O.

Why not plain inverse propensity scoring over whole lists: the serving pipeline is
deterministic, so a different configuration's list was (almost) never shown and has
propensity 0 under the logging policy: whole-list IPS has no support. What the logs do
support is a click model. We use the position-based model (PBM),

    P(click | item i at position k) = theta_k * gamma_i,

examination by position times the item's appeal (Richardson, Dominowska & Ragno 2007;
Craswell et al. 2008; Chuklin, Markov & de Rijke, "Click Models for Web Search", 2015,
ch. 3), fitted by expectation-maximisation. theta is identified because personalised lists
show the same item at several positions (the "intervention harvesting" of Agarwal et al.,
"Estimating Position Bias without Intrusive Interventions", WSDM 2019); `position_mixing`
measures how much of that the log has. Offline evaluation of rankings through click models
follows Li et al., "Offline Evaluation of Ranking Policies with Click Models", KDD 2018.

Two estimates of a new configuration's CTR (clicks per impression) on the logged requests:
- model-based (the headline): the mean over the new lists' slots of theta_k * gamma_i,
  gamma_i the empirical-Bayes posterior mean of the item's appeal given theta (see
  `shrunk_appeal`: the configuration's models learned from the same clicks). An item never shown in the window gets the appeal of the recaller that proposed it
  (estimated from that recaller's logged impressions), so a config that shows unseen items
  is not silently ignored; `support` says how much of the new lists rests on items' own
  evidence.
- item-position IPS on matched slots: where the same request's logged list also showed the
  item, at position j, its observed click reweighted by theta_k / theta_j is an unbiased
  estimate of a click at the new position k. Only over those slots, so it is a check that
  needs no appeal model, not an estimate of the whole list.

Intervals: a cluster bootstrap over shoppers (all requests of one shopper resampled
together; anonymous requests each on their own), refitting the model each time; the
difference is bootstrapped paired, on the same resample. The verdict
says "too thin" when the logs cannot carry the estimate: too little support, too few
clicks, no position mixing, or an interval of the difference that contains 0 and is wider
than a tenth of the logged CTR. The difference is taken between the model's estimates for
the new lists and for the logged ones (on the same resample), so a misfit of the model that
affects both cancels: the logging configuration replayed against itself differs by 0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_SHOWN = 10  # an item "has click evidence" when the window shows it at least this often
MIN_SUPPORT = 0.5  # below this share of the new lists' slots with evidence: too thin
MIN_CLICKS = 30  # fewer logged clicks than this: too thin
MIN_POSITION_MIXING = 0.1  # share of impressions whose item was seen at 2+ positions
PRECISION = 0.1  # "no clear difference" needs the difference known within 10% of the logged CTR
PRIOR_STRENGTH = 2.0  # pseudo-impressions pulling a rarely shown item's appeal to the mean


@dataclass
class LoggedImpressions:
    """One row per logged impression; indices into the request, item and recaller lists."""

    request: np.ndarray  # int, 0..n_requests-1
    position: np.ndarray  # int, 0-based
    item: np.ndarray  # int, 0..n_items-1
    source: np.ndarray  # int, 0..n_sources-1 (the recaller that put it there)
    click: np.ndarray  # 0/1
    cluster: np.ndarray  # int per request: the shopper (bootstrap unit)
    n_items: int
    n_sources: int


@dataclass
class NewLists:
    """The candidate configuration's list for each logged request, one row per slot."""

    request: np.ndarray
    position: np.ndarray  # 0-based
    item: np.ndarray  # index into the logged items, or -1 for an item the window never showed
    source: np.ndarray  # index into the logged recallers, or -1 for one the window never logged


def impression_cells(position: np.ndarray, item: np.ndarray,
                     n_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct item * n_positions + position cells, each impression's cell index)."""
    cell = item.astype(np.int64) * n_positions + position
    cells, at = np.unique(cell, return_inverse=True)
    return cells, at


def fit_pbm(position: np.ndarray, item: np.ndarray, click: np.ndarray, n_positions: int,
            n_items: int, weight: np.ndarray | None = None, iterations: int = 100,
            start: tuple[np.ndarray, np.ndarray] | None = None,
            prior_strength: float = PRIOR_STRENGTH,
            cells: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(theta per position, gamma per item) by EM on the position-based model, with a
    Beta-like prior of `prior_strength` pseudo-impressions at the mean appeal (MAP, so an
    item shown twice without a click does not get appeal 0). `weight`: per impression (the
    bootstrap's resampling counts). Positions or items without weight keep their start.

    The E-step of an unclicked impression depends only on its (item, position), so the
    impressions are summed into those cells once and EM runs over the cells (at most items x
    positions, whatever the log's size); `fit_pbm_reference` is the same EM impression by
    impression. `cells`: `impression_cells(...)` when fitting the same log again."""
    w = np.ones(len(click)) if weight is None else np.asarray(weight, float)
    c = np.asarray(click, float)
    cells, at = impression_cells(position, item, n_positions) if cells is None else cells
    clicked = np.bincount(at, weights=w * c, minlength=len(cells))
    unclicked = np.bincount(at, weights=w * (1 - c), minlength=len(cells))
    c_item, c_pos = cells // n_positions, cells % n_positions
    shown = clicked + unclicked
    per_pos = np.bincount(c_pos, weights=shown, minlength=n_positions)
    per_item = np.bincount(c_item, weights=shown, minlength=n_items)
    total = max(float(shown.sum()), 1e-12)
    if start is None:
        theta = np.full(n_positions, 0.5)
        rate = np.bincount(c_item, weights=clicked, minlength=n_items) / np.maximum(per_item, 1e-12)
        gamma = np.clip(2 * rate, 0.01, 0.95)
    else:
        theta, gamma = (np.array(a, float) for a in start)
    for _ in range(iterations):
        t, g = theta[c_pos], gamma[c_item]
        miss = np.maximum(1 - t * g, 1e-12)
        examined = clicked + unclicked * t * (1 - g) / miss
        attracted = clicked + unclicked * g * (1 - t) / miss
        theta = np.where(per_pos > 0, np.bincount(c_pos, weights=examined, minlength=n_positions)
                         / np.maximum(per_pos, 1e-12), theta)
        mean = float(attracted.sum() / total)
        gamma = np.where(per_item > 0, (np.bincount(c_item, weights=attracted, minlength=n_items)
                                        + prior_strength * mean) / (per_item + prior_strength), gamma)
    return np.clip(theta, 1e-6, 1.0), np.clip(gamma, 1e-6, 1.0)


def fit_pbm_reference(position: np.ndarray, item: np.ndarray, click: np.ndarray, n_positions: int,
            n_items: int, weight: np.ndarray | None = None, iterations: int = 100,
            start: tuple[np.ndarray, np.ndarray] | None = None,
            prior_strength: float = PRIOR_STRENGTH) -> tuple[np.ndarray, np.ndarray]:
    """`fit_pbm`, impression by impression: the slow reference the tests compare it with."""
    w = np.ones(len(click)) if weight is None else np.asarray(weight, float)
    c = np.asarray(click, float)
    per_pos = np.bincount(position, weights=w, minlength=n_positions)
    per_item = np.bincount(item, weights=w, minlength=n_items)
    if start is None:
        theta = np.full(n_positions, 0.5)
        rate = np.bincount(item, weights=w * c, minlength=n_items) / np.maximum(per_item, 1e-12)
        gamma = np.clip(2 * rate, 0.01, 0.95)
    else:
        theta, gamma = (np.array(a, float) for a in start)
    for _ in range(iterations):
        t, g = theta[position], gamma[item]
        miss = np.maximum(1 - t * g, 1e-12)
        examined = np.where(c > 0, 1.0, t * (1 - g) / miss)
        attracted = np.where(c > 0, 1.0, g * (1 - t) / miss)
        theta = np.where(per_pos > 0, np.bincount(position, weights=w * examined, minlength=n_positions)
                         / np.maximum(per_pos, 1e-12), theta)
        mean = float(np.sum(w * attracted) / max(np.sum(w), 1e-12))
        gamma = np.where(per_item > 0, (np.bincount(item, weights=w * attracted, minlength=n_items)
                                        + prior_strength * mean) / (per_item + prior_strength), gamma)
    return np.clip(theta, 1e-6, 1.0), np.clip(gamma, 1e-6, 1.0)


def shrunk_appeal(theta: np.ndarray, position: np.ndarray, item: np.ndarray, click: np.ndarray,
                  n_items: int, weight: np.ndarray | None = None) -> np.ndarray:
    """Each item's appeal as an empirical-Bayes posterior mean: clicks_i ~ Poisson(gamma_i *
    E_i), E_i = the examination its impressions got (sum of theta), gamma ~ Gamma(a, b) with
    a, b matched to the mean and the spread of the items' raw rates less their Poisson noise
    (Efron, "Tweedie's formula and selection bias", JASA 2011). Posterior means stay
    calibrated when the items are chosen *because* of their clicks — and a configuration's
    models have learned from the logged clicks, so they favour the items that were lucky in
    the logs; raw rates would overrate exactly those (the winner's curse)."""
    w = np.ones(len(click)) if weight is None else weight
    exam = np.bincount(item, weights=w * theta[position], minlength=n_items)
    clicks = np.bincount(item, weights=w * click, minlength=n_items)
    seen = exam > 0
    mean = clicks[seen].sum() / max(exam[seen].sum(), 1e-12)
    share = exam[seen] / max(exam[seen].sum(), 1e-12)
    spread = np.sum(share * (clicks[seen] / exam[seen] - mean) ** 2) - mean * np.sum(share / exam[seen])
    spread = max(spread, 1e-4 * mean * mean)  # no spread beyond the noise: shrink (almost) fully
    rate = mean / max(spread, 1e-12)
    return (clicks + mean * rate) / (exam + rate)


def recaller_appeal(theta: np.ndarray, position: np.ndarray, source: np.ndarray, click: np.ndarray,
                    n_sources: int, weight: np.ndarray | None = None) -> np.ndarray:
    """Each recaller's mean appeal: its clicks over its impressions' examination, sum of
    clicks / sum of theta (the ratio estimator of gamma for "an item this recaller shows")."""
    w = np.ones(len(click)) if weight is None else weight
    clicks = np.bincount(source, weights=w * click, minlength=n_sources)
    exam = np.bincount(source, weights=w * theta[position], minlength=n_sources)
    overall = float(np.sum(w * click) / max(np.sum(w * theta[position]), 1e-12))
    return np.where(exam > 0, clicks / np.maximum(exam, 1e-12), overall)


def theta_at(theta: np.ndarray, position: np.ndarray) -> np.ndarray:
    """theta at `position`; past the deepest logged position, the deepest one's."""
    return theta[np.minimum(position, len(theta) - 1)]


def slot_click_rates(theta: np.ndarray, gamma: np.ndarray, source_gamma: np.ndarray,
                     overall_gamma: float, new: NewLists) -> np.ndarray:
    """Predicted click probability of each slot of the new lists: theta_k * gamma_i, with a
    never-shown item's appeal taken from its recaller (or the overall mean)."""
    appeal = np.where(new.item >= 0, gamma[np.maximum(new.item, 0)],
                      np.where(new.source >= 0, source_gamma[np.maximum(new.source, 0)], overall_gamma))
    return theta_at(theta, new.position) * appeal


def matched_slots(log: LoggedImpressions, new: NewLists) -> tuple[np.ndarray, np.ndarray]:
    """(index into the new slots, index into the logged impressions) of every slot whose
    item the same request's logged list also showed."""
    key_log = log.request.astype(np.int64) * (log.n_items + 1) + log.item
    key_new = new.request.astype(np.int64) * (log.n_items + 1) + new.item
    order = np.argsort(key_log, kind="stable")
    found = np.searchsorted(key_log[order], key_new)
    found = np.minimum(found, len(order) - 1)
    hit = (new.item >= 0) & (len(order) > 0) & (key_log[order][found] == key_new)
    return np.flatnonzero(hit), order[found[hit]]


@dataclass
class Estimate:
    """Point values and 95% bootstrap intervals (clicks per impression)."""

    logged_ctr: float
    logged_interval: tuple[float, float]
    ctr: float
    interval: tuple[float, float]
    difference: float  # ctr minus the model's CTR of the logged lists (its bias cancels)
    difference_interval: tuple[float, float]
    matched_ctr: float | None
    matched_interval: tuple[float, float] | None
    matched_share: float
    support: float
    position_mixing: float
    theta: np.ndarray  # relative examination, theta[0] = 1
    slot_rates: np.ndarray  # predicted click probability of each new slot
    evidence: np.ndarray  # bool per new slot: its item was shown MIN_SHOWN+ times
    clicks: int
    impressions: int
    bootstraps: int


def _point(log: LoggedImpressions, new: NewLists, n_positions: int, req_w: np.ndarray,
           matched: tuple[np.ndarray, np.ndarray], cells: tuple[np.ndarray, np.ndarray],
           start=None, iterations: int = 100):
    w = req_w[log.request]
    theta, gamma = fit_pbm(log.position, log.item, log.click, n_positions, log.n_items, w,
                           iterations, start, cells=cells)
    appeal = shrunk_appeal(theta, log.position, log.item, log.click, log.n_items, w)
    src = recaller_appeal(theta, log.position, log.source, log.click, log.n_sources, w)
    overall = float(np.sum(w * log.click) / max(np.sum(w * theta[log.position]), 1e-12))
    rates = slot_click_rates(theta, appeal, src, overall, new)
    nw = req_w[new.request]
    ctr = float(np.sum(nw * rates) / max(np.sum(nw), 1e-12))
    logged = float(np.sum(w * log.click) / max(np.sum(w), 1e-12))
    modelled = float(np.sum(w * theta[log.position] * appeal[log.item]) / max(np.sum(w), 1e-12))
    slots, rows = matched
    mw = req_w[new.request[slots]]
    if np.sum(mw) > 0:
        ratio = theta_at(theta, new.position[slots]) / theta[log.position[rows]]
        matched_ctr = float(np.sum(mw * log.click[rows] * ratio) / np.sum(mw))
    else:
        matched_ctr = None
    return theta, gamma, ctr, logged, modelled, matched_ctr, rates


def _interval(values: list[float]) -> tuple[float, float]:
    lo, hi = np.percentile(np.asarray(values, float), [2.5, 97.5])
    return float(lo), float(hi)


def estimate(log: LoggedImpressions, new: NewLists, bootstraps: int = 200,
             seed: int = 0) -> Estimate:
    """The new lists' CTR on the logged requests, its interval, and the evidence behind it."""
    n_requests = len(log.cluster)
    if len(log.click) == 0 or len(new.item) == 0:
        raise ValueError("replay needs logged impressions and at least one new list")
    n_positions = int(max(log.position.max(), 0)) + 1
    pairs = matched_slots(log, new)
    cells = impression_cells(log.position, log.item, n_positions)
    theta, gamma, ctr, logged, modelled, matched, rates = _point(log, new, n_positions,
                                                                 np.ones(n_requests), pairs, cells)
    clusters, cluster_of = np.unique(log.cluster, return_inverse=True)
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {"ctr": [], "logged": [], "diff": [], "matched": []}
    for _ in range(bootstraps):
        drawn = np.bincount(rng.integers(0, len(clusters), len(clusters)), minlength=len(clusters))
        req_w = drawn[cluster_of].astype(float)
        _, _, b_ctr, b_logged, b_modelled, b_matched, _ = _point(
            log, new, n_positions, req_w, pairs, cells, (theta, gamma), iterations=30)
        boot["ctr"].append(b_ctr)
        boot["logged"].append(b_logged)
        boot["diff"].append(b_ctr - b_modelled)
        if b_matched is not None:
            boot["matched"].append(b_matched)
    shown = np.bincount(log.item, minlength=log.n_items)
    evidence = (new.item >= 0) & (shown[np.maximum(new.item, 0)] >= MIN_SHOWN)
    positions_per_item = np.zeros(log.n_items, int)
    seen_at = np.unique(np.stack([log.item, log.position]), axis=1)
    np.add.at(positions_per_item, seen_at[0], 1)
    return Estimate(
        logged_ctr=logged, logged_interval=_interval(boot["logged"]) if bootstraps else (logged, logged),
        ctr=ctr, interval=_interval(boot["ctr"]) if bootstraps else (ctr, ctr),
        difference=ctr - modelled,
        difference_interval=_interval(boot["diff"]) if bootstraps else (ctr - modelled,) * 2,
        matched_ctr=matched,
        matched_interval=_interval(boot["matched"]) if boot["matched"] else None,
        matched_share=len(pairs[0]) / len(new.item),
        support=float(np.mean(evidence)),
        position_mixing=float(np.mean(positions_per_item[log.item] >= 2)),
        theta=theta / theta[0], slot_rates=rates, evidence=evidence,
        clicks=int(log.click.sum()), impressions=len(log.click), bootstraps=bootstraps)


def verdict(est: Estimate) -> tuple[str, list[str]]:
    """("higher" | "lower" | "no clear difference" | "too thin", the reasons for too thin)."""
    reasons = []
    if est.support < MIN_SUPPORT:
        reasons.append(f"only {est.support:.0%} of the new lists' items were shown at least "
                       f"{MIN_SHOWN} times in the logs (needs {MIN_SUPPORT:.0%})")
    if est.clicks < MIN_CLICKS:
        reasons.append(f"the logs hold {est.clicks} clicks (needs {MIN_CLICKS})")
    if est.position_mixing < MIN_POSITION_MIXING:
        reasons.append(f"only {est.position_mixing:.0%} of impressions show an item also seen at "
                       f"another position, so position effects cannot be told from item appeal")
    lo, hi = est.difference_interval
    if not reasons and lo <= 0 <= hi and (hi - lo) / 2 > PRECISION * est.logged_ctr:
        reasons.append(f"the 95% interval of the difference ({lo:+.4f} to {hi:+.4f}) contains 0 "
                       f"and is wider than ±{PRECISION:.0%} of the logged CTR")
    if reasons:
        return "too thin", reasons
    if lo > 0:
        return "higher", []
    if hi < 0:
        return "lower", []
    return "no clear difference", []
