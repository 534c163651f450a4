"""Untrusted JSON-like input: strict parsing and structural limits, as located diagnostics.

Every reader of facts (YAML and JSON files, JSON Lines batches, HTTP bodies, CLI flags) ends in
``check_value``, so the same input gets the same answer everywhere: numbers must be finite and
integers fit in 64 bits (larger ones are never a plausible fact, and the rules engine compares
integers exactly only up to 2**53), strings must be valid Unicode (no lone surrogates, which
cannot be written as UTF-8) and shorter than a limit, nesting and the number of values are
bounded, and only JSON types occur (no dates or sets from YAML tags). ``loads`` parses JSON text
strictly: NaN, Infinity and numbers that overflow to infinity are refused where they stand.

The walk is iterative, so a hostile document cannot exhaust the stack, and it stops at the first
structural limit (too deep, too many values) instead of visiting a million nodes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .diagnostics import Diagnostic, DiagnosticError, Location

# Integers beyond 64 bits are never a plausible fact; numbers are bounded per field by the schemas.
MAX_INT = 2**63 - 1


@dataclass(frozen=True)
class Limits:
    """Structural limits of one input: nesting depth, values (nodes) in all, characters per string."""

    max_depth: int = 32
    max_nodes: int = 100_000
    max_string: int = 65_536

    def describe(self) -> str:
        """Return the limits in words, for help texts."""
        return (f"at most {self.max_depth} levels of nesting, {self.max_nodes} values and "
                f"{self.max_string} characters per string")


def _fmt(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def has_lone_surrogate(text: str) -> bool:
    """Return True when ``text`` holds a code point U+D800..U+DFFF (not encodable as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_value(data: Any, locate: Callable[[tuple, bool], Location], code_prefix: str,
                limits: Limits = Limits(), subtree_limits: dict[tuple, Limits] | None = None) -> list[Diagnostic]:
    """Return diagnostics for everything in ``data`` that is not plain, bounded, finite JSON.

    ``locate(path, key)`` places each finding; ``subtree_limits`` gives other limits below some paths
    (e.g. an inline model config may nest deeper than facts). The walk stops at the first nesting or
    size limit reached (one diagnostic); other findings (non-finite numbers, huge integers, lone
    surrogates, long strings, non-JSON types) are each reported, 50 at most.
    """
    diags: list[Diagnostic] = []
    overrides = subtree_limits or {}
    nodes = 0
    # (value, path, depth below the subtree root, limits in force, nodes counted in this subtree)
    stack: list[tuple[Any, tuple, int, Limits, tuple]] = [(data, (), 0, limits, ())]
    counts: dict[tuple, int] = {(): 0}

    def add(code: str, message: str, path: tuple, help_: str, key: bool = False) -> None:
        if len(diags) < 50:
            diags.append(Diagnostic(f"{code_prefix}-{code}", message, locate(path, key), help_, path=_fmt(path)))

    while stack:
        value, path, depth, lim, root = stack.pop()
        if path in overrides and root != path:
            lim, root, depth = overrides[path], path, 0
            counts[root] = 0
        nodes += 1
        counts[root] += 1
        if depth > lim.max_depth:
            add("too-deep", f"nested more than {lim.max_depth} levels deep", path,
                f"{_fmt(root)} allows {lim.describe()}")
            return diags
        if counts[root] > lim.max_nodes:
            add("too-large", f"more than {lim.max_nodes} values", root, f"{_fmt(root)} allows {lim.describe()}")
            return diags
        if isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str):
                    add("bad-key", f"key {key!r} is not a string", path + (str(key),), "keys are strings",
                        key=True)
                    continue
                if has_lone_surrogate(key) or len(key) > lim.max_string:
                    add("bad-key", "the key is not valid text (a lone surrogate) or is too long",
                        path + (key,), "keys are short UTF-8 text", key=True)
                    continue
                stack.append((child, path + (key,), depth + 1, lim, root))
        elif isinstance(value, list):
            for index in range(len(value) - 1, -1, -1):
                stack.append((value[index], path + (index,), depth + 1, lim, root))
        elif isinstance(value, str):
            if len(value) > lim.max_string:
                add("string-too-long", f"the text is {len(value)} characters long (at most {lim.max_string})",
                    path, "shorten it")
            elif has_lone_surrogate(value):
                add("bad-text", "the text holds a lone surrogate (\\ud800-\\udfff), which is not Unicode text",
                    path, "send valid UTF-8 / escape only whole surrogate pairs")
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if abs(value) > MAX_INT:
                digits = len(str(abs(value))) if abs(value) < 10**4000 else 4000
                add("number-too-large", f"an integer of {digits}+ digits is out of range", path,
                    "numbers are bounded per field; see the schema")
        elif isinstance(value, float):
            if not math.isfinite(value):
                add("not-finite", f"{value!r} is not a finite number", path,
                    "NaN and infinity are not numbers a fact may take; give a finite value")
        else:
            add("bad-type", f"a {type(value).__name__} is not a JSON value", path,
                "use a string, number, boolean, list or mapping (quote dates and other tagged values)")
    return diags


class _Refused(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _Refused(f"{text[:40]} overflows to infinity")
    return number


def loads(text: str | bytes, file: str, code_prefix: str = "json") -> Any:
    """Return the value of JSON ``text`` parsed strictly; raises DiagnosticError located at line:column.

    Refused: NaN, Infinity, -Infinity, numbers that overflow a float, nesting deep enough to exhaust
    the parser, and bytes that are not UTF-8. (Structure, lone surrogates and sizes: ``check_value``.)
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DiagnosticError([Diagnostic(f"{code_prefix}-not-utf8", f"not UTF-8 text (byte {exc.start})",
                                              Location(file), "send UTF-8 encoded JSON")]) from None
    too_deep = DiagnosticError([Diagnostic(f"{code_prefix}-too-deep", "the JSON is nested too deeply",
                                           Location(file, 1, 1), "facts are a few levels deep")])
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:  # how deep the parser goes first depends on the Python version: see MAX_PARSE_DEPTH
        raise too_deep from None
    except json.JSONDecodeError as exc:
        raise DiagnosticError([Diagnostic(f"{code_prefix}-syntax", exc.msg, Location(file, exc.lineno, exc.colno),
                                          "fix the JSON at this position")]) from None
    except _Refused as exc:
        line, col = _position_of_refusal(text, str(exc))
        raise DiagnosticError([Diagnostic(f"{code_prefix}-not-finite", str(exc), Location(file, line, col),
                                          "NaN and infinity are not JSON; give a finite number")]) from None
    if text.count("[") + text.count("{") > MAX_PARSE_DEPTH and _depth(value) > MAX_PARSE_DEPTH:
        raise too_deep
    return value


#: JSON nested deeper than this is refused as ``<prefix>-too-deep`` whichever Python parsed it (3.11's parser
#: stops near 1,000 levels with RecursionError, 3.13's goes much deeper); facts need a few levels
MAX_PARSE_DEPTH = 100


def _depth(value: Any) -> int:
    """Return the nesting depth of a parsed JSON value (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node if isinstance(child, (dict, list)))
    return deepest


def _position_of_refusal(text: str, message: str) -> tuple[int, int]:
    """Return line, column of the first NaN/Infinity token or overflowing number the message names."""
    token = message.split(" ", 1)[0]
    at = text.find(token) if token else -1
    if at < 0:
        return 1, 1
    line = text.count("\n", 0, at) + 1
    return line, at - (text.rfind("\n", 0, at) + 1) + 1
