"""The shop owner's side of the Engine facade: merchandising rules, A/B experiments and their
offline replay, what was shown and what shoppers did with it (attribution), API keys, and a
shopper's data (access and erasure).

`Engine` inherits these methods; they delegate to engine.merchandising, engine.experiments,
engine.erasure and the store layer (engine.store.attribution, engine.store.apikeys)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from . import erasure
from .errors import EngineError
from .merchandising import Rule
from .store import apikeys, attribution
from .types import Recommendation

if TYPE_CHECKING:
    from .experiments import Experiment, ExperimentReport, Experiments
    from .merchandising import Merchandising
    from .store import Store


class ShopControls:
    db: Any  # sqlite_utils.Database
    merch: Merchandising
    abtests: Experiments
    store: Store

    def add_rule(self, kind: str, item_id: str | None = None, position: int | None = None,
                 where: str | None = None, weight: float | None = None, placement: str | None = "",
                 category: str | None = None, until: Any = None) -> Rule:
        """Store a merchandising rule (engine.merchandising): pin ITEM at `position`, boost or
        bury what `where` matches by `weight` places, or filter it out; optionally only for
        one `placement` (and, for pins, lists of one `category`), until a date. It applies
        from the next request, without a retrain."""
        return self.merch.add(kind, item_id, position, where, weight, placement, category, until)

    def rules(self, placement: str | None = None) -> list[Rule]:
        """Every rule with its status now: active, expired, or not shown (a pin whose item is
        out of stock, not in the catalogue, or of another category than its lists)."""
        self.merch.sync()
        return self.merch.listed(placement=placement)

    def remove_rule(self, rule_id: int) -> Rule:
        """Remove a rule; lists stop following it from the next request."""
        return self.merch.remove(rule_id)

    # -- A/B experiments ------------------------------------------------------------------

    def start_experiment(self, name: str, arms: Sequence[str], split: str | None = None,
                         placement: str = "") -> Experiment:
        """Start serving arms side by side (engine.experiments): `arms` as "NAME=CONFIG.toml"
        or "NAME=" (the shop's configuration), the first being control; `split` "50/50"
        (default: equal shares); `placement` "" covers every placement. Each arm file is
        validated first."""
        return self.abtests.start(name, arms, split, placement)

    def experiments(self) -> list[Experiment]:
        """Every experiment, running or stopped, newest first."""
        return self.abtests.listed()

    def experiment_report(self, name: str) -> ExperimentReport:
        """Per arm: shoppers, impressions, CTR, add-to-cart and conversion rates, revenue per
        shopper with 95% intervals, and each arm against control."""
        return self.abtests.report(name)

    def stop_experiment(self, name: str, winner: str | None = None) -> Experiment:
        """Stop serving the arms (every shopper gets the shop's configuration again) and
        record the winner, if named."""
        return self.abtests.stop(name, winner)

    def replay(self, config_path: str | Path, since: str | None = "30d",
               placement: str | None = None, bootstraps: int = 200, seed: int = 0):
        """Estimate the click-through rate the configuration in `config_path` would have had
        on the logged impressions, with intervals and a verdict (replay_report.ReplayReport)."""
        from .replay_report import replay

        return replay(self, config_path, since, placement, bootstraps, seed)

    # -- a shopper's data, online measurement, API keys -------------------------------

    def erase_user(self, user_id: str) -> dict[str, Any]:
        """Forget a user (engine.erasure): events, profile, logged impressions, attributed
        events and the shopper's rows in stored models, in one transaction with the rows
        overwritten (`secure_delete`); their cached lists; and the write-ahead log's older
        copies (checkpointed and emptied before this returns)."""
        return erasure.erase_user(self, user_id)

    def user_data(self, user_id: str) -> dict[str, Any]:
        """Everything the database stores about a shopper (a data-access request)."""
        found = self.store.user_data(user_id)
        if found is None:
            raise EngineError(f"Nothing is stored about user {user_id!r}.", title="Unknown user")
        return found

    def log_impressions(self, recs: Sequence[Recommendation], user_id: str | None,
                        placement: str = "") -> str:
        """Record what a response showed; returns the recommendation_id to send events with."""
        return attribution.log_impressions(self.db, recs, user_id, placement)

    def report(self, since: str | float | None = "7d", placement: str | None = None) -> dict[str, Any]:
        """Impressions, click-through, add-to-cart and conversion rates and attributed
        revenue per recaller, ranker, placement and position (see engine.attribution)."""
        start = attribution.parse_since(since) if isinstance(since, str) or since is None else since
        return attribution.report(self.db, start, placement)

    def create_key(self, scope: str, name: str = "") -> dict[str, Any]:
        return apikeys.create_key(self.db, scope, name)

    def keys(self) -> list[dict[str, Any]]:
        return apikeys.list_keys(self.db)

    def revoke_key(self, key_id: int) -> dict[str, Any]:
        return apikeys.revoke_key(self.db, key_id)
