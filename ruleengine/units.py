"""Human-friendly quantities: ``7B`` parameters, ``50k`` examples, ``24GB`` of memory."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

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


# --- units of policy numbers ----------------------------------------------------------------------------

class Unit(NamedTuple):
    """A unit of the fixed vocabulary: what it measures, the plausible range of a value, the accepted suffixes."""

    description: str
    low: float  # plausible values lie in [low, high]
    high: float
    suffixes: tuple[str, ...]  # human forms besides plain numbers (count suffixes k M B T, GiB/MiB, ms/s, $, %)


_COUNT = ("k", "M", "B", "T")
#: The units thresholds, catalog entries and facts are declared in (docs/policy-language.md, Units).
UNITS: dict[str, Unit] = {
    "GiB": Unit("memory, 2^30 bytes (what nvidia-smi reports in MiB / 1024)", 0.0, 1e6, ("GiB", "MiB", "TiB")),
    "params": Unit("model parameters", 1e6, 1e14, _COUNT),
    "Bparams": Unit("model parameters in billions (model.params_b)", 1e-3, 1e5, ()),
    "examples": Unit("training examples", 0.0, 1e13, _COUNT),
    "tokens": Unit("tokens", 0.0, 1e16, _COUNT),
    "ms": Unit("milliseconds", 0.0, 1e9, ("ms", "s")),
    "requests/day": Unit("inference requests per day", 0.0, 1e13, _COUNT),
    "$": Unit("US dollars", 0.0, 1e10, ("$",)),
    "$/hour": Unit("US dollars per GPU-hour", 0.0, 1e4, ("$",)),
    "GPU-hours/day": Unit("GPU-hours per day", 0.0, 1e7, ()),
    "count": Unit("a number of things: GPUs, adapters, tasks, layers, sequences", 0.0, 1e9, _COUNT),
    "rank": Unit("a LoRA rank", 0.0, 65536.0, ()),
    "fraction": Unit("a share between 0 and 1 (5% = 0.05)", 0.0, 1.0, ("%",)),
    "points": Unit("benchmark points (0-100)", 0.0, 100.0, ()),
    "exponent": Unit("a dimensionless exponent or factor", -1e3, 1e3, ()),
}
_QUANTITY = re.compile(r"^\s*(\$)?\s*([-+]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([A-Za-z$%/-]*)\s*$", re.IGNORECASE)
_SCALE = {"k": 1e3, "M": 1e6, "B": 1e9, "T": 1e12, "GiB": 1.0, "MiB": 1 / 1024, "TiB": 1024.0, "ms": 1.0,
          "s": 1000.0, "$": 1.0, "%": 0.01}
_SUFFIX_ALIASES = {"K": "k", "m": "M", "b": "B", "t": "T", "G": "B", "g": "B", "gib": "GiB", "mib": "MiB",
                   "tib": "TiB", "USD": "$", "usd": "$"}


def parse_quantity(value: object, unit: str | None) -> float:
    """Return the number a policy value stands for in ``unit``: ``2GiB``, ``81559MiB``, ``11B``, ``100k``, ``200ms``,
    ``$2.5``, ``5%`` or a plain number (``unit`` None: count suffixes only).

    Raises ValueError naming the forms ``unit`` accepts for anything else (booleans, NaN, infinities,
    a suffix of another unit such as ``2GiB`` for examples, and ``GB``, which is ambiguous).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a number, got {value!r}")
    allowed = UNITS[unit].suffixes if unit in UNITS else _COUNT
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _QUANTITY.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a number{_forms(allowed)}")
        dollar, digits, suffix = match.groups()
        suffix = _SUFFIX_ALIASES.get(suffix, suffix)
        if dollar:
            if suffix:
                raise ValueError(f"{value!r}: write ${digits} or {digits}$")
            suffix = "$"
        if suffix in ("GB", "gb", "Gb"):
            raise ValueError(f"{value!r}: GB is ambiguous (10^9 bytes or GiB?); write GiB as nvidia-smi reports it "
                             f"(MiB / 1024), e.g. {float(digits) * 1e9 / 2**30:.4g}GiB for {digits} x 10^9 bytes")
        if suffix and suffix not in allowed:
            raise ValueError(f"{value!r}: `{suffix}` is not a suffix of {unit or 'a count'}{_forms(allowed)}")
        number = float(digits) * _SCALE.get(suffix, 1.0)
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _forms(suffixes: tuple[str, ...]) -> str:
    if not suffixes:
        return "; write a plain number"
    return "; write a plain number or one with " + ", ".join(suffixes)


def plausibility(value: float, unit: str, low: float | None = None, high: float | None = None) -> str | None:
    """Return why ``value`` is implausible in ``unit`` (with a guess at the mistake), or None when it is plausible.

    ``low``/``high`` narrow the unit's range for one fact (e.g. one GPU's memory is at most 4096 GiB).
    """
    spec = UNITS[unit]
    lo = spec.low if low is None else low
    hi = spec.high if high is None else high
    if lo <= value <= hi:
        return None
    text = f"{format_plain(value)} {unit} is outside the plausible range {format_plain(lo)}..{format_plain(hi)}"
    guesses = []
    if unit == "GiB":
        for div, what, form in ((1024.0, "MiB", "MiB"), (float(2**30), "bytes", "GiB")):
            if max(lo, 0.5) <= value / div <= hi:
                shown = format_plain(value / div)
                other = f"{format_plain(value)}MiB" if form == "MiB" else f"{shown}GiB"
                guesses.append(f"did you write {what}? {format_plain(value)} {what} = {shown} GiB: write {shown} "
                               f"or {other}")
                break
    elif unit in ("params", "examples", "tokens", "requests/day", "count"):
        for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
            if value > 0 and lo <= value * scale <= hi:
                guesses.append(f"did you mean {format_plain(value)}{suffix} ({format_plain(value * scale)})?")
                break
    elif unit == "Bparams" and lo <= value / 1e9 <= hi:
        guesses.append(f"model.params_b counts billions: write {format_plain(value / 1e9)}")
    elif unit == "fraction" and 0 < value <= 100:
        guesses.append(f"did you mean {format_plain(value)}% ({format_plain(value / 100)})?")
    elif unit == "ms" and value > hi and lo <= value / 1e6 <= hi:
        guesses.append("nanoseconds? write milliseconds")
    return text + (": " + guesses[0] if guesses else "")


def format_plain(x: float) -> str:
    """Return a number without a needless ``.0`` and with a readable exponent: 1e+06 -> 1000000, 0.05 -> 0.05."""
    if float(x).is_integer() and abs(x) < 1e16:
        return str(int(x))
    return f"{x:.6g}"
