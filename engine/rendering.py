"""Candidates as people read them: titles filled in, the items a reason mentions named."""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

from .store import Store
from .types import Candidate, Item, Recommendation

MENTION = re.compile(r"\[\[(.+?)\]\]")  # a reason names an item as [[item_id]]


def items_named(store: Store, cands: Iterable[Candidate]) -> dict[str, Item]:
    """The catalogue entries of the candidates and of the items their reasons mention."""
    wanted: dict[str, None] = {}
    for c in cands:
        wanted[c.item_id] = None
        wanted.update(dict.fromkeys(MENTION.findall(c.reason)))
    return store.items(list(wanted))


def render(store: Store, cands: Sequence[Candidate], ranker: str | None,
           items: Mapping[str, Item] | None = None) -> list[Recommendation]:
    """Candidates as the views show them. `items`: their catalogue entries, if already read
    (`items_named`, once for a whole batch)."""
    items = items_named(store, cands) if items is None else items

    def name(match: re.Match) -> str:
        it = items.get(match.group(1))
        return f"“{it.title}”" if it and it.title else f"item {match.group(1)}"

    out = []
    for rank, c in enumerate(cands, start=1):
        it = items.get(c.item_id) or Item(c.item_id)
        out.append(Recommendation(
            item_id=c.item_id, title=it.title, score=c.score, rank=rank, source=c.source,
            reason=MENTION.sub(name, c.reason), sources=tuple(sorted(c.ranks, key=c.ranks.get)),
            ranker=ranker or "", category=it.category, price=it.price))
    return out
