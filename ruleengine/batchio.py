"""Batch input: many facts objects from a JSONL file (one per line) or a YAML list, each located.

Every input becomes a ``FactsInput`` whose diagnostics name the file and line, or a
``FactsError`` when the input is not a facts object at all; reading never stops at a bad input.
JSON is parsed strictly: NaN, Infinity and numbers that overflow to infinity are refused.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from .diagnostics import Diagnostic, Location
from .facts import FactsError, FactsInput
from .yamlsafe import LocatedDoc, load_yaml_text

MAX_LINE_BYTES = 1024 * 1024


class _LineLocator:
    """Locates every field of a JSONL input at its line (JSON lines have no finer positions we keep)."""

    def __init__(self, file: str, line: int) -> None:
        self.location = Location(file, line, 1)

    def loc(self, path: tuple, key: bool = False) -> Location:
        """Return the input's line for any field."""
        return self.location


class _ItemLocator:
    """Locates the fields of item ``index`` of a YAML list through the whole document's locations."""

    def __init__(self, doc: LocatedDoc, index: int) -> None:
        self.doc, self.index = doc, index

    def loc(self, path: tuple, key: bool = False) -> Location:
        """Return where ``path`` of this item was written."""
        return self.doc.loc((self.index, *path), key)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:40]} overflows to infinity")
    return number


def _open_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise FactsError([Diagnostic("batch-not-utf8", f"not UTF-8 text: {exc.reason}", Location(path),
                                     "save the file as UTF-8")]) from None
    except OSError as exc:
        raise FactsError([Diagnostic("batch-unreadable", f"cannot read the batch input: {exc.strerror}",
                                     Location(path), "check the path")]) from None


def read_batch(path: str) -> Iterator[tuple[int, FactsInput | FactsError]]:
    """Yield (line number, facts or error) for every input of the batch file ``path`` (``-`` = stdin).

    A file whose first non-blank character is ``[`` or ``-`` is a YAML (or JSON) list; otherwise each
    non-blank line is one JSON object. Raises FactsError only when the file itself cannot be read
    or a list document does not parse as a whole.
    """
    name = "<stdin>" if path == "-" else path
    text = _open_text(path)
    head = text.lstrip()[:1]
    if head in ("[", "-"):
        yield from _read_list(text, name)
        return
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        yield number, _parse_line(raw, name, number)


def _parse_line(raw: str, name: str, number: int) -> FactsInput | FactsError:
    where = Location(name, number, 1)
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
        return FactsError([Diagnostic("batch-line-too-long", f"the line is longer than {MAX_LINE_BYTES} bytes",
                                      where, "one facts object per line, under 1 MiB")])
    try:
        data = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        return FactsError([Diagnostic("batch-bad-json", "the JSON is nested too deeply", where,
                                      "facts are at most a few levels deep")])
    except ValueError as exc:
        col = getattr(exc, "colno", 1)
        message = getattr(exc, "msg", str(exc))
        return FactsError([Diagnostic("batch-bad-json", f"not valid JSON: {message}", Location(name, number, col),
                                      "write one JSON object per line (JSON Lines)")])
    if not isinstance(data, dict):
        return FactsError([Diagnostic("batch-not-facts", f"a line must hold a facts object, not {type(data).__name__}",
                                      where, 'e.g. {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, ...}')])
    return FactsInput(data, _LineLocator(name, number))


def _read_list(text: str, name: str) -> Iterator[tuple[int, FactsInput | FactsError]]:
    doc = load_yaml_text(text, name)
    if not isinstance(doc.data, list):
        raise FactsError([Diagnostic("batch-not-list", "a batch document must be a list of facts objects",
                                     Location(name, 1, 1), "write `- model: ...` items, or JSON Lines")])
    for index, item in enumerate(doc.data):
        where = doc.loc((index,))
        if not isinstance(item, dict):
            yield where.line, FactsError([Diagnostic("batch-not-facts", "a list item must be a facts object",
                                                     where, "each item is a mapping: model:, hardware:, data:, ...")])
            continue
        yield where.line, FactsInput(item, _ItemLocator(doc, index))
