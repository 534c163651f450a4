"""Representative grids of fact sets over everything a policy reads, and its outcome at every point.

The grid's axes are derived from the policies themselves: every fact a select rule, an advise rule
or a derived fact the rules read depends on, with the policies' own thresholds as boundary points
(``build_grid``). Axes fall into two kinds:

* *memory* axes (model size, GPU, GPU count, use case, sequence length, training settings) change
  the derived facts and every candidate's memory estimate: each combination is one *memory point*,
  derived once by the decision core (``Evaluator.derive``);
* *rule* axes (data size, shift, quality, serving facts, number of tasks ...) only change the
  values conditions read. Their cross product is the *rule grid* of a memory point; it is never
  enumerated point by point. Each rule's condition depends on a few rule axes only, so it is
  evaluated once per combination of *those* axes (``Evaluator``'s compiled checks, on flat facts
  from ``derive.fact_flat`` over the memory point's derivation) and its truth becomes a bitmask
  over the rule grid. First-hit selection, advice and messages are then bit operations.

A random sample of grid points is re-decided from scratch with durable-rules
(``Evaluator.evaluate``) and must agree, chosen rule, advice and message codes included, else
``GridMismatch`` (exit 4) is raised: the fast path is checked against the engine on every run.

GPUs that no condition names and that agree on everything the rules can read (memory, bf16, price)
in both policies decide identically; one of them is evaluated and counted for each (``weight``).
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..conditions import Cmp, comparisons
from ..vocabulary import GIVEN, QUALITIES, SHIFTS
from .analysis import MODEL_GRID, analyse
from .intervals import INF, Interval

COUNTS = (1, 2, 4, 8)
#: given facts whose value changes the memory model's inputs (derive's memory point) or the candidates
MEMORY_FACTS = ("model.params", "hardware.gpu", "hardware.gpu_memory_gb", "hardware.gpu_count", "task.use_case",
                "data.seq_len", "training.precision", "training.optimizer", "training.micro_batch_size",
                "training.seq_len", "training.gradient_checkpointing", "training.sharding")
#: a rule axis that is not a given fact: the number of tasks (given as ``data.tasks``)
NUM_TASKS = "data.num_tasks"
MAX_RULE_POINTS = 1 << 16  # rule-grid points per memory point (bits of a mask)
CUSTOM = "custom:"  # hardware.gpu axis value of a GPU given by its memory only: "custom:<GiB>"


class GridMismatch(RuntimeError):
    """The grid evaluation disagrees with a full decision: a bug, never a result."""

    exit_code = 4


@dataclass(frozen=True)
class Outcome:
    """What a policy decided for one fact set: the chosen rule and verdict, its message codes, or an error."""

    feasible: bool
    method: str | None = None
    rank: int | None = None
    rule: str | None = None
    error: str | None = None  # the fact set is invalid under this policy (e.g. an unknown GPU)
    warnings: frozenset = frozenset()
    notes: frozenset = frozenset()

    def verdict_key(self) -> tuple:
        """Return what counts as the verdict: (feasible, method, rank), or the error."""
        return ("error", self.error) if self.error else (self.feasible, self.method, self.rank)

    def label(self) -> str:
        """Return e.g. ``lora r=16``, ``full_ft``, ``infeasible`` or ``invalid: ...``."""
        if self.error:
            return f"invalid ({self.error})"
        if not self.feasible:
            return "infeasible"
        return f"{self.method} r={self.rank}" if self.rank else str(self.method)


# --- which facts a policy reads -----------------------------------------------------------------

def rule_reads(rule: Any) -> set[str]:
    """Return every fact a rule's condition reads (both sides of fact-to-fact comparisons)."""
    out: set[str] = set()
    for cmp in comparisons(rule.when):
        if cmp.fact:
            out.add(cmp.fact)
        if isinstance(cmp, Cmp) and cmp.other_fact:
            out.add(cmp.other_fact)
    return out


def _base_given(policy: Any) -> dict:
    from .analysis import base_facts

    return base_facts(policy)


class FactModel:
    """Which given facts each flat fact depends on, found by probing ``derive.fact_flat`` (the one source).

    ``deps[k]`` is the set of given facts (and ``data.num_tasks``) whose change changes ``fact_flat``'s
    value of ``k``; facts ``fact_flat`` does not produce are computed by the memory model from the
    memory facts.
    """

    def __init__(self, policy: Any):
        from ..derive import fact_flat
        from ..facts import normalize_facts

        self.policy = policy
        self.fact_flat = fact_flat
        base = normalize_facts(_base_given(policy), policy)
        self.base = base
        flat0 = fact_flat(policy, base)
        self.flat_keys = set(flat0)
        self.deps: dict[str, set[str]] = {k: {k} for k in flat0 if k in GIVEN}
        for name in [*GIVEN, NUM_TASKS]:
            for variant in range(_variants(name, policy)):
                probe = copy.deepcopy(base)
                _perturb(probe, name, policy, variant)
                flat1 = fact_flat(policy, probe)
                for k in set(flat0) | set(flat1):
                    if k in GIVEN and k != name:
                        continue
                    if flat0.get(k) != flat1.get(k):
                        self.deps.setdefault(k, set()).add(name)

    def given_deps(self, fact: str) -> set[str]:
        """Return the given facts (or ``data.num_tasks``) ``fact`` depends on; memory facts for memory-derived ones."""
        if fact in GIVEN:
            return {fact}
        if fact in self.deps:
            return set(self.deps[fact])
        if fact.startswith("verdict."):
            return set()
        return {"model.params", "hardware.gpu", "hardware.gpu_count"}


def _enum_values(name: str, policy: Any) -> list:
    ft = GIVEN[name]
    return list(ft.values or (policy.use_cases if ft.values_from == "use_cases" else policy.gpus))


def _variants(name: str, policy: Any) -> int:
    """Return how many other values ``_perturb`` tries for ``name`` (every value of an enum)."""
    if name == NUM_TASKS:
        return 2
    kind = GIVEN[name].kind
    return len(_enum_values(name, policy)) if kind == "enum" else (1 if kind == "bool" else 2)


def _perturb(facts: dict, name: str, policy: Any, variant: int) -> None:
    """Set ``name`` in normalized facts to its ``variant``-th other value."""
    group, key = name.split(".")
    node = facts.setdefault(group, {})
    if name == NUM_TASKS:
        node["num_tasks"] = int(node.get("num_tasks", 1)) + 1 + variant
        return
    ft = GIVEN[name]
    cur = node.get(key)
    if ft.kind == "bool":
        node[key] = not bool(cur)
    elif ft.kind == "enum":
        node[key] = _enum_values(name, policy)[variant]
    else:
        number = float(cur) if isinstance(cur, (int, float)) and not isinstance(cur, bool) else 7.0
        node[key] = number * (2 + variant) + 3
        if ft.kind == "integer":
            node[key] = int(node[key])


# --- the grid -------------------------------------------------------------------------------------

@dataclass
class Grid:
    """The axes of a representative grid and the number of fact sets it stands for."""

    memory_axes: dict[str, list]
    rule_axes: dict[str, list]
    gpu_weight: dict[str, int]
    base: dict = field(default_factory=dict)

    @property
    def rule_size(self) -> int:
        """Return the number of points of the rule grid (one memory point's share)."""
        return math.prod(len(v) for v in self.rule_axes.values())

    @property
    def size(self) -> int:
        """Return the number of fact sets the grid represents (GPU classes weighted)."""
        n = sum(self.gpu_weight.values())
        for name, values in self.memory_axes.items():
            if name != "hardware.gpu":
                n *= len(values)
        return n * self.rule_size

    def describe(self) -> str:
        """Return a one-line description of the axes."""
        parts = []
        for name, values in {**self.memory_axes, **self.rule_axes}.items():
            if name == "hardware.gpu":
                parts.append(f"{sum(self.gpu_weight.values())} GPUs")
            else:
                parts.append(f"{name} x{len(values)}")
        return ", ".join(parts)

    def memory_points(self) -> Iterator[tuple]:
        """Yield every memory point (values in ``memory_axes`` order)."""
        yield from itertools.product(*self.memory_axes.values())

    def rule_point(self, index: int) -> tuple:
        """Return the rule-axis values of rule-grid point ``index`` (the first axis varies slowest)."""
        out = []
        for values in reversed(list(self.rule_axes.values())):
            index, i = divmod(index, len(values))
            out.append(values[i])
        return tuple(reversed(out))

    def facts(self, mem: tuple, index: int) -> dict:
        """Return the given-facts document of memory point ``mem`` and rule-grid point ``index``."""
        point = dict(zip(self.memory_axes, mem, strict=True))
        point.update(zip(self.rule_axes, self.rule_point(index), strict=True))
        return given_facts(point, self.base)


def given_facts(point: dict[str, Any], base: dict | None = None) -> dict:
    """Return a given-facts document for axis values (``data.num_tasks`` becomes ``data.tasks``)."""
    facts = copy.deepcopy(base or {})
    for name, value in point.items():
        group, key = name.split(".")
        node = facts.setdefault(group, {})
        if name == "hardware.gpu":
            if isinstance(value, str) and value.startswith(CUSTOM):
                node.pop("gpu", None)
                node["gpu_memory_gb"] = float(value[len(CUSTOM):])
            else:
                node["gpu"] = value
        elif name != NUM_TASKS:
            node[key] = value
    n = int(point.get(NUM_TASKS, 1))
    if n > 1:
        data = facts.setdefault("data", {})
        total = int(data.pop("examples", 50000))
        share = total // n
        data["tasks"] = [{"name": f"task{i + 1}", "examples": share if i < n - 1 else total - share * (n - 1)}
                         for i in range(n)]
    return facts


def _cells(policies: list[Any], fact: str) -> list[Interval]:
    """Return the exact partition of ``fact``'s range by every interval the policies' conditions use."""
    cells: list[Any] = []
    dim = None
    for policy in policies:
        analysis = _analysis(policy)
        if not any(fact in dict(b) for i in analysis.rules.values() for b in i.over):
            continue
        dim = analysis.space.dim(fact)
        if not cells:
            cells = [dim.universe]
        for info in analysis.rules.values():
            for box in info.over:
                for name, c in box:
                    if name != fact:
                        continue
                    nxt = []
                    for cell in cells:
                        inside = dim.meet(cell, c)
                        if not dim.is_empty(inside):
                            nxt.append(inside)
                        nxt.extend(dim.minus(cell, c))
                    cells = nxt
    return sorted(cells, key=lambda iv: (iv.lo, iv.lo_open))


_ANALYSES: dict[int, tuple[Any, Any]] = {}


def _analysis(policy: Any) -> Any:
    """Return ``analyse(policy)``, computed once per policy object."""
    found = _ANALYSES.get(id(policy))
    if found is None or found[0] is not policy:
        if len(_ANALYSES) > 64:
            _ANALYSES.clear()
        found = (policy, analyse(policy))
        _ANALYSES[id(policy)] = found
    return found[1]


def _representative(cell: Any, integer: bool, floor: float) -> float:
    """Return a readable value inside a cell: its closed lower end, else the middle / double of its ends."""
    if not cell.lo_open and cell.lo not in (-INF,) and cell.lo > floor:
        return cell.lo
    if cell.hi != INF:
        mid = (max(cell.lo, floor) + cell.hi) / 2
        return float(int(mid + 0.5)) if integer else mid
    if cell.lo == -INF or cell.lo <= floor:
        return floor
    return cell.lo * 2 if cell.lo > 0 else cell.lo + 1


def _thresholds_of(policies: list[Any], fact: str) -> list[float]:
    """Return the numbers conditions compare ``fact`` with, in any of the policies."""
    out: set[float] = set()
    for policy in policies:
        for rule in policy.rules:
            for cmp in comparisons(rule.when):
                if cmp.fact != fact or cmp.other_fact:
                    continue
                values = cmp.value if isinstance(cmp.value, tuple) else (cmp.value,)
                out.update(float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    return sorted(out)


def _solve(fn: Any, target: float, lo: float, hi: float, integer: bool) -> float | None:
    """Return the smallest x in (lo, hi] with fn(x) >= target for a non-decreasing fn, or None."""
    try:
        if fn(hi) < target or fn(lo) >= target:
            return None
    except (ArithmeticError, ValueError):
        return None
    for _ in range(400):
        if integer and hi - lo <= 1:
            break
        if not integer and hi - lo <= abs(hi) * 1e-12:
            break
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        if fn(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def _numeric_values(policies: list[Any], name: str, floor: float, integer: bool, extra: set[float]) -> list:
    cells = _cells(policies, name)
    values = {_representative(c, integer, floor) for c in cells} | extra
    if extra and not cells:
        values.add(floor)
    values = {v for v in values if v >= floor}
    return sorted(int(v) if integer else float(v) for v in values)


def build_grid(policies: list[Any], models: tuple = MODEL_GRID, counts: tuple = COUNTS,
               select_only: bool = False) -> Grid:
    """Return a representative grid over every fact the policies' rules (and their derived facts) read.

    Memory axes: models 0.5B-70B plus every model-size boundary, every catalog GPU of either policy
    (plus GPUs given by memory at any memory boundary), GPU counts 1-8 plus boundaries, every use
    case, and the sequence length and training settings when a rule reads them. Rule axes: one value
    per cell that the policies' conditions cut in each fact they read, with thresholds of facts
    derived from several given facts (``data.tokens_total``, ``serving.unmerged_gpu_hours_per_day``)
    solved back into those facts. Facts no rule reads are held at their normalized defaults.
    ``select_only`` leaves out what only advise rules read (for analyses of the selection).
    """
    from ..derive import fact_flat

    first = policies[0]
    model = FactModel(first)
    reads: set[str] = set()
    for policy in policies:
        for rule in (policy.select_rules if select_only else policy.rules):
            reads |= rule_reads(rule)
    needed: set[str] = set()
    for fact in reads:
        needed |= model.given_deps(fact)
    # numeric cuts of derived facts solved back into the given facts they depend on
    solved: dict[str, set[float]] = {}
    for fact in sorted(reads):
        deps = model.given_deps(fact)
        if fact in GIVEN or fact not in model.flat_keys or fact.startswith(("use_case.", "data.num_tasks")):
            continue
        for t in _thresholds_of(policies, fact):
            for dep in sorted(deps):
                if dep not in GIVEN or GIVEN[dep].kind not in ("number", "integer"):
                    continue
                integer = GIVEN[dep].kind == "integer" or dep == "data.examples"

                def value(x: float, dep: str = dep, fact: str = fact, integer: bool = integer) -> float:
                    facts = copy.deepcopy(model.base)
                    group, key = dep.split(".")
                    facts[group][key] = int(x) if integer else float(x)
                    return float(fact_flat(first, facts)[fact])

                x = _solve(value, t, 0.0, 1e15, integer)
                if x is not None:
                    below = x - 1 if integer else x * (1 - 1e-9)
                    solved.setdefault(dep, set()).update({x, below} if below >= 0 else {x})
    # memory axes
    model_values = set(models)
    for cell in _cells(policies, "model.params"):
        if 1e8 <= cell.lo <= 1e12:
            model_values.add(cell.lo * 1.001 if cell.lo_open else cell.lo)
        if 1e8 <= cell.hi <= 1e12:
            model_values.add(cell.hi * 0.999 if cell.hi_open else cell.hi)
    gpus = [g for p in policies for g in p.gpus]
    gpus = list(dict.fromkeys(gpus))
    named = "hardware.gpu" in reads
    price = "hardware.price_per_hour" in reads
    classes: dict[tuple, str] = {}
    weight: dict[str, int] = {}
    for name in gpus:
        key: tuple = tuple((p.gpus.get(name, {}).get("memory_gb"), p.gpus.get(name, {}).get("bf16", True),
                            p.gpus.get(name, {}).get("price_per_hour") if price else None) for p in policies)
        if named or any(name not in p.gpus for p in policies):
            key = (name,)
        rep = classes.setdefault(key, name)
        weight[rep] = weight.get(rep, 0) + 1
    memory_reads = reads & {"hardware.gpu_memory_gb", "hardware.usable_gb", "hardware.total_memory_gb"}
    if memory_reads:
        from ..memory import MemoryConstants, usable_gib

        custom: set[float] = set()
        for fact in sorted(memory_reads):
            for t in _thresholds_of(policies, fact):
                if fact == "hardware.usable_gb":
                    consts = MemoryConstants.from_policy(first.memory)
                    x = _solve(lambda m, c=consts: float(usable_gib(m, c)), t, 0.01, 1e5, False)
                    if x is not None:
                        custom.update({x, x * (1 - 1e-9)})
                elif t > 0:
                    custom.update({t, t * (1 - 1e-9)})
        for mem in sorted(custom):
            weight[f"{CUSTOM}{mem:.12g}"] = 1
    use_cases: list[str] = []
    for policy in policies:
        use_cases.extend(u for u in policy.use_cases if u not in use_cases)
    count_values = sorted(set(counts) | {int(v) for v in _numeric_values(policies, "hardware.gpu_count", 1, True,
                                                                          set()) if v <= 64})
    memory_axes: dict[str, list] = {"model.params": sorted(model_values), "hardware.gpu": list(weight),
                                    "hardware.gpu_count": count_values, "task.use_case": use_cases}
    for name in MEMORY_FACTS:
        if name in memory_axes or name not in needed or name == "hardware.gpu_memory_gb":
            continue
        memory_axes[name] = _axis_values(policies, name, solved.get(name, set()))
    rule_axes: dict[str, list] = {}
    for name in sorted(needed):
        if name in MEMORY_FACTS or name in memory_axes:
            continue
        if name == NUM_TASKS:
            cuts = _numeric_values(policies, NUM_TASKS, 1, True, set())
            values = sorted(set(cuts) | {1, 2})
        else:
            values = _axis_values(policies, name, solved.get(name, set()))
        if len(values) > 1:
            rule_axes[name] = values
    if "data.examples" not in rule_axes and "data.examples" in needed:
        rule_axes["data.examples"] = [50000]
    size = math.prod(len(v) for v in rule_axes.values())
    if size > MAX_RULE_POINTS:
        raise GridTooLarge(f"the rule grid has {size:,} points per memory point (at most {MAX_RULE_POINTS:,}): "
                           + ", ".join(f"{k} x{len(v)}" for k, v in rule_axes.items()))
    return Grid(memory_axes, rule_axes, weight, {"data": {"examples": 50000}})


class GridTooLarge(ValueError):
    """The policies read so many facts with so many boundaries that the rule grid would be too large."""

    exit_code = 2


def _axis_values(policies: list[Any], name: str, extra: set[float]) -> list:
    ft = GIVEN[name]
    if ft.kind == "bool":
        return [False, True]
    if ft.kind == "enum":
        if name == "task.shift":
            return list(SHIFTS)
        if name == "task.quality":
            return list(QUALITIES)
        return list(ft.values or ())
    floors = {"serving.adapters": 1, "hardware.gpu_count": 1, "data.seq_len": 1, "training.seq_len": 1,
              "training.micro_batch_size": 1, "data.avg_tokens": 1, "serving.avg_latency_ms": 1}
    integer = ft.kind == "integer" or name == "data.examples"
    values = _numeric_values(policies, name, floors.get(name, 0), integer, extra)
    defaults = {"data.examples": 50000, "data.avg_tokens": 512, "serving.avg_latency_ms": 200.0,
                "serving.requests_per_day": 0.0, "serving.adapters": 1, "data.seq_len": 2048,
                "training.seq_len": 2048, "training.micro_batch_size": 1, "hardware.host_memory_gb": 0.0}
    if len(values) <= 1 and name in defaults:
        return [defaults[name]]
    return values


# --- evaluation -----------------------------------------------------------------------------------

@dataclass
class MemoryResult:
    """One policy's outcomes at one memory point, as bitmasks over the rule grid."""

    error: str | None = None
    chosen: dict[str | None, int] = field(default_factory=dict)  # rule id (None: infeasible) -> mask
    labels: dict[str | None, tuple] = field(default_factory=dict)  # rule id -> (method, rank)
    codes: dict[str, int] = field(default_factory=dict)  # "warn:<code>" / "note:<code>" -> mask
    advice: dict[str, int] = field(default_factory=dict)  # advise rule id -> mask
    holds: dict[str, int] = field(default_factory=dict)  # select rule id -> where its conditions hold (keep=True)
    derived: Any = None  # the memory point's derivation (``GridEvaluator.evaluate(keep=True)``)


def _mask_repeat(pattern: int, period: int, count: int) -> int:
    if count <= 1:
        return pattern
    return pattern * (((1 << (period * count)) - 1) // ((1 << period) - 1))


class _RuleGrid:
    """Bitmasks of the rule grid: one per (axis, value index), and per combination of a few axes."""

    def __init__(self, grid: Grid):
        self.names = list(grid.rule_axes)
        self.sizes = [len(v) for v in grid.rule_axes.values()]
        self.values = list(grid.rule_axes.values())
        self.n = math.prod(self.sizes)
        self.all = (1 << self.n) - 1
        self.cyl: list[list[int]] = []
        stride = self.n
        for size in self.sizes:
            stride //= size
            period = stride * size
            block = (1 << stride) - 1
            self.cyl.append([_mask_repeat(block << (i * stride), period, self.n // period) for i in range(size)])
        self._combo: dict[tuple, int] = {}

    def combo_mask(self, axes: tuple[int, ...], idx: tuple[int, ...]) -> int:
        key = (axes, idx)
        found = self._combo.get(key)
        if found is None:
            found = self.all
            for a, i in zip(axes, idx, strict=True):
                found &= self.cyl[a][i]
            self._combo[key] = found
        return found


_KEYS = itertools.count()


class _Compiled:
    """A rule's check with what it reads split into rule axes, memory facts and verdict facts."""

    def __init__(self, rule: Any, compiled: Any, grid: _RuleGrid, model: FactModel, memory_names: set[str]):
        self.rule = rule
        self.check = compiled.check
        self.id = rule.id
        self.key = next(_KEYS)  # memo key: a variant of a rule keeps its id but not its check
        reads = rule_reads(rule)
        axes: set[int] = set()
        self.memory_keys: list[str] = []
        self.verdict_keys: list[str] = []
        self.mixed = False
        for fact in sorted(reads):
            if fact.startswith("verdict."):
                self.verdict_keys.append(fact)
                continue
            if fact in grid.names:
                axes.add(grid.names.index(fact))
                continue
            deps = model.given_deps(fact)
            on_axes = {grid.names.index(d) for d in deps if d in grid.names}
            axes |= on_axes
            if deps & memory_names or fact not in model.flat_keys:
                self.memory_keys.append(fact)
                if on_axes:
                    self.mixed = True
        self.axes = tuple(sorted(axes))
        self.combos = list(itertools.product(*(range(grid.sizes[a]) for a in self.axes)))
        # a condition that reads only rule axes (and constants) has the same mask at every memory point
        self.constant: int | None = None
        self.static = not self.memory_keys and not self.verdict_keys


@dataclass
class _Point:
    """A memory point as evaluated: its index, normalized facts, memory-derived flat facts and derivation."""

    index: int
    facts: dict
    mem_flat: dict
    derived: Any


class GridEvaluator:
    """Evaluates one policy over a grid with the decision core's own derivation and rule checks.

    Per memory point: ``Evaluator.derive`` once; per rule, its compiled check once per combination
    of the rule axes it reads (memoised across memory points on the memory facts it reads), giving
    bitmasks; selection (first hit whose verdict fits), advice and message codes are bit operations.
    ``difference`` compares a variant of the policy (other conditions or order, the same verdicts)
    with an evaluation kept with ``keep=True``, re-checking only the rules that differ.
    """

    def __init__(self, policy: Any):
        from ..evaluate import evaluator_for

        self.policy = policy
        self.evaluator = evaluator_for(policy)
        self.evaluations = 0
        self.checks = 0
        self.points: dict[tuple, _Point] = {}
        self._memo: dict[tuple, int] = {}
        self._flats: dict[tuple, dict] = {}
        self._rg: _RuleGrid | None = None
        self._model: FactModel | None = None
        self._mnames: set[str] = set()
        self._select: dict[str, _Compiled] = {}

    def _compile(self, rule: Any, compiled: Any) -> _Compiled:
        assert self._rg is not None and self._model is not None
        return _Compiled(rule, compiled, self._rg, self._model, self._mnames)

    def _flat(self, point: _Point, axes: tuple, idx: tuple) -> dict:
        from ..derive import fact_flat

        rg = self._rg
        assert rg is not None
        key = (point.index, axes, idx)
        found = self._flats.get(key)
        if found is None:
            groups = {rg.names[a].split(".")[0] for a in axes}
            f = {**point.facts, **{g: dict(point.facts[g]) for g in groups}}
            for a, i in zip(axes, idx, strict=True):
                _set_value(f, rg.names[a], rg.values[a][i])
            found = fact_flat(self.policy, f)
            found.update(point.mem_flat)
            if len(self._flats) > 200_000:
                self._flats.clear()
            self._flats[key] = found
        return found

    def _holds(self, c: _Compiled, point: _Point, extra: dict) -> int:
        """Return the mask of rule-grid points where ``c``'s condition holds at ``point`` (with verdict facts)."""
        if c.constant is not None:
            return c.constant
        rg = self._rg
        assert rg is not None
        mkey = tuple(point.derived.flat.get(k) for k in c.memory_keys)
        key = (c.key, point.index if c.mixed else None, mkey, tuple(extra.get(k) for k in c.verdict_keys))
        found = self._memo.get(key)
        if found is None:
            found = 0
            for idx in c.combos:
                flat = self._flat(point, c.axes, idx)
                if extra:
                    flat = {**flat, **extra}
                self.checks += 1
                if c.check(flat) is None:
                    found |= rg.combo_mask(c.axes, idx)
            self._memo[key] = found
            if c.static:
                c.constant = found
        return found

    def _advice_mask(self, c: _Compiled, point: _Point, chosen: dict, vfs: dict) -> int:
        if not c.verdict_keys:
            return self._holds(c, point, {})
        by_verdict: dict[tuple, int] = {}
        extras: dict[tuple, dict] = {}
        for rid, mask in chosen.items():
            key = tuple(vfs[rid][k] for k in c.verdict_keys)
            by_verdict[key] = by_verdict.get(key, 0) | mask
            extras[key] = vfs[rid]
        matched = 0
        for key, mask in by_verdict.items():
            matched |= mask & self._holds(c, point, extras[key])
        return matched

    def evaluate(self, grid: Grid, spot_checks: int = 20, seed: int = 0, advice: bool = True,
                 keep: bool = False, keep_holds: bool = True) -> dict[tuple, MemoryResult]:
        """Return the result at every memory point. Raises GridMismatch when a spot check disagrees.

        ``advice=False`` skips advise rules and messages (selection only); ``keep`` keeps each memory
        point's derivation (``MemoryResult.derived``), the points' state (for ``difference`` and
        ``holds_at``) and, with ``keep_holds``, where every select rule's condition holds
        (``MemoryResult.holds``).
        """
        from ..derive import fact_flat
        from ..evaluate import verdict_facts
        from ..facts import FactsError, normalize_facts

        policy = self.policy
        ev = self.evaluator
        self._rg = rg = _RuleGrid(grid)
        self._model = FactModel(policy)
        self._mnames = set(grid.memory_axes)
        self._memo.clear()
        self._flats.clear()
        self.points.clear()
        select = [self._compile(r, c) for r, c in zip(policy.select_rules, ev.select, strict=True)]
        advise = [self._compile(r, c) for r, c in zip(policy.advise_rules, ev.advise, strict=True)]
        out: dict[tuple, MemoryResult] = {}
        mem_names = list(grid.memory_axes)
        base_rule = {name: values[0] for name, values in grid.rule_axes.items()}
        normalized: dict[tuple, Any] = {}
        for mi, mem in enumerate(grid.memory_points()):
            point = dict(zip(mem_names, mem, strict=True))
            nkey = tuple(v for k, v in point.items() if k not in ("model.params", "hardware.gpu_count"))
            try:
                if nkey not in normalized:
                    given = given_facts({**point, **base_rule}, grid.base)
                    try:
                        normalized[nkey] = normalize_facts(given, policy)
                    except FactsError as exc:
                        normalized[nkey] = exc
                base = normalized[nkey]
                if isinstance(base, FactsError):
                    raise base
                facts = {**base, "model": {**base["model"], "params": float(point["model.params"])},
                         "hardware": {**base["hardware"], "gpu_count": int(point["hardware.gpu_count"])}}
                derived = ev.derive(facts)
            except (FactsError, ValueError) as exc:
                code = exc.diagnostics[0].code if isinstance(exc, FactsError) else type(exc).__name__
                out[mem] = MemoryResult(error=code)
                continue
            self.evaluations += 1
            base_ff = fact_flat(policy, facts)
            state = _Point(mi, facts, {k: v for k, v in derived.flat.items() if base_ff.get(k, _MISSING) != v},
                           derived)
            if keep:
                self.points[mem] = state
            res = MemoryResult(derived=derived if keep else None)
            remaining = rg.all
            for c in select:
                cand = derived.candidates[c.id]
                if keep and keep_holds:
                    res.holds[c.id] = self._holds(c, state, {})
                if not cand.fits or not remaining:
                    continue
                hit = remaining & self._holds(c, state, {})
                if hit:
                    res.chosen[c.id] = hit
                    res.labels[c.id] = (cand.method, cand.rank)
                    remaining &= ~hit
            if remaining:
                res.chosen[None] = remaining
            for rid, mask in res.chosen.items():
                if rid is not None:
                    rule = policy.rule(rid)
                    for w in rule.warn:
                        res.codes[f"warn:{w['code']}"] = res.codes.get(f"warn:{w['code']}", 0) | mask
                    for n in rule.note:
                        res.codes[f"note:{n['code']}"] = res.codes.get(f"note:{n['code']}", 0) | mask
            vfs = {rid: verdict_facts(derived.candidates[rid] if rid is not None else None) for rid in res.chosen}
            for c in advise if advice else ():
                matched = self._advice_mask(c, state, res.chosen, vfs)
                if matched:
                    res.advice[c.id] = matched
                    for w in c.rule.warn:
                        res.codes[f"warn:{w['code']}"] = res.codes.get(f"warn:{w['code']}", 0) | matched
                    for n in c.rule.note:
                        res.codes[f"note:{n['code']}"] = res.codes.get(f"note:{n['code']}", 0) | matched
            out[mem] = res
        self._spot_check(grid, out, spot_checks if advice else 0, seed)
        if keep:
            self._select = {c.id: c for c in select}
        return out

    def holds_at(self, mem: tuple, rule_id: str) -> int:
        """Return where select rule ``rule_id``'s conditions hold at memory point ``mem`` (after ``evaluate(keep=True)``)."""
        return self._holds(self._select[rule_id], self.points[mem], {})

    def difference(self, results: dict[tuple, MemoryResult], variant: Any,
                   order: list[tuple] | None = None) -> tuple[tuple, int] | None:
        """Return (memory point, mask of rule-grid points) where ``variant`` decides differently, or None.

        ``variant`` is this policy with other conditions or another rule order and the same verdicts
        (a mutant); ``results`` come from ``evaluate(..., keep=True)``. Different means another chosen
        rule (or feasibility), or other warning or note codes. Only the rules that differ are checked.
        Memory points are tried in ``order`` (default: the grid's).
        """
        from ..evaluate import Evaluator, verdict_facts

        orig = {r.id: r for r in self.policy.rules}
        changed = {r.id for r in variant.rules
                   if r.id not in orig or r.when != orig[r.id].when or r.priority != orig[r.id].priority}
        order_changed = [r.id for r in variant.select_rules] != [r.id for r in self.policy.select_rules]
        var_ev = Evaluator(variant)
        compiled = {c.id: c for c in [*var_ev.select, *var_ev.advise]}
        var_rules = {r.id: self._compile(r, compiled[r.id]) for r in variant.rules if r.id in changed}
        code_rules: dict[str, list[Any]] = {}
        for r in self.policy.rules:
            for m in [*r.warn, *r.note]:
                code_rules.setdefault(m["code"], []).append(r)
        for mem in order or list(results):
            res = results[mem]
            if res.error:
                continue
            point = self.points[mem]
            chosen = res.chosen
            if order_changed or changed & set(res.holds):
                remaining = self._rg.all if self._rg else 0
                chosen = {}
                for r in variant.select_rules:
                    cand = point.derived.candidates[r.id]
                    if not cand.fits or not remaining:
                        continue
                    held = self._holds(var_rules[r.id], point, {}) if r.id in changed else res.holds[r.id]
                    hit = remaining & held
                    if hit:
                        chosen[r.id] = hit
                        remaining &= ~hit
                if remaining:
                    chosen[None] = remaining
                diff = 0
                for rid in set(chosen) | set(res.chosen):
                    diff |= chosen.get(rid, 0) ^ res.chosen.get(rid, 0)
                if diff:
                    return mem, diff
            advise_changed = [rid for rid in changed if rid in var_rules and var_rules[rid].rule.kind == "advise"]
            if not advise_changed:
                continue
            vfs = {rid: verdict_facts(point.derived.candidates[rid] if rid is not None else None) for rid in chosen}
            matched = dict(res.advice)
            for rid in advise_changed:
                matched[rid] = self._advice_mask(var_rules[rid], point, chosen, vfs)
            for rid in advise_changed:
                rule = var_rules[rid].rule
                for m in [*rule.warn, *rule.note]:
                    kind = "warn" if m in rule.warn else "note"
                    new = 0
                    for src in code_rules.get(m["code"], []):
                        new |= chosen.get(src.id, 0) if src.kind == "select" else matched.get(src.id, 0)
                    diff = new ^ res.codes.get(f"{kind}:{m['code']}", 0)
                    if diff:
                        return mem, diff
        return None

    def outcome(self, grid: Grid, results: dict[tuple, MemoryResult], mem: tuple, index: int) -> Outcome:
        """Return the outcome at one grid point from the evaluated results."""
        res = results[mem]
        if res.error:
            return Outcome(False, error=res.error)
        bit = 1 << index
        rid = next((r for r, m in res.chosen.items() if m & bit), None)
        warn = frozenset(c.split(":", 1)[1] for c, m in res.codes.items() if m & bit and c.startswith("warn:"))
        note = frozenset(c.split(":", 1)[1] for c, m in res.codes.items() if m & bit and c.startswith("note:"))
        if rid is None:
            return Outcome(False, warnings=warn, notes=note)
        method, rank = res.labels[rid]
        return Outcome(True, method, rank, rid, warnings=warn, notes=note)

    def _spot_check(self, grid: Grid, out: dict[tuple, MemoryResult], n: int, seed: int) -> None:
        from ..facts import FactsError, normalize_facts

        mems = [m for m, r in out.items() if r.error is None]
        if not mems or n <= 0:
            return
        rng = random.Random(seed)
        size = grid.rule_size
        for _ in range(n):
            mem = rng.choice(mems)
            index = rng.randrange(size)
            expected = self.outcome(grid, out, mem, index)
            given = grid.facts(mem, index)
            try:
                ev = self.evaluator.evaluate(normalize_facts(given, self.policy))
            except FactsError as exc:
                raise GridMismatch(f"grid point {given} rejected on re-evaluation: {exc}") from None
            c = ev.candidate
            codes_w: set[str] = set()
            codes_n: set[str] = set()
            for rid in ([ev.chosen] if ev.chosen else []) + list(ev.advice):
                rule = self.policy.rule(rid)
                codes_w.update(w["code"] for w in rule.warn)
                codes_n.update(x["code"] for x in rule.note)
            got = Outcome(True, c.method, c.rank, ev.chosen, warnings=frozenset(codes_w),
                          notes=frozenset(codes_n)) if c else Outcome(False, warnings=frozenset(codes_w),
                                                                       notes=frozenset(codes_n))
            if got != expected:
                raise GridMismatch(f"grid evaluator found {expected} but the full decision found {got} for {given}")


_MISSING = object()


def _set_value(facts: dict, name: str, value: Any) -> None:
    group, key = name.split(".")
    if name == NUM_TASKS:
        facts["data"]["num_tasks"] = int(value)
        return
    ft = GIVEN[name]
    if ft.kind == "integer":
        value = int(value)
    elif ft.kind == "number":
        value = float(int(value)) if name == "data.examples" else float(value)
    facts[group][key] = value


def point_weight(grid: Grid, mem: tuple) -> int:
    """Return how many fact sets a memory point's rule-grid points each stand for (its GPU class size)."""
    gpu = mem[list(grid.memory_axes).index("hardware.gpu")]
    return grid.gpu_weight.get(gpu, 1)
