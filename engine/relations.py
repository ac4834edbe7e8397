"""Knowledge-graph relations as words a person reads: `film.film.directed_by` → "director".

Shared by the `kg` recaller's reasons and the terminal UI's graph view, so both name a
relation the same way."""

from __future__ import annotations

import re

# (pattern in the lower-cased relation, readable name); first match wins.
_RELATION_WORDS: tuple[tuple[str, str], ...] = (
    ("directed_by", "director"), ("director", "director"),
    ("starring", "actor"), ("actor", "actor"), ("cast", "actor"),
    ("genre", "genre"),
    ("written_by", "writer"), ("writer", "writer"),
    ("production_compan", "production company"),
    ("produced_by", "producer"), ("producer", "producer"),
    ("cinematograph", "cinematographer"),
    ("language", "language"), ("country", "country"),
    ("content_rating", "content rating"), ("rating", "content rating"),
    ("subject", "subject"), ("sequel", "series"), ("prequel", "series"),
    ("award_won", "award"), ("award_nomination", "award nomination"),
    ("price_band", "price band"),
)
LINK = "link"  # relation of an entity an item is linked to directly


def readable_relation(relation: str, overrides: dict[str, str] | None = None) -> str:
    """'film.film.directed_by' -> 'director'; a derived 'brand' stays 'brand'."""
    if overrides and relation in overrides:
        return overrides[relation]
    low = relation.lower()
    if low == LINK:
        return "entity"
    for pattern, word in _RELATION_WORDS:
        if pattern in low:
            return word
    last = re.split(r"[./:]", low)[-1] or low
    return re.sub(r"[_\-]+", " ", last).strip() or relation
