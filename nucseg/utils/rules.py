"""Value rules: a predicate and the words that say what it accepts, for one-line error messages.

The ground floor of the settings checks: `nucseg.settings` attaches a `Rule` to each field of the typed
settings, and `nucseg.checks` keeps the rules of the other config keys. Imports nothing of nucseg.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["UNIT", "Rule", "either", "integer", "is_int", "is_number", "number", "one_of"]

UNIT = "a number between 0 and 1"


@dataclass(frozen=True)
class Rule:
    """`ok(value)` is True for an acceptable value; `expected` says what is acceptable, for the message.
    `entries`: the entry points whose key this is (None: every entry point that has the key); `required`:
    a missing value (`???`) is an error too."""

    ok: Callable[[Any], bool]
    expected: str
    entries: frozenset[str] | None = None
    required: bool = False


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int, multiple: int = 1) -> Callable[[Any], bool]:
    """An int >= `lo` that `multiple` divides (bools are not ints here)."""
    return lambda v: is_int(v) and v >= lo and v % multiple == 0


def number(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], bool]:
    """A finite number in the interval [lo, hi], ends excluded where `*_open`."""
    return lambda v: (is_number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi))


def either(*checks: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: any(c(v) for c in checks)


def one_of(*values: Any) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str | bool | int) and v in values
