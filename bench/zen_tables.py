"""The comparison point of bench_decide.py: a policy's rules as zen-engine (GoRules) decision tables.

Select rules become a first-hit table and advise rules a collect table (two decision graphs), one row per rule whose single
input cell is the rule's condition in ZEN's expression language, over the same flat facts the
durable-rules messages carry (dotted paths written with ``__``). Benchmark code only.
"""

from __future__ import annotations

import json
from typing import Any

from ruleengine.conditions import All, AnyOf, Cmp, Not
from ruleengine.vocabulary import field_name


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(float(value)) if isinstance(value, float) else str(value)


def expression(cond: Any) -> str:
    """Return a condition in ZEN's expression language."""
    if isinstance(cond, Cmp):
        lhs = field_name(cond.fact)
        if cond.other_fact:
            return f"({lhs} {cond.op} {field_name(cond.other_fact)})"
        if cond.op in ("in", "not_in"):
            items = "[" + ", ".join(_literal(v) for v in cond.value) + "]"
            return f"({lhs} in {items})" if cond.op == "in" else f"(not ({lhs} in {items}))"
        return f"({lhs} {cond.op} {_literal(cond.value)})"
    if isinstance(cond, Not):
        return f"(not {expression(cond.item)})"
    if isinstance(cond, All):
        return "(" + " and ".join(expression(c) for c in cond.items) + ")" if cond.items else "true"
    if isinstance(cond, AnyOf):
        return "(" + " or ".join(expression(c) for c in cond.items) + ")" if cond.items else "false"
    raise TypeError(cond)


def _table(node_id: str, hit: str, field: str, rows: list[tuple[str, str]]) -> dict:
    return {"id": node_id, "type": "decisionTableNode", "name": node_id, "position": {"x": 0, "y": 0},
            "content": {"hitPolicy": hit,
                        "inputs": [{"id": "cond", "name": "cond", "type": "expression", "field": ""}],
                        "outputs": [{"id": "rule", "name": field, "type": "expression", "field": field}],
                        "rules": [{"_id": f"r{i}", "cond": cond, "rule": json.dumps(rid)}
                                  for i, (rid, cond) in enumerate(rows)]}}


def _graph(table: dict) -> str:
    nodes = [{"id": "in", "type": "inputNode", "name": "Request", "position": {"x": 0, "y": 0}},
             {"id": "out", "type": "outputNode", "name": "Response", "position": {"x": 0, "y": 0}}, table]
    edges = [{"id": "e0", "sourceId": "in", "targetId": table["id"], "type": "edge"},
             {"id": "e1", "sourceId": table["id"], "targetId": "out", "type": "edge"}]
    return json.dumps({"contentType": "application/vnd.gorules.decision", "nodes": nodes, "edges": edges})


def decision_graphs(policy: Any) -> tuple[str, str]:
    """Return the JDM graphs (JSON text) of ``policy``: the select table's and the advise table's."""
    select = [(r.id, f"(fit__{r.order} == true) and {expression(r.when)}") for r in policy.select_rules]
    advise = [(r.id, expression(r.when)) for r in policy.advise_rules]
    return _graph(_table("select", "first", "chosen", select)), _graph(_table("advise", "collect", "advice", advise))
