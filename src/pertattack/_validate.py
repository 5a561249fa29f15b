"""Checks of user-given settings, shared by the parts: each error names the setting it refuses."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["integer", "flag", "is_number"]


def is_number(value: Any) -> bool:
    """Whether ``value`` is a Python int or float (not a bool, not a tensor)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(name: str, value: Any, lo: int = 1) -> int:
    """``value`` as an int, or a TypeError/ValueError naming ``name`` unless it is a whole number >= ``lo``
    (a float such as 3.0 is accepted; NaN, inf, 1.5, strings and bools are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an integer >= {lo}, got {value!r}")
    if isinstance(value, float) and (not math.isfinite(value) or int(value) != value):
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    v = int(value)
    if v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return v


def flag(name: str, value: Any) -> bool:
    """``value`` if it is True or False, else a TypeError naming ``name`` (no truthy strings or ints)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def did_you_mean(name: str, known: list[str], cutoff: float = 0.6) -> str:
    """' (did you mean a, b?)' for the close matches of ``name`` among ``known``, else ''."""
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=cutoff)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def from_table(table: dict[str, Any], name: Any, what: str, extra: str = "") -> Any:
    """A new default instance of ``table[name]``, or a ValueError naming ``what`` and the close matches."""
    if not isinstance(name, str) or name not in table:
        hint = did_you_mean(name, list(table)) if isinstance(name, str) else ""
        raise ValueError(f"unknown {what} {name!r}{hint}; known: {', '.join(table)}{extra}")
    return table[name]()
