"""One exception type for bad user input, so every entry point can map it to exit code 2, and the one field
checker every config runs at construction."""
from __future__ import annotations

import dataclasses
import math
import reprlib
from typing import Any, Callable, NamedTuple


class InputError(ValueError):
    """A file, field or argument is not what was expected; the message names it."""


def check_known(raw: dict, cls: type, source: str) -> dict:
    """Reject keys that are not fields of the dataclass `cls`, naming them and the known ones."""
    names = set(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - names)
    if unknown:
        raise InputError(f"{source}: unknown key(s) {unknown}; known: {sorted(names)}")
    return raw


class Rule(NamedTuple):
    """One field's check: `ok(value)`, and what was expected (for the message)."""

    ok: Callable[[Any], bool]
    expected: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(lo: int | None = None) -> Rule:
    return Rule(lambda v: _is_int(v) and (lo is None or v >= lo), "an integer" + ("" if lo is None else f" >= {lo}"))


def number(lo: float | None = None, hi: float | None = None, *, above: bool = False, below: bool = False) -> Rule:
    """A finite int or float in [lo, hi]; `above` / `below` make that end open."""
    def ok(v: Any) -> bool:
        if not (_is_int(v) or isinstance(v, float)) or not math.isfinite(v):
            return False
        return (lo is None or (v > lo if above else v >= lo)) and (hi is None or (v < hi if below else v <= hi))
    bounds = [f"{'>' if above else '>='} {lo}"] * (lo is not None) + [f"{'<' if below else '<='} {hi}"] * (hi is not None)
    return Rule(ok, " ".join(["a finite number", " and ".join(bounds)]).strip())


def one_of(*allowed: Any) -> Rule:
    return Rule(lambda v: any(type(v) is type(a) and v == a for a in allowed), f"one of {', '.join(map(repr, allowed))}")


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"{rule.expected} or null")


def list_of(rule: Rule, nonempty: bool = False) -> Rule:
    return Rule(lambda v: isinstance(v, (list, tuple)) and (len(v) > 0 or not nonempty) and all(map(rule.ok, v)),
                f"a {'non-empty ' if nonempty else ''}list, each {rule.expected}")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
MAPPING = Rule(lambda v: isinstance(v, dict), "a mapping")


def check_fields(obj: Any, rules: dict[str, Rule]) -> None:
    """Check the fields of the dataclass `obj` against `rules`; the first failure is an InputError naming the field,
    what was expected and what it got. Every config calls it once, from `__post_init__`."""
    for name, rule in rules.items():
        value = getattr(obj, name)
        if not rule.ok(value):
            raise InputError(f"{name}: expected {rule.expected}, got {value!r}")


def check_same(what: str, ours: Any, theirs: Any, may_differ: frozenset[str] = frozenset()) -> None:
    """Refuse `theirs` (a config of the same dataclass as `ours`) when a field outside `may_differ` differs: one
    line naming the first fields, their value there and here."""
    names = [f.name for f in dataclasses.fields(ours) if f.name not in may_differ]
    diff = [f"{n} {reprlib.repr(getattr(theirs, n))} (this run: {reprlib.repr(getattr(ours, n))})" for n in names
            if getattr(theirs, n) != getattr(ours, n)]
    if diff:
        raise InputError(f"{what}: made with an incompatible config: {'; '.join(diff[:3])}"
                         + (f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""))


def nested(section: str, cls: type, raw: dict, build: Callable[[], Any] | None = None) -> Any:
    """A config section (`cls`, built by `build`, default `cls(**raw)`); unknown keys and bad values are named
    `section.field`."""
    check_known(raw, cls, section)
    try:
        return build() if build else cls(**raw)
    except InputError as e:
        raise InputError(f"{section}.{e}") from None
