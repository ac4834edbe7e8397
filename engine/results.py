"""What the long jobs answer, typed: `TrainReport` and `EvaluationReport` (and, in the
store, `ImportReport`; `recommend` answers `Recommendation`s). The CLI's `--json`, the
stored run and the HTTP status are each made from `to_dict()`; the objects also read as
that dict (`report["events"]`), for scripts written against the JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class _AsDict:
    """Reads as its `to_dict()` too: report["run_id"], report.get("failed"), "k" in report
    (not a Mapping: a report has a field named `items`)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


def _plain(value: Any) -> Any:
    if isinstance(value, _AsDict):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class RankerChoice:
    serving: str | None           # the ranker that serves after this train
    not_activated: list[str]      # rankers trained but kept inactive (they lost the check)
    why: str                      # in words, for the shop owner


@dataclass(frozen=True, eq=False)
class TrainReport(_AsDict):
    run_id: int
    events: int
    users: int
    items: int
    seconds: dict[str, float]                  # fit time per component
    rankers: dict[str, dict[str, float]]       # each ranker's validation metrics
    failed: dict[str, dict[str, str]]          # component -> {"error", "traceback"}: not saved
    versions: dict[str, int]                   # model name -> the version stored
    ranker: RankerChoice
    kept_models: list[str]                     # failed components whose last good model serves
    vectors: dict[str, Any]                    # encoding and indexing of the catalogue
    total_seconds: float
    pruned: dict[str, int] = field(default_factory=dict)  # old versions deleted, bytes freed
    check_examples: int | None = None          # validation moments no ranker learned from
    candidate_hit_rate: float | None = None    # share of validation moments the candidates cover
    validation_moments: int | None = None
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)  # recallers on trial: joined?


@dataclass(frozen=True, eq=False)
class ModelScores(_AsDict):
    """One evaluated model (a recaller alone, or the whole pipeline): metrics@k over all
    held-out users, the light users, and (when there are any) the cold-start users."""

    name: str
    kind: str                                  # "recaller" or "pipeline"
    metrics: dict[str, float]
    light_users: dict[str, float]
    cold_start: dict[str, float] | None = None
    ranker: str | None = None                  # the pipeline's ranker

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for key in ("cold_start", "ranker"):
            if out[key] is None and not (key == "ranker" and self.kind == "pipeline"):
                del out[key]
        return out


@dataclass(frozen=True, eq=False)
class EvaluationReport(_AsDict):
    run_id: int
    k: int
    results: list[ModelScores]
    users: int                                 # held-out users scored
    cold_start_users: int
    light_users: int
    light_user_max_items: int
    candidate_hit_rate: float | None
    ranker_validation: dict[str, float]
    failed: dict[str, str]                     # component -> error: left out of the evaluation

    def scores(self, name: str) -> ModelScores | None:
        return next((r for r in self.results if r.name == name), None)
