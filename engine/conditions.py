"""The condition language of the merchandising rules: a small, safe expression over a
product's catalogue fields, read by a hand-written tokenizer and recursive-descent parser
(never `eval`) and compiled to a predicate `Item -> bool`.

    brand = "Acme"
    price > 200 and not tags contains "sale"
    category in ["Tents", "Sleeping bags"] or attrs.season = 'winter'

Fields: item_id, title, category, brand (text); price (number); in_stock (true/false);
tags (a list of texts); attrs.NAME (an imported attribute: text, number, true/false or a
list). Comparisons: = != < <= > >=, `in [..]` (equal to one of), `contains` (text: has
this piece, any case; a list: has this element); and, or, not, parentheses. Texts are in
"double" or 'single' quotes (a text cannot hold its own quote: use the other kind).
Text comparisons ignore case. A product without the field (no price, no such attribute)
matches no comparison: `not attrs.season = "winter"` includes them.

An error names the position and what was expected there:

    Invalid condition at position 8: expected a value after '=' ("text", a number, true
    or false), found the end of the condition.
      brand =
              ^
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import EngineError
from .types import Item

__all__ = ["Condition", "ConditionError", "FIELDS", "parse_condition"]

TEXT, NUMBER, BOOL, LIST, ANY = "text", "number", "true/false", "list", "any"
# field -> its type (attrs.NAME are ANY: their type is known only per product)
FIELDS = {"item_id": TEXT, "title": TEXT, "category": TEXT, "brand": TEXT, "price": NUMBER,
          "in_stock": BOOL, "tags": LIST}
FIELD_LIST = ", ".join([*FIELDS, "attrs.NAME"])
OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
ALLOWED = {  # which comparisons each type takes
    TEXT: ("=", "!=", "in", "contains"), NUMBER: ("=", "!=", "<", "<=", ">", ">=", "in"),
    BOOL: ("=", "!="), LIST: ("contains", "in"),
    ANY: ("=", "!=", "<", "<=", ">", ">=", "in", "contains"),
}
KEYWORDS = ("and", "or", "not", "in", "contains", "true", "false")
MAX_DEPTH = 32  # parentheses and `not`s inside each other

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>-?[0-9]+(?:\.[0-9]+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_][A-Za-z0-9_-]*)?)
  | (?P<op>!=|<=|>=|==|=|<|>)
  | (?P<punct>[()\[\],])
  | (?P<quote>["'])
""", re.VERBOSE)


class ConditionError(EngineError):
    """A condition that cannot be read: `position` (0-based) and what was `expected`."""

    title = "Invalid condition"

    def __init__(self, text: str, position: int, message: str):
        self.text, self.position = text, position
        caret = " " * (position + 2) + "^"
        shown = "".join(ch if ch.isprintable() else " " for ch in text)  # the caret stays under it
        super().__init__(f"Invalid condition at position {position + 1}: {message}\n  {shown}\n{caret}")


@dataclass(frozen=True)
class Token:
    kind: str   # number, text, word, op, punct, end
    value: Any
    start: int

    def said(self) -> str:
        if self.kind == "end":
            return "the end of the condition"
        if self.kind == "text":
            return f'the text "{self.value}"' if '"' not in self.value else f"the text '{self.value}'"
        return f"'{self.value}'"


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    at = 0
    while at < len(text):
        m = _TOKEN.match(text, at)
        if m is None:
            raise ConditionError(text, at, f"unexpected character {text[at]!r}; conditions are "
                                 f"made of fields, comparisons (= != < <= > >= in contains), "
                                 f"\"texts\", numbers, and/or/not and parentheses.")
        kind = m.lastgroup
        if kind == "quote":
            close = text.find(m.group(), at + 1)
            if close < 0:
                raise ConditionError(text, at, f"this text has no closing {m.group()}.")
            out.append(Token("text", text[at + 1:close], at))
            at = close + 1
            continue
        if kind == "number":
            out.append(Token("number", float(m.group()), at))
        elif kind == "op":
            out.append(Token("op", "=" if m.group() == "==" else m.group(), at))
        elif kind != "space":
            word = m.group()
            out.append(Token(kind, word.lower() if word.lower() in KEYWORDS else word, at))
        at = m.end()
    out.append(Token("end", None, len(text)))
    return out


# -- evaluation helpers: how a product's value compares with a literal ----------------

def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _equal(value: Any, literal: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, (list, tuple)):
        return any(_equal(v, literal) for v in value)
    if isinstance(literal, bool) or isinstance(value, bool):
        return isinstance(literal, bool) and isinstance(value, bool) and value == literal
    if isinstance(literal, float):
        num = _number(value)
        return num is not None and num == literal
    if isinstance(value, str):
        return value.casefold() == literal.casefold()
    num = _number(literal)
    return num is not None and _number(value) == num


def _order(value: Any, literal: Any) -> int | None:
    """-1, 0 or 1 comparing value with literal; None when they cannot be ordered. Numbers
    (and texts that are numbers) compare as numbers, other texts alphabetically."""
    if value is None or isinstance(value, (bool, list, tuple)) or isinstance(literal, bool):
        return None
    if isinstance(value, str) and isinstance(literal, str):
        a, b = value.casefold(), literal.casefold()
        return (a > b) - (a < b)
    x, y = _number(value), _number(literal)
    if x is None or y is None:
        return None
    return (x > y) - (x < y)


def _contains(value: Any, literal: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_equal(v, literal) for v in value)
    if isinstance(value, str) and isinstance(literal, str):
        return literal.casefold() in value.casefold()
    return False


_ORDERED = {"<": lambda c: c < 0, "<=": lambda c: c <= 0, ">": lambda c: c > 0, ">=": lambda c: c >= 0}


def _compare(op: str, literal: Any) -> Callable[[Any], bool]:
    if op == "=":
        return lambda v: _equal(v, literal)
    if op == "!=":
        return lambda v: v is not None and not _equal(v, literal)
    if op == "in":
        return lambda v: v is not None and any(_equal(v, x) for x in literal)
    if op == "contains":
        return lambda v: _contains(v, literal)
    test = _ORDERED[op]

    def ordered(v: Any) -> bool:
        c = _order(v, literal)
        return c is not None and test(c)
    return ordered


def _getter(field: str) -> Callable[[Item], Any]:
    if field.startswith("attrs."):
        key = field[6:]
        return lambda item: item.attrs.get(key) if item.attrs else None
    if field == "tags":
        return lambda item: list(item.tags)
    return lambda item: getattr(item, field)


# -- the parser --------------------------------------------------------------------------

Predicate = Callable[[Item], bool]


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.at = 0
        self.fields: set[str] = set()

    @property
    def tok(self) -> Token:
        return self.tokens[self.at]

    def fail(self, expected: str, tok: Token | None = None) -> ConditionError:
        tok = tok or self.tok
        return ConditionError(self.text, tok.start, f"expected {expected}, found {tok.said()}.")

    def take(self) -> Token:
        tok = self.tokens[self.at]
        self.at += 1
        return tok

    def is_word(self, word: str) -> bool:
        return self.tok.kind == "word" and self.tok.value == word

    def parse(self) -> Predicate:
        if self.tok.kind == "end":
            raise self.fail(f"a condition such as brand = \"Acme\" or price > 200 (fields: {FIELD_LIST})")
        pred = self.either(0)
        if self.tok.kind != "end":
            raise self.fail("'and', 'or' or the end of the condition"
                            + (" (a ')' closes nothing here)" if self.tok.value == ")" else ""))
        return pred

    def either(self, depth: int) -> Predicate:
        parts = [self.both(depth)]
        while self.is_word("or"):
            self.take()
            parts.append(self.both(depth))
        if len(parts) == 1:
            return parts[0]
        return lambda item: any(p(item) for p in parts)

    def both(self, depth: int) -> Predicate:
        parts = [self.negation(depth)]
        while self.is_word("and"):
            self.take()
            parts.append(self.negation(depth))
        if len(parts) == 1:
            return parts[0]
        return lambda item: all(p(item) for p in parts)

    def negation(self, depth: int) -> Predicate:
        flips = 0
        while self.is_word("not"):
            self.take()
            flips += 1
        if depth + flips > MAX_DEPTH:
            raise ConditionError(self.text, self.tok.start, f"nested more than {MAX_DEPTH} deep.")
        pred = self.primary(depth + flips)
        if flips % 2:
            inner = pred
            return lambda item: not inner(item)
        return pred

    def primary(self, depth: int) -> Predicate:
        tok = self.tok
        if tok.kind == "punct" and tok.value == "(":
            if depth >= MAX_DEPTH:
                raise ConditionError(self.text, tok.start, f"nested more than {MAX_DEPTH} deep.")
            self.take()
            pred = self.either(depth + 1)
            if not (self.tok.kind == "punct" and self.tok.value == ")"):
                raise self.fail(f"')' to close the '(' at position {tok.start + 1}, or 'and' / 'or'")
            self.take()
            return pred
        return self.comparison()

    def field(self) -> tuple[str, str]:
        tok = self.tok
        if tok.kind != "word" or tok.value in KEYWORDS:
            raise self.fail(f"a field ({FIELD_LIST}), 'not' or '('")
        name = tok.value
        if name.startswith("attrs."):
            kind = ANY
        elif name in FIELDS:
            kind = FIELDS[name]
        else:
            close = difflib.get_close_matches(name.lower(), list(FIELDS), n=1, cutoff=0.6)
            if close:
                hint = f" Did you mean {close[0]}?"
            elif name == "attrs":
                hint = " Name the attribute: attrs.NAME."
            else:
                hint = f" An imported attribute is attrs.{name}." if "." not in name else ""
            raise ConditionError(self.text, tok.start, f"unknown field {name!r}; the fields are "
                                 f"{FIELD_LIST}.{hint}")
        self.take()
        self.fields.add(name)
        return name, kind

    def comparison(self) -> Predicate:
        name, kind = self.field()
        tok = self.tok
        if tok.kind == "op":
            op = tok.value
        elif tok.kind == "word" and tok.value in ("in", "contains"):
            op = tok.value
        else:
            raise self.fail(f"a comparison after {name} ({' '.join(ALLOWED[kind])})")
        if op not in ALLOWED[kind]:
            raise ConditionError(self.text, tok.start, f"{name} is {_a(kind)}: compare it with "
                                 f"{', '.join(ALLOWED[kind])}, not {op}.")
        self.take()
        literal = self.values(name, kind, op) if op == "in" else self.value(name, kind, op)
        get, test = _getter(name), _compare(op, literal)
        return lambda item: test(get(item))

    def value(self, name: str, kind: str, op: str) -> Any:
        tok = self.tok
        want = {TEXT: "a \"text\"", LIST: "a \"text\"", NUMBER: "a number", BOOL: "true or false",
                ANY: "a value (\"text\", a number, true or false)"}[kind]
        if tok.kind == "word" and tok.value in ("true", "false"):
            value: Any = tok.value == "true"
            ok = kind in (BOOL, ANY)
        elif tok.kind == "number":
            value, ok = tok.value, kind in (NUMBER, ANY)
        elif tok.kind == "text":
            value, ok = tok.value, kind in (TEXT, LIST, ANY)
        else:
            raise self.fail(f"{want} after '{name} {op}'")
        if not ok:
            raise self.fail(f"{want} after '{name} {op}' ({name} is {_a(kind)})")
        self.take()
        return value

    def values(self, name: str, kind: str, op: str) -> tuple:
        if not (self.tok.kind == "punct" and self.tok.value == "["):
            raise self.fail(f"'[' to start the list after '{name} in', e.g. {name} in [\"a\", \"b\"]")
        self.take()
        found = [self.value(name, TEXT if kind == LIST else kind, op)]
        while self.tok.kind == "punct" and self.tok.value == ",":
            self.take()
            found.append(self.value(name, TEXT if kind == LIST else kind, op))
        if not (self.tok.kind == "punct" and self.tok.value == "]"):
            raise self.fail("',' or ']' in the list")
        self.take()
        return tuple(found)


def _a(kind: str) -> str:
    return {TEXT: "text", NUMBER: "a number", BOOL: "true or false", LIST: "a list of texts",
            ANY: "an attribute"}[kind]


@dataclass(frozen=True)
class Condition:
    """A parsed condition: its text and its predicate over catalogue items."""

    text: str
    test: Predicate
    fields: frozenset[str]

    def __call__(self, item: Item) -> bool:
        return self.test(item)

    def matching(self, items) -> frozenset[str]:
        """The ids of the items the condition holds for."""
        return frozenset(item.item_id for item in items if self.test(item))


def parse_condition(text: str) -> Condition:
    """The condition in `text`, or a ConditionError that points at the position."""
    if not isinstance(text, str):
        raise EngineError("A condition is a text, e.g. brand = \"Acme\".", title="Invalid condition")
    parser = _Parser(text)
    test = parser.parse()
    return Condition(text, test, frozenset(parser.fields))
