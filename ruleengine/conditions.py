"""Rule conditions: the AST, a plain-Python evaluator with failure details, and durable-rules JSON.

Semantics (language v1): a comparison compares the value of a fact with a literal, a named
threshold (resolved to its number at compile time) or another fact. ``all`` is true when every
item is; ``any`` when one is; ``not`` negates. Every referenceable fact is always present.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .diagnostics import Location
from .vocabulary import field_name

OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in")
NUMERIC_OPS = ("<", "<=", ">", ">=")
_COMPLEMENT = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">", "in": "not_in", "not_in": "in"}
_DURABLE_OP = {"!=": "$neq", "<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}


@dataclass(frozen=True)
class Cmp:
    """``fact op value``; value is a literal, or resolved from a threshold (``threshold`` names it) or a fact."""

    fact: str
    op: str
    value: Any = None
    threshold: str | None = None
    other_fact: str | None = None
    path: str = ""
    location: Location = field(default_factory=Location, compare=False)

    def describe(self) -> str:
        """Return the comparison as a person reads it, e.g. ``data.examples >= large_data_examples (1000000)``."""
        if self.op == "empty":
            return "an empty condition list that never holds"
        if self.other_fact:
            rhs = self.other_fact
        elif self.threshold:
            rhs = f"{self.threshold} ({_fmt(self.value)})"
        else:
            rhs = _fmt(self.value)
        return f"{self.fact} {self.op} {rhs}"


@dataclass(frozen=True)
class All:
    """Every item holds (an empty ``all`` is true)."""

    items: tuple[Condition, ...]
    path: str = ""


@dataclass(frozen=True)
class AnyOf:
    """At least one item holds (an empty ``any`` is false)."""

    items: tuple[Condition, ...]
    path: str = ""


@dataclass(frozen=True)
class Not:
    """The item does not hold."""

    item: Condition
    path: str = ""


Condition = Cmp | All | AnyOf | Not


@dataclass(slots=True)
class Failure:
    """Why a condition is false: the comparison that failed, the actual value, and the margin (read-only by use)."""

    cmp: Cmp
    actual: Any
    expected: Any
    margin: float | None  # actual - expected for numeric comparisons
    negated: bool = False

    def to_dict(self) -> dict:
        """Return a JSON-safe dict of this failure."""
        return {
            "path": self.cmp.path,
            "condition": ("not " if self.negated else "") + self.cmp.describe(),
            "fact": self.cmp.fact,
            "op": self.cmp.op,
            "actual": self.actual,
            "expected": self.expected,
            "threshold": self.cmp.threshold,
            "margin": self.margin,
        }


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def rhs_value(cmp: Cmp, facts: dict[str, Any]) -> Any:
    """Return the right-hand side of ``cmp`` for these facts."""
    return facts[cmp.other_fact] if cmp.other_fact else cmp.value


def compare(op: str, actual: Any, expected: Any) -> bool:
    """Return the truth of ``actual op expected`` under the language's rules."""
    if op == "==":
        return bool(actual == expected)
    if op == "!=":
        return bool(actual != expected)
    if op == "in":
        return actual in expected
    if op == "not_in":
        return actual not in expected
    if op == "<":
        return bool(actual < expected)
    if op == "<=":
        return bool(actual <= expected)
    if op == ">":
        return bool(actual > expected)
    if op == ">=":
        return bool(actual >= expected)
    raise ValueError(f"unknown operator {op}")


def evaluate(cond: Condition, facts: dict[str, Any]) -> bool:
    """Return whether ``cond`` holds for the flat ``facts`` (dotted path -> value)."""
    if isinstance(cond, Cmp):
        return compare(cond.op, facts[cond.fact], rhs_value(cond, facts))
    if isinstance(cond, All):
        return all(evaluate(c, facts) for c in cond.items)
    if isinstance(cond, AnyOf):
        return any(evaluate(c, facts) for c in cond.items)
    if isinstance(cond, Not):
        return not evaluate(cond.item, facts)
    raise TypeError(cond)


def first_failure(cond: Condition, facts: dict[str, Any], negated: bool = False) -> Failure | None:
    """Return the first comparison (in document order) that makes ``cond`` false, or None if it holds."""
    holds = evaluate(cond, facts)
    if holds != negated:
        return None
    if isinstance(cond, Cmp):
        actual = facts[cond.fact]
        expected = rhs_value(cond, facts)
        margin = None
        if cond.op in NUMERIC_OPS + ("==", "!=") and _is_num(actual) and _is_num(expected):
            margin = float(actual) - float(expected)
        return Failure(cond, actual, expected, margin, negated)
    if isinstance(cond, Not):
        return first_failure(cond.item, facts, not negated)
    items = cond.items
    # a false `all` (or a true `any` under negation) fails at its first failing item
    for item in items:
        found = first_failure(item, facts, negated)
        if found is not None:
            return found
    # an empty `any` (or an empty `all` under negation) is false with no comparison to blame
    return Failure(Cmp("", "empty", (), path=cond.path), None, None, None, negated)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --- compiled checks ----------------------------------------------------------------------

Check = Callable[[dict[str, Any]], "Failure | None"]

_PREDICATES: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "in": lambda a, b: a in b, "not_in": lambda a, b: a not in b,
}


def _failure(cmp: Cmp, actual: Any, expected: Any, negated: bool) -> Failure:
    margin = None
    if cmp.op in NUMERIC_OPS + ("==", "!=") and _is_num(actual) and _is_num(expected):
        margin = float(actual) - float(expected)
    return Failure(cmp, actual, expected, margin, negated)


def compile_check(cond: Condition) -> Check:
    """Return a function of the flat facts equal to ``first_failure(cond, facts)``: None when ``cond`` holds.

    Built from closures over the condition tree once, so a rule is evaluated and its first failing
    comparison found in one pass, with the semantics of :func:`evaluate` and :func:`first_failure`.
    """
    return _compile(cond, False)


def compile_predicate(cond: Condition) -> Callable[[dict[str, Any]], bool]:
    """Return a function of the flat facts equal to ``evaluate(cond, facts)``, built from closures once.

    For evaluations that need only the truth (first-hit searches): no failure details are built.
    """
    if isinstance(cond, Cmp):
        pred = _PREDICATES[cond.op]
        fact, other, value = cond.fact, cond.other_fact, cond.value
        if other:
            return lambda facts: pred(facts[fact], facts[other])
        return lambda facts: pred(facts[fact], value)
    if isinstance(cond, Not):
        inner = compile_predicate(cond.item)
        return lambda facts: not inner(facts)
    items = tuple(compile_predicate(c) for c in cond.items)
    if isinstance(cond, All):
        def every(facts: dict[str, Any]) -> bool:
            for item in items:  # noqa: SIM110 - a loop is twice as fast as all() over a generator here
                if not item(facts):
                    return False
            return True
        return every

    def some(facts: dict[str, Any]) -> bool:
        for item in items:  # noqa: SIM110 - as above, any() over a generator is slower
            if item(facts):
                return True
        return False
    return some


def _compile(cond: Condition, negated: bool) -> Check:
    if isinstance(cond, Cmp):
        return _compile_cmp(cond, negated)
    if isinstance(cond, Not):
        return _compile(cond.item, not negated)
    items = tuple(_compile(c, negated) for c in cond.items)
    # `all` (or a negated `any`) fails at its first failing item and holds when none fails
    first_failing = isinstance(cond, All) != negated
    if first_failing:
        def check_all(facts: dict[str, Any]) -> Failure | None:
            for item in items:
                found = item(facts)
                if found is not None:
                    return found
            return None
        return check_all
    empty = Failure(Cmp("", "empty", (), path=cond.path), None, None, None, negated)

    # `any` (or a negated `all`) holds when one item does, else fails at its first item
    def check_any(facts: dict[str, Any]) -> Failure | None:
        first = None
        for item in items:
            found = item(facts)
            if found is None:
                return None
            if first is None:
                first = found
        return first if first is not None else empty
    return check_any


def _compile_cmp(cmp: Cmp, negated: bool) -> Check:
    pred = _PREDICATES[cmp.op]
    fact = cmp.fact
    other = cmp.other_fact
    value = cmp.value
    if other:
        def expected(facts: dict[str, Any]) -> Any:
            return facts[other]
    else:
        def expected(facts: dict[str, Any]) -> Any:
            return value
    if negated:
        def check_neg(facts: dict[str, Any]) -> Failure | None:
            actual, rhs = facts[fact], expected(facts)
            return _failure(cmp, actual, rhs, True) if pred(actual, rhs) else None
        return check_neg
    if other:
        def check_fact(facts: dict[str, Any]) -> Failure | None:
            actual, rhs = facts[fact], facts[other]
            return None if pred(actual, rhs) else _failure(cmp, actual, rhs, False)
        return check_fact

    def check(facts: dict[str, Any]) -> Failure | None:
        actual = facts[fact]
        return None if pred(actual, value) else _failure(cmp, actual, value, False)
    return check


def comparisons(cond: Condition) -> list[Cmp]:
    """Return every comparison inside ``cond`` in document order."""
    if isinstance(cond, Cmp):
        return [cond]
    if isinstance(cond, Not):
        return comparisons(cond.item)
    out: list[Cmp] = []
    for item in cond.items:
        out.extend(comparisons(item))
    return out


def negate(cond: Condition) -> Condition:
    """Return the negation of ``cond`` pushed down to comparisons (De Morgan, complemented operators)."""
    if isinstance(cond, Cmp):
        return Cmp(cond.fact, _COMPLEMENT[cond.op], cond.value, cond.threshold, cond.other_fact,
                   cond.path, cond.location)
    if isinstance(cond, Not):
        return push_negations(cond.item)
    if isinstance(cond, All):
        return AnyOf(tuple(negate(c) for c in cond.items), cond.path)
    return All(tuple(negate(c) for c in cond.items), cond.path)


def push_negations(cond: Condition) -> Condition:
    """Return ``cond`` without ``Not`` nodes (negations pushed into comparisons)."""
    if isinstance(cond, Cmp):
        return cond
    if isinstance(cond, Not):
        return negate(cond.item)
    if isinstance(cond, All):
        return All(tuple(push_negations(c) for c in cond.items), cond.path)
    return AnyOf(tuple(push_negations(c) for c in cond.items), cond.path)


# --- durable-rules JSON -------------------------------------------------------------------

ALWAYS_FIELD = "always__"
_TRUE = {"$gte": {ALWAYS_FIELD: 1}}
_FALSE = {"$lt": {ALWAYS_FIELD: 0}}


def to_durable(cond: Condition) -> dict:
    """Return the durable-rules JSON expression of ``cond`` (negations pushed down first)."""
    return _durable(push_negations(cond))


def _durable(cond: Condition) -> dict:
    if isinstance(cond, Cmp):
        name = field_name(cond.fact)
        rhs: Any = {"$m": field_name(cond.other_fact)} if cond.other_fact else cond.value
        if cond.op == "==":
            return {name: rhs}
        if cond.op in _DURABLE_OP:
            return {_DURABLE_OP[cond.op]: {name: rhs}}
        values = list(cond.value)
        if cond.op == "in":
            return {"$or": [{name: v} for v in values]} if values else dict(_FALSE)
        return {"$and": [{"$neq": {name: v}} for v in values]} if values else dict(_TRUE)
    if isinstance(cond, All):
        if not cond.items:
            return dict(_TRUE)
        return {"$and": [_durable(c) for c in cond.items]}
    if isinstance(cond, AnyOf):
        if not cond.items:
            return dict(_FALSE)
        return {"$or": [_durable(c) for c in cond.items]}
    raise TypeError(f"negation should have been pushed down: {cond}")


def to_data(cond: Condition) -> Any:
    """Return ``cond`` as plain data in the policy language's own syntax (for dumping and hashing)."""
    if isinstance(cond, Cmp):
        out: dict[str, Any] = {"fact": cond.fact, "op": cond.op}
        if cond.threshold:
            out["value"] = {"threshold": cond.threshold}
        elif cond.other_fact:
            out["value"] = {"fact": cond.other_fact}
        else:
            out["value"] = list(cond.value) if isinstance(cond.value, tuple) else cond.value
        return out
    if isinstance(cond, All):
        return {"all": [to_data(c) for c in cond.items]}
    if isinstance(cond, AnyOf):
        return {"any": [to_data(c) for c in cond.items]}
    return {"not": to_data(cond.item)}
