"""Human-friendly quantities: ``7B`` parameters, ``50k`` examples, ``24GB`` of memory."""

from __future__ import annotations

import re

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_COUNT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*$", re.IGNORECASE)


def parse_count(value: object) -> float:
    """Return the number a count like ``7B``, ``1.1B``, ``350M``, ``50k`` or ``12000`` stands for.

    Raises ValueError (message says what forms are accepted) for anything else, including
    booleans, negative numbers and NaN.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a number or a count like 7B / 50k, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _COUNT_RE.match(value)
        if not match:
            raise ValueError(f"expected a number or a count like 7B, 350M, 50k; got {value!r}")
        number = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    else:
        raise ValueError(f"expected a number or a count like 7B / 50k, got {type(value).__name__}")
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite number, got {value!r}")
    if number < 0:
        raise ValueError(f"expected a non-negative number, got {value!r}")
    return number


def format_count(n: float) -> str:
    """Return ``n`` written compactly: 6738415616 -> '6.74B', 50000 -> '50k'."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            text = f"{n / scale:.3g}"
            return f"{text}{suffix}"
    return f"{n:g}"


def format_value(v: object) -> str:
    """Return a fact value for people: booleans as true/false, large numbers as counts, lists in brackets."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if abs(v) >= 1e4:
            return format_count(v)
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    return str(v)
