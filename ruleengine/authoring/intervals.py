"""Exact interval / partition analysis of rule conditions (DMN-verifier style).

Every condition is brought into disjunctive normal form; each conjunction becomes a *box*: one
constraint per fact, an interval for numeric facts and a finite set for booleans and enums. On
boxes, intersection, subtraction, subsumption (cover), overlap and gaps are exact set algebra.

What the boxes cannot represent exactly, and how it is handled:

* a comparison of two facts (``{fact: a, op: <, value: {fact: b}}``) is *opaque*: ``dnf`` replaces
  it by ``true`` (an over-approximation, used where a superset is sound) or ``false`` (an
  under-approximation), as the caller asks; callers confirm such findings by sampling;
* derived facts that are functions of one given fact are rewritten into that fact, exactly:
  ``model.params_b`` into ``model.params``, ``use_case.method`` / ``use_case.rank`` into the set of
  ``task.use_case`` rows, ``hardware.bf16`` / ``hardware.price_per_hour`` into the set of catalog
  GPUs, ``verdict.feasible`` into ``verdict.method`` (``""`` = infeasible);
* other derived facts (``fits.*``, ``mem.*``, ``hardware.usable_gb``, ``model.num_layers`` ...)
  are computed by the memory model from several facts; the analysis treats them as *free*
  dimensions (independent of the given facts). ``FREE_DERIVED`` lists them, and a finding that
  depends on one says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..conditions import All, AnyOf, Cmp, Condition, Not, compare, push_negations
from ..vocabulary import DERIVED, GIVEN, METHODS, VERDICT, FactType

INF = math.inf
CUSTOM_GPU = ""  # hardware.gpu of a GPU given by hardware.gpu_memory_gb only

# The value range of each numeric fact after normalization: (low, low_open).  The upper end is +inf.
# Counts cannot be negative, memory and latency are positive, sizes are at least 1.
NUMERIC_LOWER: dict[str, tuple[float, bool]] = {
    "model.params": (1e6, False),  # facts below 1M parameters are rejected (facts-implausible)
    "hardware.gpu_memory_gb": (0.0, True),
    "hardware.gpu_count": (1, False),
    "data.examples": (0, False),
    "data.avg_tokens": (0.0, True),
    "data.seq_len": (1, False),
    "serving.requests_per_day": (0.0, False),
    "serving.avg_latency_ms": (0.0, True),
    "serving.adapters": (1, False),
    "training.micro_batch_size": (1, False),
    "training.seq_len": (1, False),
    "model.num_layers": (1, False),
    "model.hidden_size": (1, False),
    "model.vocab_size": (1, False),
    "hardware.total_memory_gb": (0.0, True),
    "hardware.usable_gb": (0.0, False),
    "data.num_tasks": (1, False),
    "data.tokens_total": (0.0, False),
    "serving.unmerged_gpu_hours_per_day": (0.0, False),
    "verdict.rank": (0, False),
    "verdict.memory_gb": (0.0, False),
}
INTEGER_FACTS = {"data.examples"}  # numbers that normalization rounds to integers

# derived facts rewritten exactly into a given fact (see the module docstring)
REWRITTEN = {"model.params_b": "model.params", "use_case.method": "task.use_case", "use_case.rank": "task.use_case",
             "hardware.bf16": "hardware.gpu", "hardware.price_per_hour": "hardware.gpu",
             "verdict.feasible": "verdict.method"}
FREE_DERIVED = tuple(sorted(n for n in {**DERIVED, **VERDICT} if n not in REWRITTEN and n != "verdict.method"))


class AnalysisLimit(RuntimeError):
    """A condition expands into more boxes than the analysis allows (``MAX_BOXES``)."""


MAX_BOXES = 20_000


# --- intervals -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A set of numbers ``lo..hi``; ``lo_open`` / ``hi_open`` exclude the end. Integer sets are closed."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    @property
    def empty(self) -> bool:
        """Return True when no number lies in the interval."""
        if self.lo > self.hi:
            return True
        return self.lo == self.hi and (self.lo_open or self.hi_open)

    def intersect(self, other: Interval) -> Interval:
        """Return the intersection (possibly empty)."""
        if self.lo > other.lo or (self.lo == other.lo and self.lo_open):
            lo, lo_open = self.lo, self.lo_open
        else:
            lo, lo_open = other.lo, other.lo_open
        if self.hi < other.hi or (self.hi == other.hi and self.hi_open):
            hi, hi_open = self.hi, self.hi_open
        else:
            hi, hi_open = other.hi, other.hi_open
        return Interval(lo, hi, lo_open, hi_open)

    def subtract(self, other: Interval) -> list[Interval]:
        """Return ``self`` minus ``other`` as at most two disjoint non-empty intervals."""
        cut = self.intersect(other)
        if cut.empty:
            return [self]
        out = [Interval(self.lo, cut.lo, self.lo_open, not cut.lo_open),
               Interval(cut.hi, self.hi, not cut.hi_open, self.hi_open)]
        return [i for i in out if not i.empty]

    def contains(self, x: float) -> bool:
        """Return True when ``x`` lies in the interval."""
        if x < self.lo or x > self.hi:
            return False
        if x == self.lo and self.lo_open:
            return False
        return not (x == self.hi and self.hi_open)

    def describe(self, integer: bool = False) -> str:
        """Return the interval as text, e.g. ``[1000, 1e+06)`` or ``>= 2``."""
        lo, hi = _num(self.lo), _num(self.hi)
        if self.lo == self.hi:
            return f"== {lo}"
        if self.hi == INF:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.lo == -INF:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return f"{'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"


def _num(x: float) -> str:
    if x in (INF, -INF):
        return "inf" if x > 0 else "-inf"
    if float(x).is_integer() and abs(x) < 1e15:
        n = int(x)
        for div, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "k")):
            if n >= div and n % div == 0:
                return f"{n // div}{suffix}"
        return str(n)
    return f"{x:g}"


def integer_closure(iv: Interval) -> Interval:
    """Return the integers of ``iv`` as a closed interval of integers (possibly empty)."""
    lo = iv.lo if iv.lo == -INF else (math.floor(iv.lo) + 1 if iv.lo_open and float(iv.lo).is_integer()
                                      else math.ceil(iv.lo))
    hi = iv.hi if iv.hi == INF else (math.ceil(iv.hi) - 1 if iv.hi_open and float(iv.hi).is_integer()
                                     else math.floor(iv.hi))
    return Interval(lo, hi, False, False)


# --- dimensions and boxes --------------------------------------------------------------------

@dataclass(frozen=True)
class Dim:
    """One dimension of the fact space: a numeric range (``integer`` or real) or a finite set of values."""

    name: str
    kind: str  # "num" | "set"
    integer: bool = False
    universe: Any = None  # Interval for "num", frozenset for "set"
    free: bool = False  # a derived fact the analysis treats as independent

    def normalize(self, c: Any) -> Any:
        """Return the constraint in canonical form (integer intervals closed)."""
        if self.kind == "num" and self.integer:
            return integer_closure(c)
        return c

    def is_empty(self, c: Any) -> bool:
        """Return True when the constraint admits no value."""
        return c.empty if self.kind == "num" else not c

    def meet(self, a: Any, b: Any) -> Any:
        """Return the intersection of two constraints of this dimension."""
        return self.normalize(a.intersect(b)) if self.kind == "num" else a & b

    def minus(self, a: Any, b: Any) -> list[Any]:
        """Return ``a`` minus ``b`` as a list of disjoint non-empty constraints."""
        if self.kind == "num":
            return [self.normalize(i) for i in a.subtract(b) if not self.normalize(i).empty]
        rest = a - b
        return [rest] if rest else []

    def subset(self, a: Any, b: Any) -> bool:
        """Return True when every value allowed by ``a`` is allowed by ``b``."""
        if self.kind == "set":
            return a <= b
        return not self.minus(a, b)

    def describe(self, c: Any) -> str:
        """Return the constraint as text for messages."""
        if self.kind == "num":
            shown = c
            if self.integer and c.hi != INF:  # integers up to 999 read better as "< 1k"
                shown = Interval(c.lo, c.hi + 1, c.lo_open, True)
            if shown.lo == self.universe.lo and shown.lo_open == self.universe.lo_open and shown.hi != INF:
                shown = Interval(-INF, shown.hi, False, shown.hi_open)
            return f"{self.name} {shown.describe(self.integer)}"
        values = sorted(_show(v) for v in c)
        if len(values) == 1:
            return f"{self.name} == {values[0]}"
        return f"{self.name} in [{', '.join(values)}]"

    def sample(self, c: Any) -> Any:
        """Return one representative value of the constraint (a readable one where possible)."""
        if self.kind == "set":
            return sorted(c, key=_sort_key)[0]
        lo, hi = c.lo, c.hi
        if self.integer:
            if lo == -INF:
                return int(hi) if hi != INF else 0
            if hi == INF:
                return int(lo)
            return int((lo + hi) // 2)
        if lo == -INF and hi == INF:
            return 0.0
        if lo == -INF:
            return hi - max(1.0, abs(hi) * 0.5)
        if hi == INF:
            return lo if not c.lo_open else (lo * 2 if lo > 0 else lo + 1)
        return (lo + hi) / 2


def _show(v: Any) -> str:
    if v == CUSTOM_GPU:
        return "<custom>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _sort_key(v: Any) -> tuple:
    return (str(type(v)), "~" if v == CUSTOM_GPU else str(v))


Box = tuple  # tuple of (dim name, constraint) sorted by name; a missing dim is unconstrained


def box_get(box: Box, name: str) -> Any:
    """Return the constraint of ``name`` in ``box`` or None when unconstrained."""
    for k, v in box:
        if k == name:
            return v
    return None


def _mk(d: dict[str, Any]) -> Box:
    return tuple(sorted(d.items()))


class Space:
    """The fact space of one policy: its dimensions, and set algebra on boxes over them."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.dims: dict[str, Dim] = {}
        self.use_cases = tuple(policy.use_cases)
        self.gpus = tuple(policy.gpus) + (CUSTOM_GPU,)
        self.opaque_rules: set[str] = set()

    # -- dimensions --

    def dim(self, name: str) -> Dim:
        """Return the dimension of a (rewritten) fact, creating it on first use."""
        if name in self.dims:
            return self.dims[name]
        ft = {**GIVEN, **DERIVED, **VERDICT}.get(name)
        if name == "task.use_case":
            d = Dim(name, "set", universe=frozenset(self.use_cases))
        elif name == "hardware.gpu":
            d = Dim(name, "set", universe=frozenset(self.gpus))
        elif name == "verdict.method":
            d = Dim(name, "set", universe=frozenset(METHODS) | {""})
        elif ft is None:
            raise KeyError(f"unknown fact {name}")
        elif ft.kind == "bool":
            d = Dim(name, "set", universe=frozenset({True, False}), free=name in FREE_DERIVED)
        elif ft.kind == "enum":
            d = Dim(name, "set", universe=frozenset(self._enum_values(ft)), free=name in FREE_DERIVED)
        else:
            lo, lo_open = NUMERIC_LOWER.get(name, (-INF, False))
            integer = ft.kind == "integer" or name in INTEGER_FACTS
            d = Dim(name, "num", integer, Interval(lo, INF, lo_open, False), free=name in FREE_DERIVED)
            d = Dim(name, "num", integer, d.normalize(d.universe), d.free)
        self.dims[name] = d
        return d

    def _enum_values(self, ft: FactType) -> tuple:
        if ft.values is not None:
            return ft.values
        return self.use_cases if ft.values_from == "use_cases" else self.gpus

    # -- atoms --

    def atom(self, cmp: Cmp) -> list[Box] | None:
        """Return the boxes where the comparison holds, or None when it is opaque (fact vs fact)."""
        if cmp.other_fact:
            return None
        fact, op, value = cmp.fact, cmp.op, cmp.value
        if fact == "model.params_b":
            return self._numeric("model.params", op, _scale(value, 1e9))
        if fact in ("use_case.method", "use_case.rank"):
            return self._table_set("task.use_case", self.use_cases, op, value,
                                   lambda uc: self._use_case_value(fact, uc))
        if fact in ("hardware.bf16", "hardware.price_per_hour"):
            return self._table_set("hardware.gpu", self.gpus, op, value, lambda g: self._gpu_value(fact, g))
        if fact == "verdict.feasible":
            methods = frozenset(METHODS)
            holds_true = compare(op, True, value)
            holds_false = compare(op, False, value)
            allowed = (methods if holds_true else frozenset()) | ({""} if holds_false else frozenset())
            return [_mk({"verdict.method": allowed})] if allowed else []
        d = self.dim(fact)
        if d.kind == "set":
            allowed = frozenset(v for v in d.universe if compare(op, v, value))
            return [_mk({fact: allowed})] if allowed else []
        return self._numeric(fact, op, value)

    def _use_case_value(self, fact: str, uc: str) -> Any:
        row = self.policy.use_cases.get(uc, {})
        return row.get("method", "lora") if fact == "use_case.method" else int(row.get("rank") or 0)

    def _gpu_value(self, fact: str, gpu: str) -> Any:
        entry = self.policy.gpus.get(gpu, {})
        if fact == "hardware.bf16":
            return bool(entry.get("bf16", True))
        return float(entry.get("price_per_hour") or 0.0)

    def _table_set(self, dim: str, keys: Iterable, op: str, value: Any, get: Any) -> list[Box]:
        self.dim(dim)
        allowed = frozenset(k for k in keys if compare(op, get(k), value))
        return [_mk({dim: allowed})] if allowed else []

    def _numeric(self, fact: str, op: str, value: Any) -> list[Box]:
        d = self.dim(fact)
        if op in ("in", "not_in"):
            points = sorted(float(v) for v in value)
            if op == "in":
                ivs = [Interval(p, p) for p in points]
            else:
                ivs = [d.universe]
                for p in points:
                    ivs = [r for iv in ivs for r in iv.subtract(Interval(p, p))]
        else:
            v = float(value)
            ivs = {"==": [Interval(v, v)], "!=": [Interval(-INF, v, False, True), Interval(v, INF, True, False)],
                   "<": [Interval(-INF, v, False, True)], "<=": [Interval(-INF, v)],
                   ">": [Interval(v, INF, True, False)], ">=": [Interval(v, INF)]}[op]
        out = []
        for iv in ivs:
            c = d.meet(d.universe, iv)
            if not d.is_empty(c):
                out.append(_mk({fact: c}))
        return out

    # -- boxes --

    def meet(self, a: Box, b: Box) -> Box | None:
        """Return the intersection of two boxes, or None when it is empty."""
        if len(a) < len(b):
            a, b = b, a
        out = dict(a)
        changed = False
        for name, c in b:
            cur = out.get(name)
            if cur is None:
                out[name] = c
                changed = True
            elif cur != c:
                d = self.dims[name]
                m = d.meet(cur, c)
                if d.is_empty(m):
                    return None
                if m != cur:
                    out[name] = m
                    changed = True
        return _mk(out) if changed else a

    def meet_all(self, xs: list[Box], ys: list[Box]) -> list[Box]:
        """Return the pairwise intersections of two box lists (empty ones dropped)."""
        out = []
        for x in xs:
            for y in ys:
                m = self.meet(x, y)
                if m is not None:
                    out.append(m)
        if len(out) > MAX_BOXES:
            raise AnalysisLimit(f"more than {MAX_BOXES} boxes")
        return out

    def minus(self, a: Box, b: Box) -> list[Box]:
        """Return ``a`` minus ``b`` as disjoint boxes (the standard dimension-by-dimension split)."""
        if self.meet(a, b) is None:
            return [a]
        out: list[Box] = []
        rest = dict(a)
        for name, cb in b:
            d = self.dims[name]
            ca = rest.get(name, d.universe)
            for piece in d.minus(ca, cb):
                out.append(_mk({**rest, name: piece}))
            rest[name] = d.meet(ca, cb)
        return out

    def remainder(self, region: list[Box], cover: list[Box]) -> list[Box]:
        """Return the part of ``region`` not covered by the union of ``cover`` (disjoint boxes)."""
        rest = list(region)
        for c in cover:
            nxt: list[Box] = []
            for r in rest:
                nxt.extend(self.minus(r, c))
            rest = nxt
            if len(rest) > MAX_BOXES:
                raise AnalysisLimit(f"more than {MAX_BOXES} boxes")
            if not rest:
                break
        return rest

    def covers(self, cover: list[Box], region: list[Box]) -> bool:
        """Return True when the union of ``cover`` contains every point of ``region``."""
        return not self.remainder(region, cover)

    def restrict(self, box: Box, name: str, allowed: Any) -> Box | None:
        """Return ``box`` with dimension ``name`` further limited to ``allowed`` (None when empty)."""
        self.dim(name)
        return self.meet(box, _mk({name: allowed}))

    def values(self, box: Box, name: str) -> Any:
        """Return the constraint of ``name`` in ``box`` (the dimension's universe when unconstrained)."""
        c = box_get(box, name)
        return self.dim(name).universe if c is None else c

    def describe(self, box: Box) -> str:
        """Return the box as a readable conjunction."""
        if not box:
            return "every fact set"
        return " and ".join(self.dims[n].describe(c) for n, c in box)

    def point(self, box: Box) -> dict[str, Any]:
        """Return one representative value per constrained dimension of ``box``."""
        return {n: self.dims[n].sample(c) for n, c in box}

    def free_dims(self, boxes: Iterable[Box]) -> list[str]:
        """Return the free (memory-model) derived dimensions constrained in ``boxes``."""
        return sorted({n for b in boxes for n, _ in b if self.dims[n].free})

    # -- conditions --

    def dnf(self, cond: Condition, opaque: bool = True, rule_id: str = "") -> list[Box]:
        """Return the boxes (a union) where ``cond`` holds.

        Opaque comparisons (fact vs fact) become ``true`` when ``opaque`` is True (a superset of the
        true region) and ``false`` otherwise (a subset). Raises AnalysisLimit on a blow-up.
        """
        return self._dnf(push_negations(cond), opaque, rule_id)

    def _dnf(self, cond: Condition, opaque: bool, rule_id: str) -> list[Box]:
        if isinstance(cond, Cmp):
            boxes = self.atom(cond)
            if boxes is None:
                if rule_id:
                    self.opaque_rules.add(rule_id)
                return [()] if opaque else []
            return boxes
        if isinstance(cond, All):
            acc: list[Box] = [()]
            for item in cond.items:
                acc = self.meet_all(acc, self._dnf(item, opaque, rule_id))
                if not acc:
                    return []
            return _dedupe(acc)
        if isinstance(cond, AnyOf):
            out: list[Box] = []
            for item in cond.items:
                out.extend(self._dnf(item, opaque, rule_id))
            if len(out) > MAX_BOXES:
                raise AnalysisLimit(f"more than {MAX_BOXES} boxes")
            return _dedupe(out)
        if isinstance(cond, Not):  # pragma: no cover - push_negations removed every Not
            raise TypeError(cond)
        raise TypeError(cond)

    def has_opaque(self, cond: Condition) -> bool:
        """Return True when ``cond`` compares two facts somewhere."""
        return any(c.other_fact for c in _cmps(cond))


def _cmps(cond: Condition) -> Iterator[Cmp]:
    if isinstance(cond, Cmp):
        yield cond
    elif isinstance(cond, Not):
        yield from _cmps(cond.item)
    else:
        for item in cond.items:
            yield from _cmps(item)


def _dedupe(boxes: list[Box]) -> list[Box]:
    seen: set = set()
    out = []
    for b in boxes:
        if b not in seen:
            seen.add(b)
            out.append(b)
    return out


def _scale(value: Any, factor: float) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(float(v) * factor for v in value)
    return float(value) * factor


def referenced_dims(space: Space, rules: Iterable[Any]) -> list[str]:
    """Return the (rewritten) dimensions the rules' conditions constrain, sorted."""
    names: set[str] = set()
    for rule in rules:
        for b in space.dnf(rule.when, opaque=True):
            names.update(n for n, _ in b)
    return sorted(names)


def universe(space: Space, dims: Iterable[str]) -> Box:
    """Return the box that constrains each of ``dims`` to its whole domain."""
    return _mk({n: space.dim(n).universe for n in dims})
