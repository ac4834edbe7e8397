"""The catalogue as the serving path sees it: what may be shown, each item's category, and
which products nobody has touched yet (the new-arrival rule's candidates)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CatalogueView:
    available: set[str] = field(default_factory=set)      # in the catalogue and in stock
    categories: dict[str, str] = field(default_factory=dict)  # item -> category ("" if none)
    untouched: set[str] = field(default_factory=set)      # no event yet: new arrivals

    def first_event(self, item_ids) -> None:
        """Items just interacted with are no longer new arrivals."""
        self.untouched.difference_update(item_ids)
