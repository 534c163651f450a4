"""Representative grids of fact sets and the policy's outcome at each point (for `decide diff`).

The grid crosses *memory* dimensions (model size, GPU, GPU count, use case: they change the
derived facts and every candidate's memory estimate) with *rule-only* dimensions (data size,
shift, quality, serving facts: they only change the values conditions read). Every point is
decided by the decision core's own evaluator (``Evaluator.choose``): its derivation cache resolves
candidates once per memory point, so rule-only points cost only the rule checks, and every
derived fact comes from ``ruleengine.derive`` (no second copy). A random sample of grid points is
re-decided as full decisions through durable-rules and must agree, or ``GridMismatch`` is raised.

GPUs that no condition names and that have the same memory and bf16 in both policies decide
identically; one of them is evaluated and its outcome counted for each (``weight``).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

from ..vocabulary import GIVEN, QUALITIES, SHIFTS
from .analysis import MODEL_GRID, analyse
from .intervals import INF

COUNTS = (1, 2, 4, 8)
RULE_DIMS = ("data.examples", "task.shift", "task.quality", "serving.adapters", "serving.latency_sensitive",
             "serving.requests_per_day", "serving.avg_latency_ms")
MEMORY_DIMS = ("model.params", "hardware.gpu", "hardware.gpu_count", "task.use_case")


class GridMismatch(RuntimeError):
    """The fast grid evaluator disagrees with evaluate_policy: a bug, never a result."""

    exit_code = 4


@dataclass(frozen=True)
class Outcome:
    """What a policy decided for one fact set: the chosen rule and verdict, or why there is none."""

    feasible: bool
    method: str | None = None
    rank: int | None = None
    rule: str | None = None
    error: str | None = None  # the fact set is invalid under this policy (e.g. an unknown GPU)

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


def _cells(policies: list[Any], fact: str) -> list[Any]:
    """Return the exact partition of ``fact``'s range by every interval the policies' conditions use."""
    cells: list[Any] = []
    dim = None
    for policy in policies:
        analysis = analyse(policy)
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
    return sorted(cells, key=lambda iv: (iv.lo, iv.lo_open)) if dim is not None else []


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


@dataclass
class Grid:
    """The axes of a representative grid and the number of fact sets it stands for."""

    memory_axes: dict[str, list]
    rule_axes: dict[str, list]
    gpu_weight: dict[str, int]
    base: dict

    @property
    def size(self) -> int:
        """Return the number of fact sets the grid represents (GPU classes weighted)."""
        n = sum(self.gpu_weight.values())
        for name, values in {**self.memory_axes, **self.rule_axes}.items():
            if name != "hardware.gpu":
                n *= len(values)
        return n

    def describe(self) -> str:
        """Return a one-line description of the axes."""
        parts = []
        for name, values in {**self.memory_axes, **self.rule_axes}.items():
            if name == "hardware.gpu":
                parts.append(f"{sum(self.gpu_weight.values())} GPUs")
            else:
                parts.append(f"{name} x{len(values)}")
        return ", ".join(parts)


def build_grid(policies: list[Any], models: tuple = MODEL_GRID, counts: tuple = COUNTS) -> Grid:
    """Return a representative grid over the facts the policies' select rules read.

    Models 0.5B-70B (plus the model-size thresholds), every catalog GPU of either policy, GPU counts
    1-8, data sizes around every data threshold, every use case, shift and quality, and the
    boundary values of any other given fact a select rule of either policy compares.
    """
    select_dims: set[str] = set()
    for policy in policies:
        for info in analyse(policy).select:
            for box in info.over:
                select_dims.update(name for name, _ in box)
    model_values = set(models)
    for cell in _cells(policies, "model.params"):
        if 1e8 <= cell.lo <= 1e12:
            model_values.add(cell.lo * 1.001 if cell.lo_open else cell.lo)
        if 1e8 <= cell.hi <= 1e12:
            model_values.add(cell.hi * 0.999 if cell.hi_open else cell.hi)
    model_axis: list[Any] = sorted(model_values)
    gpus: dict[str, list] = {}
    for policy in policies:
        for name in policy.gpus:
            gpus.setdefault(name, [])
    named = select_dims & {"hardware.gpu"}
    classes: dict[tuple, str] = {}
    weight: dict[str, int] = {}
    for name in gpus:
        key: tuple = tuple((p.gpus.get(name, {}).get("memory_gb"), p.gpus.get(name, {}).get("bf16", True))
                    for p in policies)
        if named or any(name not in p.gpus for p in policies):
            key = (name,)
        rep = classes.setdefault(key, name)
        weight[rep] = weight.get(rep, 0) + 1
    use_cases: list[str] = []
    for policy in policies:
        use_cases.extend(u for u in policy.use_cases if u not in use_cases)
    ex_cells = _cells(policies, "data.examples")
    examples = [_representative(c, True, 0) for c in ex_cells] if len(ex_cells) > 1 else [50000.0]
    rule_axes: dict[str, list] = {"data.examples": [int(x) for x in examples], "task.shift": list(SHIFTS),
                                  "task.quality": list(QUALITIES)}
    for dim in sorted(select_dims):
        if dim in rule_axes or dim in MEMORY_DIMS or dim not in RULE_DIMS:
            continue
        ft = GIVEN[dim]
        if ft.kind == "bool":
            rule_axes[dim] = [False, True]
        else:
            floor = 1 if dim == "serving.adapters" else 0
            values = [_representative(c, ft.kind == "integer", floor) for c in _cells(policies, dim)]
            rule_axes[dim] = [int(x) if ft.kind == "integer" else float(x) for x in values]
    memory_axes: dict[str, list[Any]] = {"model.params": model_axis, "hardware.gpu": list(weight), "hardware.gpu_count": list(counts),
                   "task.use_case": use_cases}
    return Grid(memory_axes, rule_axes, weight, {})


def _given(point: dict[str, Any]) -> dict:
    facts: dict[str, dict] = {}
    for name, value in point.items():
        group, key = name.split(".")
        facts.setdefault(group, {})[key] = value
    return facts


class GridEvaluator:
    """Evaluates one policy over a grid with the decision core's own evaluator (``Evaluator.choose``).

    Derived facts and candidates come from the evaluator's derivation cache (one memory point per
    model, GPU, GPU count and use case), so the rule-only dimensions cost only the rule checks.
    """

    def __init__(self, policy: Any):
        from ..evaluate import evaluator_for

        self.policy = policy
        self.evaluator = evaluator_for(policy)
        self.evaluations = 0

    def outcomes(self, grid: Grid, spot_checks: int = 20, seed: int = 0) -> dict[tuple, Outcome]:
        """Return the outcome at every grid point (keyed by the point's values in axis order).

        Raises GridMismatch when a spot check (a full decision with durable-rules) disagrees.
        """
        from ..facts import FactsError, normalize_facts

        policy = self.policy
        out: dict[tuple, Outcome] = {}
        rule_names = list(grid.rule_axes)
        rule_points = list(itertools.product(*grid.rule_axes.values()))
        mem_names = list(grid.memory_axes)
        first = dict(zip(rule_names, rule_points[0], strict=True))
        groups = {name.split(".")[0] for name in rule_names}
        normalized: dict[tuple, Any] = {}
        for mem in itertools.product(*grid.memory_axes.values()):
            mpoint = dict(zip(mem_names, mem, strict=True))
            nkey = (mpoint.get("task.use_case"), mpoint.get("hardware.gpu"))
            try:
                if nkey not in normalized:
                    normalized[nkey] = normalize_facts(_given({**mpoint, **first}), policy)
                base = normalized[nkey]
                facts = {**base, "model": {**base["model"], "params": float(mpoint["model.params"])},
                         "hardware": {**base["hardware"], "gpu_count": int(mpoint["hardware.gpu_count"])}}
                self.evaluator.derive(facts)
            except (FactsError, ValueError) as exc:
                bad = Outcome(False, error=exc.diagnostics[0].code if isinstance(exc, FactsError) else type(exc).__name__)
                for rp in rule_points:
                    out[mem + rp] = bad
                continue
            for rp in rule_points:
                point = {g: dict(facts[g]) for g in groups}
                for name, value in zip(rule_names, rp, strict=True):
                    group, key = name.split(".")
                    point[group][key] = value
                rule, cand = self.evaluator.choose({**facts, **point})
                out[mem + rp] = Outcome(True, cand.method, cand.rank, rule) if cand else Outcome(False)
            self.evaluations += len(rule_points)
        self._spot_check(grid, out, spot_checks, seed)
        return out

    def _spot_check(self, grid: Grid, out: dict[tuple, Outcome], n: int, seed: int) -> None:
        from ..facts import FactsError

        keys = list(out)
        rng = random.Random(seed)
        names = list(grid.memory_axes) + list(grid.rule_axes)
        for key in rng.sample(keys, min(n, len(keys))):
            expected = out[key]
            if expected.error:
                continue
            given = _given(dict(zip(names, key, strict=False)))
            try:
                ev = self.evaluator.evaluate(normalize(self.policy, given))
            except FactsError as exc:
                raise GridMismatch(f"grid point {given} rejected on re-evaluation: {exc}") from None
            c = ev.candidate
            got = Outcome(True, c.method, c.rank, ev.chosen) if c else Outcome(False)
            if got != expected:
                raise GridMismatch(f"grid evaluator chose {expected} but the full decision chose {got} for {given}")


def normalize(policy: Any, given: dict) -> dict:
    """Return the normalized facts of a grid point's given facts. Raises FactsError."""
    from ..facts import normalize_facts

    return normalize_facts(given, policy)


def point_facts(grid: Grid, key: tuple) -> dict:
    """Return the given-facts document of a grid point."""
    names = list(grid.memory_axes) + list(grid.rule_axes)
    return _given(dict(zip(names, key, strict=False)))


def point_weight(grid: Grid, key: tuple) -> int:
    """Return how many fact sets a grid point stands for (its GPU class size)."""
    gpu = key[list(grid.memory_axes).index("hardware.gpu")]
    return grid.gpu_weight.get(gpu, 1)
