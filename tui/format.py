"""Formatting for the views: times in UTC (the same on every machine), numbers, attributes."""

from __future__ import annotations

import time
from typing import Any, Mapping


def when(ts: float | None, seconds: bool = False) -> str:
    if ts is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else ""), time.gmtime(ts))


def short(ts: float | None) -> str:
    return "—" if ts is None else time.strftime("%m-%d %H:%M", time.gmtime(ts))


def day(ts: float | None) -> str:
    return "—" if ts is None else time.strftime("%Y-%m-%d", time.gmtime(ts))


def number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def signed(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:+.{digits}f}"


def attrs(values: Mapping[str, Any]) -> str:
    return " · ".join(f"{v}" for v in values.values() if v not in (None, "")) if values else ""


def counts(by_kind: Mapping[str, int]) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in by_kind.items()) or "no events"


def price(value: float | None) -> str:
    return "" if value is None else f"{value:,.2f}"


def line(text: str, width: int = 24) -> str:
    """One line for a narrow list: cut with an ellipsis rather than wrapped."""
    return text if len(text) <= width else text[:width - 1] + "…"
