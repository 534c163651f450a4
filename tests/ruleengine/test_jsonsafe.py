"""Strict JSON parsing: the same answer for deep nesting whichever Python version parses it."""

from __future__ import annotations

import pytest

from ruleengine.diagnostics import DiagnosticError
from ruleengine.jsonsafe import MAX_PARSE_DEPTH, loads


def _nested(levels: int) -> str:
    return '{"a": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


def test_nesting_up_to_the_limit_parses():
    node, levels = loads(_nested(MAX_PARSE_DEPTH), "x"), 0
    while isinstance(node, (dict, list)):
        levels += 1
        node = node["a"] if isinstance(node, dict) else (node[0] if node else None)
    assert levels == MAX_PARSE_DEPTH


@pytest.mark.parametrize("levels", [MAX_PARSE_DEPTH + 1, 999, 5000, 100_000])
def test_deeper_nesting_is_json_too_deep_on_every_python(levels):
    with pytest.raises(DiagnosticError) as caught:
        loads(_nested(levels), "body.json", code_prefix="request")
    (d,) = caught.value.diagnostics
    assert d.code == "request-too-deep" and d.location.file == "body.json"


def test_many_brackets_side_by_side_are_not_depth():
    text = "[" + ",".join(["[]"] * (MAX_PARSE_DEPTH * 3)) + "]"
    assert len(loads(text, "x")) == MAX_PARSE_DEPTH * 3
