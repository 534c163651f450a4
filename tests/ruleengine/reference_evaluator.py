"""A second, independent evaluator of policy language v1, written from docs/policy-language.md alone.

It reads the policy as plain data (``Policy.dump_data()``: the same document a single-file policy
would hold) and interprets rule conditions from that data itself; it does not use
``ruleengine.conditions`` or the compiler's condition trees. It relies on the engine only for the
input contract and the memory model: ``normalize_facts`` (§6 of the language) and
``derive`` (the derived facts and each select rule's resolved verdict with its memory estimate).

Semantics implemented (docs/policy-language.md §4, §7):

* a list is ``all``; ``all: []`` holds, ``any: []`` does not; ``not`` negates;
* a comparison reads the fact's value and compares it with a literal, a threshold's number or
  another fact's value, with Python's operators;
* select rules in (priority, id) order; the first whose conditions hold **and** whose own verdict
  fits in usable memory is chosen; none: infeasible;
* every advise rule whose conditions hold on the facts plus the verdict facts matches.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from ruleengine.derive import derive
from ruleengine.facts import normalize_facts

_OPS = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "in": lambda a, b: a in b, "not_in": lambda a, b: a not in b,
}


@dataclass
class ReferenceDecision:
    """What the reference evaluator decided."""

    chosen_rule: str | None
    method: str | None
    rank: int | None
    advice: list[str]
    feasible: bool


def threshold_values(doc: dict) -> dict[str, float]:
    """Return each threshold's number from the policy document (a bare number or ``{value: ...}``)."""
    out = {}
    for name, raw in (doc.get("thresholds") or {}).items():
        out[name] = float(raw["value"] if isinstance(raw, dict) else raw)
    return out


def holds(condition: Any, facts: dict[str, Any], thresholds: dict[str, float]) -> bool:
    """Return whether a condition written as policy data holds for the flat facts."""
    if isinstance(condition, list):
        return all(holds(c, facts, thresholds) for c in condition)
    if "all" in condition:
        return all(holds(c, facts, thresholds) for c in condition["all"])
    if "any" in condition:
        return any(holds(c, facts, thresholds) for c in condition["any"])
    if "not" in condition:
        return not holds(condition["not"], facts, thresholds)
    value = condition["value"]
    if isinstance(value, dict) and "threshold" in value:
        rhs: Any = thresholds[value["threshold"]]
    elif isinstance(value, dict) and "fact" in value:
        rhs = facts[value["fact"]]
    else:
        rhs = value
    return bool(_OPS[condition["op"]](facts[condition["fact"]], rhs))


def _order(rule: dict) -> tuple:
    return (rule["priority"], rule["id"])


def evaluate_reference(policy: Any, given: dict, origin: str = "") -> ReferenceDecision:
    """Decide ``given`` facts under ``policy`` by the language definition; raises FactsError for bad facts.

    ``origin`` is the directory relative ``model.config`` paths are read from.
    """
    doc = policy.dump_data()
    thresholds = threshold_values(doc)
    facts = normalize_facts(given, policy)
    derived = derive(policy, facts, origin)
    flat = dict(derived.flat)
    rules = doc["rules"]
    select = sorted((r for r in rules if r.get("kind", "select") == "select"), key=_order)
    advise = sorted((r for r in rules if r.get("kind") == "advise"), key=_order)
    chosen = None
    for rule in select:
        if holds(rule["when"], flat, thresholds) and derived.candidates[rule["id"]].fits:
            chosen = rule["id"]
            break
    cand = derived.candidates[chosen] if chosen else None
    verdict = {
        "verdict.method": cand.method if cand else "",
        "verdict.rank": int(cand.rank or 0) if cand else 0,
        "verdict.feasible": cand is not None,
        "verdict.sharding": cand.training["sharding"] if cand else "none",
        "verdict.memory_gb": cand.estimate.total_gib if cand else 0.0,
        "verdict.headroom_gb": (cand.usable_gb - cand.estimate.total_gib) if cand else 0.0,
    }
    with_verdict = {**flat, **verdict}
    advice = [r["id"] for r in advise if holds(r["when"], with_verdict, thresholds)]
    return ReferenceDecision(chosen, cand.method if cand else None, cand.rank if cand else None, advice,
                             cand is not None)
