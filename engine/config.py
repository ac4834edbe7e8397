"""Settings: shelfwise.toml (next to the database, or SHELFWISE_CONFIG) over the defaults.

    [pipeline]
    recallers = { als = 200, cooccurrence = 100, popular = 50 }   # name = candidates
    ranker = "fusion"
    exclude_kinds = ["purchase", "rating"]

    [events.weights]
    view = 1
    cart = 4
    purchase = 8

    [plugins.als]
    factors = 64

    [executor]            # where train, evaluate and recommend --all run their batch work
    kind = "ray"          # "local" (default: this process) or "ray" (pip install 'shelfwise[ray]')
    address = "auto"      # Ray's: "auto", "ray://head:10001"; default: a new local instance
    num_cpus = 2          # CPUs of a local Ray instance started here (default: all)
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .dataset import DEFAULT_KIND_WEIGHTS
from .errors import ConfigError


class PipelineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recallers: dict[str, int] | None = Field(
        None, description="recaller name -> candidates per request; default: every installed "
                          "recaller that declares a default quota")
    ranker: str | None = Field(None, description="default: the fitted ranker with the highest priority")
    encoder: str | None = Field(None, description="text encoder for item vectors; default: the installed one with the highest priority")
    exclude_kinds: list[str] = Field(["purchase", "rating"],
                                     description="items the user did this to are not recommended again")
    history: int = Field(200, ge=1, description="most recent events of a user passed to recallers")
    validation_share: float = Field(0.1, gt=0, lt=0.5, description="share of each user's newest items held out for tuning")
    validation_users: int = Field(3000, ge=10, description="at most this many users tune the ranker")
    validation_windows: int = Field(3, ge=1, le=10, description="validation cuts per user: each "
                                    "earlier cut adds a moment per user (recallers fitted again)")
    min_interactions: int = Field(5, ge=2, description="users with fewer distinct items are never held out")
    diversity: float = Field(0.3, description="0 to 1: after ranking, trade the ranker's order for variety by "
                             "maximal marginal relevance over the item vectors (0: the ranker's order; "
                             "0.3, demo shop: NDCG@10 +1.7%, distinct categories in the top 10 4.38 -> 5.18; "
                             "0.5: 6.18 categories, MovieLens-100K NDCG@10 -1.4%)")
    new_item_slots: int = Field(1, ge=0, description="places in each list kept for products nobody has interacted with yet, if a recaller proposed one (demo shop: NDCG@10 -3%, cold-start Recall@10 0 -> 0.026)")
    new_item_position: int = Field(0, ge=0, description="the first of those places, 1-based; 0: the last place of the list")
    seed: int = 0

    @field_validator("diversity")
    @classmethod
    def _diversity_range(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"diversity must be from 0 (the ranker's order) to 1 (variety only), "
                             f"not {value:g}; 0.1 to 0.3 keeps most of the accuracy")
        return value


class EventSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_versions: int = Field(2, ge=1, description="versions kept of each stored model, the "
                               "active one included; older ones are deleted at train and after "
                               "catalogue edits")


class ExecutorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field("local", description="where the batch work of train, evaluate and recommend "
                      "--all runs: local (this process) or ray (a Ray cluster)")
    address: str | None = Field(None, description="the Ray cluster: \"auto\" (the one this machine "
                                "belongs to), \"ray://head:10001\" (Ray Client); default: a new local "
                                "instance, started for the command")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a Ray instance started for the "
                                 "command (default: all)")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in ("local", "ray"):
            raise ValueError(f"kind must be \"local\" (this process) or \"ray\" (a Ray cluster), "
                             f"not {value!r}")
        return value


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)


def load_settings(db_path: str | Path | None = None, path: str | Path | None = None) -> Settings:
    """Read settings from `path`, else $SHELFWISE_CONFIG, else shelfwise.toml beside the db."""
    candidates = [path, os.environ.get("SHELFWISE_CONFIG")]
    if db_path is not None:
        candidates.append(Path(db_path).resolve().parent / "shelfwise.toml")
    for p in candidates:
        if p and Path(p).is_file():
            try:
                raw = tomllib.loads(Path(p).read_text())
                return Settings(**raw)
            except (tomllib.TOMLDecodeError, ValidationError) as exc:
                raise ConfigError(f"{p}: {exc}") from exc
        if p == path and path is not None:
            raise ConfigError(f"Config file {path} does not exist.")
    return Settings()
