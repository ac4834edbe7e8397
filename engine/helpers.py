"""Small helpers that recallers and rankers share: a shopper's recent anchors, the words for
what a shopper did, and an item's text. Built-in plugins use these exactly as a third-party
plugin would (`from engine import recent_anchors, kind_verb, item_text`)."""

from __future__ import annotations

from typing import Iterable, Literal, Mapping, NamedTuple

from .types import Item, Query

# An item's text fields, in the order they are joined (description last: a model that
# truncates long texts cuts the description first).
TEXT_FIELDS: tuple[str, ...] = ("title", "category", "brand", "tags", "description")


class Anchor(NamedTuple):
    """A history item a recaller starts from: its id, its weight and the kind of event that
    gave the weight ("" for the item of an item-to-item query)."""

    item_id: str
    weight: float
    kind: str


def recent_anchors(query: Query, kind_weights: Mapping[str, float] | None = None, *,
                   limit: int, decay: float = 1.0, relative: bool = False) -> list[Anchor]:
    """The items a recaller starts from for `query`, most recent first.

    An item-to-item query (`query.item_id`) has one anchor, that item, of weight 1. Otherwise
    the `limit` most recent distinct items of the history, the one `pos` steps back weighing
    `decay ** pos` times its strongest event's kind weight (`kind_weights`, 1 for a kind it
    does not name; None: every kind weighs 1). `relative` divides by the largest weight in
    `kind_weights`, so a purchase of the newest item weighs 1. Ids are not checked: map them
    to your own indices and drop the ones you do not know."""
    if query.item_id is not None:
        return [Anchor(query.item_id, 1.0, "")]
    strongest: dict[str, float] = {}
    kinds: dict[str, str] = {}
    for step in query.history:  # the latest of equally strong events names the kind
        w = 1.0 if kind_weights is None else kind_weights.get(step.kind, 1.0)
        if w >= strongest.get(step.item_id, 0.0):
            strongest[step.item_id], kinds[step.item_id] = w, step.kind
    top = max(kind_weights.values(), default=1.0) if relative and kind_weights is not None else None
    anchors = []
    for pos, item in enumerate(query.history_items[:limit]):
        w = decay ** pos * strongest.get(item, 0.0)
        anchors.append(Anchor(item, w if top is None else w / top, kinds.get(item, "")))
    return anchors


#              another shopper did it   you did it              a word for a log line
_VERBS = {
    "purchase": ("bought", "bought", "bought"),
    "cart": ("added", "added to your cart", "carted"),
    "view": ("viewed", "viewed", "viewed"),
    "click": ("viewed", "viewed", "clicked"),
    "rating": ("rated", "rated", "rated"),
}
_FORMS = {"shoppers": 0, "you": 1, "log": 2}


def kind_verb(kind: str, form: Literal["shoppers", "you", "log"] = "shoppers",
              default: str | None = None) -> str:
    """The past-tense verb for an event kind, for reasons and context texts.

    `form`: "shoppers" for what other shoppers did ("shoppers who added [[x]]"), "you" for
    what the shopper reading it did ("which you added to your cart"), "log" one word per
    kind ("carted", "clicked"). A kind without a verb gives `default` (None: the kind)."""
    verbs = _VERBS.get(kind)
    if verbs is None:
        return kind if default is None else default
    return verbs[_FORMS[form]]


def item_text(item: Item, fields: Iterable[str] = TEXT_FIELDS) -> str:
    """The item's text: its non-empty `fields` (names of `Item` attributes; tags are joined
    by spaces) in that order, each with its whitespace collapsed, joined by ". "."""
    texts = (" ".join(str(" ".join(item.tags) if f == "tags" else getattr(item, f) or "").split())
             for f in fields)
    return ". ".join(t for t in texts if t)
