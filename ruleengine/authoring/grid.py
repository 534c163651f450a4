"""Representative grids of fact sets and a fast evaluator over them (for `decide diff`).

The grid crosses *memory* dimensions (model size, GPU, GPU count, use case: they change the
derived facts and every candidate's memory estimate) with *rule-only* dimensions (data size,
shift, quality, serving facts: they only change the values conditions read). The evaluator
derives once per memory point (``ruleengine.derive.derive``) and re-evaluates the conditions
for every rule-only combination, patching the few derived values that follow from them
(``data.tokens_total``, ``serving.unmerged_gpu_hours_per_day``). A random sample of grid points
is re-decided from scratch with ``evaluate_policy(..., use_engine=False)`` and must agree,
or ``GridMismatch`` is raised.

GPUs that no condition names and that have the same memory and bf16 in both policies decide
identically; one of them is evaluated and its outcome counted for each (``weight``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..conditions import All, AnyOf, Cmp, Condition, Not, comparisons
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


def compile_predicate(cond: Condition) -> Callable[[dict], bool]:
    """Return a fast function equivalent to ``conditions.evaluate(cond, flat)``.

    The condition is translated into one Python expression over ``f`` (the flat facts), with
    literal values written by ``repr``; the operators are Python's, as in ``conditions.compare``.
    """
    source = _expr(cond)
    return eval(f"lambda f: {source}", {"__builtins__": {}}, {})  # noqa: S307 - built from literals only


_PY_OPS = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "in": "in", "not_in": "not in"}


def _expr(cond: Condition) -> str:
    if isinstance(cond, Cmp):
        lhs = f"f[{cond.fact!r}]"
        if cond.other_fact:
            rhs = f"f[{cond.other_fact!r}]"
        elif cond.op in ("in", "not_in"):
            rhs = repr(tuple(_literal(v) for v in cond.value))
        else:
            rhs = repr(_literal(cond.value))
        return f"({lhs} {_PY_OPS[cond.op]} {rhs})"
    if isinstance(cond, Not):
        return f"(not {_expr(cond.item)})"
    if isinstance(cond, All):
        return "(" + " and ".join(_expr(c) for c in cond.items) + ")" if cond.items else "True"
    if isinstance(cond, AnyOf):
        return "(" + " or ".join(_expr(c) for c in cond.items) + ")" if cond.items else "False"
    raise TypeError(cond)


def _literal(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    raise TypeError(f"unexpected literal {v!r}")


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


class _NoRules:
    """A view of a policy without select rules: ``derive`` on it computes only the shared derived facts."""

    select_rules: list = []

    def __init__(self, policy: Any):
        self._policy = policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)


def _fingerprint(policy: Any, sections: tuple[str, ...]) -> str:
    import hashlib
    import json

    data = {s: getattr(policy, s) for s in sections}
    data["multitask_temperature"] = policy.thresholds.get("multitask_temperature")
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class GridCache:
    """Derived facts and candidates shared by the evaluators of one grid (old and new policy).

    Entries are keyed by a fingerprint of what they depend on: derived facts by the policy's
    ``memory``, ``defaults``, ``gpus`` and ``use_cases``; candidates by ``memory``, ``defaults``
    and ``gpus`` plus the resolved verdict spec, so an edit of rules or thresholds re-uses them.
    """

    def __init__(self) -> None:
        self.derived: dict[tuple, Any] = {}
        self.candidates: dict[tuple, Any] = {}
        self.normalized: dict[tuple, Any] = {}
        self.derives = 0
        self.resolves = 0


class GridEvaluator:
    """Evaluates one policy over a grid: derived facts once per memory point, conditions per rule point."""

    def __init__(self, policy: Any):
        from .analysis import spec_key, verdict_spec

        self.policy = policy
        self.select = [(r.id, compile_predicate(r.when)) for r in policy.select_rules]
        self.specs = {r.id: {uc: verdict_spec(policy, r.then, uc) for uc in policy.use_cases} or
                      {None: verdict_spec(policy, r.then, None)} for r in policy.select_rules}
        self.spec_keys = {rid: {uc: spec_key(sp) for uc, sp in per.items()} for rid, per in self.specs.items()}
        self.flat_fp = _fingerprint(policy, ("memory", "defaults", "gpus", "use_cases"))
        self.cand_fp = _fingerprint(policy, ("memory", "defaults", "gpus"))
        self.evaluations = 0

    def outcomes(self, grid: Grid, spot_checks: int = 20, seed: int = 0,
                 cache: GridCache | None = None) -> dict[tuple, Outcome]:
        """Return the outcome at every grid point (keyed by the point's values in axis order).

        ``cache`` may be shared with the evaluator of another policy on the same grid. Raises
        GridMismatch when a spot check against ``evaluate_policy`` disagrees.
        """
        from ..facts import FactsError

        policy = self.policy
        cache = cache if cache is not None else GridCache()
        out: dict[tuple, Outcome] = {}
        rule_names = list(grid.rule_axes)
        rule_points = list(itertools.product(*grid.rule_axes.values()))
        overhead = policy.thresholds.get("unmerged_latency_overhead", 0.05)
        referenced = {c.fact for r in policy.select_rules for c in comparisons(r.when)} | {
            c.other_fact for r in policy.select_rules for c in comparisons(r.when) if c.other_fact}
        patch_tokens = "data.tokens_total" in referenced
        patch_unmerged = "serving.unmerged_gpu_hours_per_day" in referenced
        mem_names = list(grid.memory_axes)
        first = dict(zip(rule_names, rule_points[0], strict=True))
        for mem in itertools.product(*grid.memory_axes.values()):
            mpoint = dict(zip(mem_names, mem, strict=True))
            try:
                facts, flat, cands = self._memory_point(mpoint, first, cache)
            except (FactsError, ValueError) as exc:
                bad = Outcome(False, error=exc.diagnostics[0].code if isinstance(exc, FactsError) else type(exc).__name__)
                for rp in rule_points:
                    out[mem + rp] = bad
                continue
            live = [(rid, pred) for rid, pred in self.select if cands[rid].fits]
            chosen_outcome = {rid: Outcome(True, cands[rid].method, cands[rid].rank, rid) for rid, _ in live}
            infeasible = Outcome(False)
            avg_tokens = float(facts["data"]["avg_tokens"])
            for rp in rule_points:
                for name, value in zip(rule_names, rp, strict=True):
                    flat[name] = value
                if patch_tokens:
                    flat["data.tokens_total"] = float(flat["data.examples"]) * avg_tokens
                if patch_unmerged:
                    flat["serving.unmerged_gpu_hours_per_day"] = (float(flat["serving.requests_per_day"])
                                                                  * float(flat["serving.avg_latency_ms"]) / 1000.0
                                                                  * overhead / 3600.0)
                result = infeasible
                for rid, pred in live:
                    if pred(flat):
                        result = chosen_outcome[rid]
                        break
                out[mem + rp] = result
            self.evaluations += len(rule_points)
        self._spot_check(grid, out, spot_checks, seed)
        return out

    def _memory_point(self, mpoint: dict, first_rule_point: dict, cache: GridCache) -> tuple[dict, dict, dict]:
        """Return (normalized facts, flat derived facts, candidate per select rule) of one memory point."""
        from ..derive import derive, resolve_candidate
        from ..facts import normalize_facts

        policy = self.policy
        uc = mpoint.get("task.use_case")
        nkey = (self.flat_fp, uc, mpoint.get("hardware.gpu"))
        if nkey not in cache.normalized:
            cache.normalized[nkey] = normalize_facts(_given({**mpoint, **first_rule_point}), policy)
        base = cache.normalized[nkey]
        params, count = float(mpoint["model.params"]), int(mpoint["hardware.gpu_count"])
        facts = {**base, "model": {**base["model"], "params": params},
                 "hardware": {**base["hardware"], "gpu_count": count}}
        # derived facts shared by every use case: derive on the policy without its select rules
        dkey = (self.flat_fp, params, mpoint.get("hardware.gpu"), count)
        if dkey not in cache.derived:
            cache.derived[dkey] = derive(_NoRules(policy), facts)
            cache.derives += 1
        derived = cache.derived[dkey]
        flat = dict(derived.flat)
        row = policy.use_cases.get(uc, {})
        flat["task.use_case"] = uc
        flat["use_case.method"] = row.get("method", "lora")
        flat["use_case.rank"] = int(row.get("rank") or 0)
        cands = {}
        for rid in self.specs:
            spec_uc = uc if uc in self.specs[rid] else None
            ckey = (self.cand_fp, params, mpoint.get("hardware.gpu"), count, self.spec_keys[rid][spec_uc])
            if ckey not in cache.candidates:
                cache.candidates[ckey] = resolve_candidate(policy, self.specs[rid][spec_uc], facts, derived.arch,
                                                           derived.gpu, derived.constants, derived.usable_gb)
                cache.resolves += 1
            cands[rid] = cache.candidates[ckey]
        return facts, flat, cands

    def _spot_check(self, grid: Grid, out: dict[tuple, Outcome], n: int, seed: int) -> None:
        from ..engine import evaluate_policy
        from ..facts import FactsError, normalize_facts

        keys = list(out)
        rng = random.Random(seed)
        names = list(grid.memory_axes) + list(grid.rule_axes)
        for key in rng.sample(keys, min(n, len(keys))):
            expected = out[key]
            if expected.error:
                continue
            given = _given(dict(zip(names, key, strict=False)))
            try:
                ev = evaluate_policy(self.policy, normalize_facts(given, self.policy), use_engine=False)
            except FactsError as exc:
                raise GridMismatch(f"grid point {given} rejected on re-evaluation: {exc}") from None
            c = ev.candidate
            got = Outcome(True, c.method, c.rank, ev.chosen) if c else Outcome(False)
            if got != expected:
                raise GridMismatch(f"grid evaluator chose {expected} but evaluate_policy chose {got} for {given}")


def point_facts(grid: Grid, key: tuple) -> dict:
    """Return the given-facts document of a grid point."""
    names = list(grid.memory_axes) + list(grid.rule_axes)
    return _given(dict(zip(names, key, strict=False)))


def point_weight(grid: Grid, key: tuple) -> int:
    """Return how many fact sets a grid point stands for (its GPU class size)."""
    gpu = key[list(grid.memory_axes).index("hardware.gpu")]
    return grid.gpu_weight.get(gpu, 1)
