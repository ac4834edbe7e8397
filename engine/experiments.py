"""A/B experiments: two or more pipeline configurations ("arms") served side by side, each
to its share of the shoppers, and a report that says which sells more.

    shelfwise experiment start home-popular --arm control= --arm variant=variant.toml \\
        --split 50/50 --placement home

An arm is a TOML file in shelfwise.toml's format holding only what may differ between arms:

    rules_placement = "promo"     # optional: the merchandising rules of this placement apply
    [pipeline]                    # serving fields of [pipeline], over the shop's own
    recallers = { popular = 100 }
    ranker = "fusion"
    diversity = 0.3

`control=` (no file) is the shop's configuration as it is. An arm's [pipeline] fields
replace the shop's for that arm; the fields it does not name keep the shop's values.
Not per arm, and refused in an arm file: [plugins.X], [events] and [store] (they shape
training and the stored models, which all arms share, loaded once) and the training-only
[pipeline] fields (TRAINING_FIELDS). Rules are per placement (engine.merchandising), so an
arm that should have other rules names a placement whose rules it takes (`rules_placement`).

Assignment: sha256(experiment name, shopper id) as a number in [0, 1), against the
cumulative split: a shopper always sees the same arm, and experiments split independently
of each other. A request without a shopper id is served the shop's configuration (what
control= is) and not counted. A request that names its own recallers or ranker is served
what it asked for, out of the experiment. An experiment covers the requests of its placement; one without a
placement covers every placement, so it runs alone. At most one experiment runs per
placement.

The report (ExperimentReport) treats the shopper as the unit: a shopper's impressions and
clicks are correlated, so rates are ratios of per-shopper sums (clicked impressions /
impressions, summed over shoppers) with delta-method 95% intervals over shoppers, and
revenue per shopper is a mean with a normal interval. The probability that an arm beats
the first arm (control) is the normal approximation on the difference of the two
estimates: P = Phi(diff / sqrt(se_a^2 + se_control^2)). Clicks, carts, conversions and
revenue are those of engine.store.attribution."""

from __future__ import annotations

import hashlib
import math
import re
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pydantic import ValidationError

from .config import PipelineSettings, Settings
from .errors import EngineError
from .lineup import Lineup
from .store import experiments as stored

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
TRAINING_FIELDS = {"encoder", "validation_share", "validation_users", "validation_windows",
                   "min_interactions", "seed"}
NOT_PER_ARM = {
    "plugins": "component settings shape the trained models, which every arm shares",
    "events": "event weights shape training, and every arm shares the trained models",
    "store": "storage settings are the shop's, not an arm's",
}
ARM_KEYS = ("pipeline", "rules_placement")
METRICS = ("ctr", "cart_rate", "conversion_rate", "revenue_per_shopper")
Z95 = 1.959963984540054
FEW_SHOPPERS = 100  # below this many shoppers in an arm, the report says the intervals are rough


class ExperimentError(EngineError):
    title = "Experiment error"


# -- arms ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arm:
    """One arm: its name, its share of the shoppers (0-1), the [pipeline] fields it sets
    over the shop's, the placement whose rules it takes (None: the request's), and the
    file it was read from with its text (None and "" for the shop's own configuration)."""

    name: str
    share: float
    pipeline: dict[str, Any] = field(default_factory=dict)
    rules_placement: str | None = None
    file: str | None = None
    text: str = ""

    @property
    def is_shop_config(self) -> bool:
        return not self.pipeline and self.rules_placement is None

    def describe(self) -> str:
        if self.is_shop_config:
            return "the shop's configuration"
        parts = [f"{k} = {v!r}" for k, v in self.pipeline.items()]
        if self.rules_placement is not None:
            parts.append(f"rules of placement {self.rules_placement!r}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Experiment:
    name: str
    placement: str  # "": every placement
    arms: tuple[Arm, ...]
    split: str
    started_at: float
    stopped_at: float | None = None
    winner: str | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> "Experiment":
        return cls(row["name"], row["placement"] or "", tuple(Arm(**a) for a in row["arms"]),
                   row["split"], row["started_at"], row["stopped_at"], row["winner"] or None)

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def covers(self, placement: str) -> bool:
        return not self.placement or self.placement == (placement or "")

    def arm_for(self, user_id: str | None) -> Arm:
        """The shopper's arm (stable); the first arm for None (serving gives a request without
        a shopper id the shop's configuration instead, uncounted: Experiments.assign)."""
        if user_id is None:
            return self.arms[0]
        u = bucket(self.name, user_id)
        edge = 0.0
        for arm in self.arms:
            edge += arm.share
            if u < edge:
                return arm
        return self.arms[-1]  # rounding at the top edge

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ExperimentError(f"Experiment {self.name!r} has no arm {name!r}. Its arms: "
                              f"{', '.join(a.name for a in self.arms)}.", title="Unknown arm")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "placement": self.placement, "split": self.split,
                "started_at": self.started_at, "stopped_at": self.stopped_at,
                "running": self.running, "winner": self.winner,
                "arms": [a.to_dict() for a in self.arms]}


def bucket(experiment: str, user_id: str) -> float:
    """A shopper's place in [0, 1) for one experiment: the first 8 bytes of
    sha256(experiment NUL user_id) over 2**64."""
    digest = hashlib.sha256(f"{experiment}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def parse_split(split: str | None, n_arms: int) -> list[float]:
    """'50/50', '90/10', '34/33/33' -> shares summing to 1; None: equal shares."""
    if not split:
        return [1.0 / n_arms] * n_arms
    parts = split.split("/")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) != n_arms or any(not math.isfinite(x) or x <= 0 for x in numbers) \
            or abs(sum(numbers) - 100) > 1e-6:
        raise ExperimentError(f"--split {split!r}: expected {n_arms} positive percentages, one per "
                              f"arm in the order of --arm, separated by '/' and summing to 100 "
                              f"(e.g. {'/'.join(['50', '50'] if n_arms == 2 else [f'{100 / n_arms:g}'] * n_arms)}).",
                              title="Invalid split")
    return [x / 100 for x in numbers]


def parse_arm_spec(spec: str) -> tuple[str, str | None]:
    """'control=' -> ('control', None); 'variant=variant.toml' -> ('variant', 'variant.toml')."""
    name, eq, path = spec.partition("=")
    name = name.strip()
    if not eq or not NAME.match(name):
        raise ExperimentError(f"--arm {spec!r}: expected NAME=CONFIG.toml, or NAME= for the shop's "
                              f"own configuration; NAME uses letters, digits and . _ - "
                              f"(e.g. --arm control= --arm variant=variant.toml).", title="Invalid arm")
    return name, path.strip() or None


def read_arm(name: str, path: str | None, share: float, engine: Engine) -> Arm:
    """An arm from its file, validated: TOML syntax, only per-arm settings, [pipeline] fields
    of the right type, installed and trained recallers and ranker."""
    if path is None:
        return Arm(name, share)
    file = Path(path)
    if not file.is_file():
        raise ExperimentError(f"Arm {name!r}: there is no file {path}. Give a TOML file in "
                              f"shelfwise.toml's format, or {name}= for the shop's own configuration.",
                              title="Invalid arm")
    text = file.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{path}: not valid TOML: {exc}.", title="Invalid arm") from exc
    for key in raw:
        if key in NOT_PER_ARM:
            raise ExperimentError(f"{path}: [{key}] is not per arm: {NOT_PER_ARM[key]}. Remove it "
                                  f"(it belongs in shelfwise.toml).", title="Invalid arm")
        if key not in ARM_KEYS:
            raise ExperimentError(f"{path}: unknown setting {key!r}. An arm file may hold "
                                  f"[pipeline] and rules_placement = \"PLACEMENT\".", title="Invalid arm")
    pipeline = raw.get("pipeline", {})
    if not isinstance(pipeline, dict):
        raise ExperimentError(f"{path}: pipeline: expected a [pipeline] table.", title="Invalid arm")
    training = sorted(TRAINING_FIELDS & set(pipeline))
    if training:
        raise ExperimentError(f"{path}: [pipeline] {training[0]}: used at training, which every arm "
                              f"shares; not per arm. Per-arm fields: "
                              f"{', '.join(sorted(set(PipelineSettings.model_fields) - TRAINING_FIELDS))}.",
                              title="Invalid arm")
    try:
        PipelineSettings(**pipeline)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        got = f" (got {first['input']!r})" if first["type"] != "extra_forbidden" else ""
        what = "unknown field" if first["type"] == "extra_forbidden" else \
            first["msg"].removeprefix("Value error, ")
        raise ExperimentError(f"{path}: [pipeline] {where}: {what}{got}. Fields: "
                              f"{', '.join(sorted(set(PipelineSettings.model_fields) - TRAINING_FIELDS))}.",
                              title="Invalid arm") from exc
    rules = raw.get("rules_placement")
    if rules is not None and (not isinstance(rules, str) or not NAME.match(rules)):
        raise ExperimentError(f"{path}: rules_placement: expected a placement name (letters, digits "
                              f"and . _ -), got {rules!r}.", title="Invalid arm")
    arm = Arm(name, share, dict(pipeline), rules, str(file.resolve()), text)
    _check_trained(arm, path, engine)
    return arm


def _check_trained(arm: Arm, path: str, engine: Engine) -> None:
    """Every recaller and the ranker an arm names is installed and has a trained model."""
    ranker = arm.pipeline.get("ranker")
    named = [("recallers", "recallers", name) for name in arm.pipeline.get("recallers") or {}]
    named += [("rankers", "ranker", ranker)] if ranker else []
    for kind, key, name in named:
        try:
            engine.registry.component(kind, name)
        except EngineError as exc:
            raise ExperimentError(f"{path}: [pipeline] {key}: {exc}", title="Invalid arm") from exc
        if engine.serving.fitted(kind, name) is None:
            raise ExperimentError(f"{path}: [pipeline] {key}: {name!r} has no trained model, "
                                  f"so this arm could not serve it. Run \"shelfwise train\" first.",
                                  title="Invalid arm")


def arm_settings(shop: Settings, arm: Arm) -> Settings:
    """The shop's settings with the arm's [pipeline] fields over its own."""
    merged = PipelineSettings(**{**shop.pipeline.model_dump(), **arm.pipeline})
    return shop.model_copy(update={"pipeline": merged})


# -- serving ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Assigned:
    """The arm one request is served: its experiment, its lineup (recallers, quotas, ranker,
    re-rank settings) and the placement whose merchandising rules apply."""

    experiment: str
    arm: str
    lineup: Lineup
    rules_placement: str


class Experiments:
    """The experiments of one Engine: started, stopped, listed; the running ones kept in
    memory with one Lineup per arm over the engine's Serving (the models are shared and
    loaded once), in step with the database (another process may start or stop one)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._running: list[Experiment] | None = None
        self._lineups: dict[tuple[str, str], Lineup] = {}
        self._version: int | None = None
        self._mark: tuple | None = None

    def sync(self) -> None:
        version = self.engine.store.data_version()
        if version != self._version:
            self._version = version
            mark = stored.experiments_mark(self.engine.db)
            if mark != self._mark:
                self._changed(mark)

    def _changed(self, mark: tuple | None = None) -> None:
        self._mark = mark
        self._running = None
        self._lineups.clear()
        self.engine.serving.cache.clear()  # lists answered under the old arms

    def running(self) -> list[Experiment]:
        if self._running is None:
            self._running = [Experiment.of(r) for r in stored.experiments(self.engine.db, running_only=True)]
        return self._running

    def assign(self, placement: str, user_id: str | None) -> Assigned | None:
        """The arm this request is served (None: no experiment covers its placement, or the
        request has no shopper id — it gets the shop's configuration, uncounted)."""
        if user_id is None:
            return None
        for exp in self.running():
            if exp.covers(placement):
                arm = exp.arm_for(user_id)
                rules = placement if arm.rules_placement is None else arm.rules_placement
                return Assigned(exp.name, arm.name, self.lineup(exp, arm), rules)
        return None

    def lineup(self, exp: Experiment, arm: Arm) -> Lineup:
        if not arm.pipeline:
            return self.engine.lineup
        key = (exp.name, arm.name)
        if key not in self._lineups:
            eng = self.engine
            self._lineups[key] = Lineup(eng.registry, arm_settings(eng.settings, arm), eng.serving, eng.make,
                                                    vectors=eng.vectors)
        return self._lineups[key]

    # -- the shop owner's actions ----------------------------------------------------------

    def start(self, name: str, arms: Sequence[str], split: str | None = None,
              placement: str = "") -> Experiment:
        if not NAME.match(name or ""):
            raise ExperimentError(f"Experiment name {name!r}: use 1-64 letters, digits and . _ -.",
                                  title="Invalid experiment")
        if placement and not NAME.match(placement):
            raise ExperimentError(f"--placement {placement!r}: use letters, digits and . _ -.",
                                  title="Invalid experiment")
        specs = [parse_arm_spec(s) for s in arms]
        if len(specs) < 2:
            raise ExperimentError("An experiment needs at least two arms, e.g. --arm control= "
                                  "--arm variant=variant.toml.", title="Invalid experiment")
        names = [n for n, _ in specs]
        if len(set(names)) != len(names):
            raise ExperimentError(f"Arm names must differ: {', '.join(names)}.", title="Invalid experiment")
        shares = parse_split(split, len(specs))
        read = [read_arm(n, p, s, self.engine) for (n, p), s in zip(specs, shares)]
        split_text = "/".join(f"{s * 100:g}" for s in shares)
        db = self.engine.db
        with db.atomic():
            if stored.experiment(db, name) is not None:
                raise ExperimentError(f"An experiment named {name!r} exists already (see \"shelfwise "
                                      f"experiment list\"); choose another name.", title="Invalid experiment")
            for row in stored.experiments(db, running_only=True):
                other = Experiment.of(row)
                if not placement or not other.placement or other.placement == placement:
                    where = f"placement {other.placement!r}" if other.placement else "every placement"
                    this = "" if placement else " (without --placement this one would cover every placement)"
                    raise ExperimentError(
                        f"Experiment {other.name!r} is running on {where}{this}: at most one "
                        f"experiment runs per placement. Stop it first (\"shelfwise experiment stop "
                        f"{other.name}\") or choose another --placement.", title="Experiment running")
            row = stored.add_experiment(db, name, placement, [a.to_dict() for a in read], split_text)
        self._changed()
        return Experiment.of(row)

    def get(self, name: str) -> Experiment:
        row = stored.experiment(self.engine.db, name)
        if row is None:
            known = [r["name"] for r in stored.experiments(self.engine.db)]
            raise ExperimentError(f"No experiment named {name!r}. "
                                  + (f"Experiments: {', '.join(known)}." if known else
                                     "None started yet: \"shelfwise experiment start\"."),
                                  title="Unknown experiment")
        return Experiment.of(row)

    def listed(self) -> list[Experiment]:
        return [Experiment.of(r) for r in stored.experiments(self.engine.db)]

    def stop(self, name: str, winner: str | None = None) -> Experiment:
        exp = self.get(name)
        if not exp.running:
            raise ExperimentError(f"Experiment {name!r} was stopped already"
                                  + (f" (winner: {exp.winner})." if exp.winner else "."),
                                  title="Experiment stopped")
        if winner is not None:
            exp.arm(winner)
        with self.engine.db.atomic():
            stored.stop_experiment(self.engine.db, name, winner)
        self._changed()
        return self.get(name)

    def report(self, name: str) -> ExperimentReport:
        exp = self.get(name)
        rows = stored.shopper_counts(self.engine.db, name)
        return build_report(exp, rows)


# -- the report ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """A rate or mean with its 95% interval (and standard error)."""

    value: float
    low: float
    high: float
    se: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in asdict(self).items()}

    def text(self, metric: str, signed: bool = False) -> str:
        """As the views show it: "10.02% [9.61, 10.43]" for a rate, "+5.01 pt [...]" for a
        difference of rates (percentage points), "12.50 [...]" for revenue."""
        sign = "+" if signed else ""
        if metric == "revenue_per_shopper":
            return f"{self.value:{sign}.2f} [{self.low:{sign}.2f}, {self.high:{sign}.2f}]"
        unit = " pt" if signed else "%"
        return f"{100 * self.value:{sign}.2f}{unit} [{100 * self.low:{sign}.2f}, {100 * self.high:{sign}.2f}]"


@dataclass(frozen=True)
class Comparison:
    """An arm against the first arm (control) on one metric: the difference (arm - control)
    with its 95% interval, the relative lift (None when control's value is 0), and the
    probability that the arm's true value is higher (normal approximation)."""

    difference: Estimate
    lift: float | None
    prob_better: float

    def to_dict(self) -> dict[str, Any]:
        return {"difference": self.difference.to_dict(),
                "lift": None if self.lift is None else round(self.lift, 6),
                "prob_better": round(self.prob_better, 6)}


@dataclass(frozen=True)
class ArmReport:
    arm: str
    share: float
    config: str  # the arm in words
    shoppers: int
    impressions: int
    lists: int
    clicks: int
    carts: int
    purchases: int
    revenue: float
    metrics: dict[str, Estimate]
    vs_control: dict[str, Comparison] | None  # None for control itself

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("arm", "share", "config", "shoppers", "impressions",
                                              "lists", "clicks", "carts", "purchases")}
        out["revenue"] = round(self.revenue, 2)
        out["metrics"] = {k: v.to_dict() for k, v in self.metrics.items()}
        out["vs_control"] = None if self.vs_control is None else \
            {k: v.to_dict() for k, v in self.vs_control.items()}
        return out


@dataclass(frozen=True)
class ExperimentReport:
    experiment: Experiment
    arms: list[ArmReport]
    method: str
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        exp = self.experiment.to_dict()
        exp["arms"] = [{k: a[k] for k in ("name", "share", "file", "pipeline", "rules_placement")}
                       for a in exp["arms"]]
        return {"experiment": exp, "arms": [a.to_dict() for a in self.arms],
                "method": self.method, "notes": self.notes}


METHOD = ("Unit: the shopper. Rates are per impression, as ratios of per-shopper sums, with "
          "delta-method 95% intervals over shoppers; revenue per shopper is a mean with a normal "
          "95% interval. prob_better: P(arm > control) by a normal approximation on the difference.")


def ratio(ys: Sequence[float], xs: Sequence[float]) -> Estimate:
    """sum(y) / sum(x) over shoppers, with the delta-method (linearised) standard error
    sqrt(m / (m - 1) * sum((y - R x)^2)) / sum(x). With x = 1 it is a mean and its usual
    standard error."""
    m, sx = len(xs), float(sum(xs))
    if m == 0 or sx == 0:
        return Estimate(0.0, 0.0, 0.0, 0.0)
    r = sum(ys) / sx
    if m < 2:
        return Estimate(r, r, r, 0.0)
    se = math.sqrt(m / (m - 1) * sum((y - r * x) ** 2 for y, x in zip(ys, xs))) / sx
    return Estimate(r, r - Z95 * se, r + Z95 * se, se)


def compare(arm: Estimate, control: Estimate) -> Comparison:
    diff = arm.value - control.value
    se = math.sqrt(arm.se ** 2 + control.se ** 2)
    if se > 0:
        prob = 0.5 * (1 + math.erf(diff / se / math.sqrt(2)))
    else:
        prob = 0.5 if diff == 0 else float(diff > 0)
    lift = diff / control.value if control.value else None
    return Comparison(Estimate(diff, diff - Z95 * se, diff + Z95 * se, se), lift, prob)


def build_report(exp: Experiment, rows: Sequence[tuple]) -> ExperimentReport:
    """Per arm, from (arm, user, impressions, lists, clicks, carts, purchases, revenue) per
    shopper (store.experiments.shopper_counts)."""
    by_arm: dict[str, list[tuple]] = {a.name: [] for a in exp.arms}
    for row in rows:
        by_arm.setdefault(row[0], []).append(row)
    metrics: dict[str, dict[str, Estimate]] = {}
    for name, shoppers in by_arm.items():
        n = [r[2] for r in shoppers]
        metrics[name] = {
            "ctr": ratio([r[4] for r in shoppers], n),
            "cart_rate": ratio([r[5] for r in shoppers], n),
            "conversion_rate": ratio([r[6] for r in shoppers], n),
            "revenue_per_shopper": ratio([r[7] for r in shoppers], [1] * len(shoppers)),
        }
    control = exp.arms[0].name
    out, notes = [], []
    for arm in exp.arms:
        shoppers = by_arm[arm.name]
        vs = None if arm.name == control else \
            {k: compare(metrics[arm.name][k], metrics[control][k]) for k in METRICS}
        out.append(ArmReport(arm.name, arm.share, arm.describe(), len(shoppers),
                             sum(r[2] for r in shoppers), sum(r[3] for r in shoppers),
                             sum(r[4] for r in shoppers), sum(r[5] for r in shoppers),
                             sum(r[6] for r in shoppers), float(sum(r[7] for r in shoppers)),
                             metrics[arm.name], vs))
        if len(shoppers) < FEW_SHOPPERS:
            notes.append(f"Arm {arm.name!r} has {len(shoppers)} shoppers: with fewer than "
                         f"{FEW_SHOPPERS} the intervals are rough; let it run longer.")
    if exp.running:
        days = (time.time() - exp.started_at) / 86400
        if days < 7:
            notes.append(f"Running for {days:.1f} days: shopping differs by weekday; a week at "
                         f"least gives fairer numbers.")
    return ExperimentReport(exp, out, METHOD, notes)
