"""`decide check`: static analysis of a policy, with file:line, a help line and exact/sampled provenance.

Checks (codes), and how each is decided:

=========================  ========  ==================================================================
code                       severity  how
=========================  ========  ==================================================================
rule-never-holds           error     exact: the rule's conditions have no solution (box algebra)
rule-shadowed              error     exact when the covering rules resolve to the same verdict for every
                                     fact set (``analysis.resolved_key``);
                           /warning  *sampled* (warning) when fit dominance between different verdicts
                                     was sampled over model sizes x GPU counts x bf16
advise-never-matches       error     exact: verdict facts (method, rank, sharding, memory, headroom) no
                                     select rule's verdict can have where the advise rule's other
                                     conditions hold
rule-overlap               warning   exact: two select rules of equal priority with different verdicts
                                     whose conditions hold together (ties are broken by id)
select-gap                 warning   exact: a region where no select rule's conditions hold, with an
                                     example fact set confirmed by evaluating the policy
rule-never-fits            error     sampled: the verdict exceeds usable memory on every catalog GPU
                                     with 1..max GPUs, for the smallest model the conditions allow
fit-gap                    warning   sampled grid, confirmed: a select rule's conditions hold and no
                                     rule chooses a verdict that fits, while some method would fit
use-case-method-override   warning   exact: a ``use_case: true`` rule turns a row into a method of
                                     another family (e.g. a full_ft row into qlora: no rank)
use-case-row-unused        warning   exact: no ``use_case: true`` rule can use the row's verdict
use-case-missing-value     note      exact: ``use_case.method`` / ``use_case.rank`` values no row has
threshold-unused           warning   exact: no condition, message or engine setting reads it
gpu-unused                 note      exact: no rule, default or test case names the GPU
version-not-bumped         error     exact: the version is locked with another semantic hash
=========================  ========  ==================================================================

Use-case rows with ranks out of range, non powers of two, unknown target modules and unknown
use cases named in rules are rejected by the compiler already (exit 3), with their locations.
Compiler warnings (e.g. ``rank-not-applicable``) are reported too.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from ..conditions import comparisons
from ..diagnostics import Diagnostic, Location
from ..vocabulary import RANKED_METHODS
from .analysis import (
    COUNT_GRID,
    MIN_MODEL_PARAMS,
    MODEL_GRID,
    Analysis,
    MemoryProbe,
    RuleInfo,
    advise_reachable,
    analyse,
    base_facts,
    example_facts,
    facts_text,
    memory_key,
    numeric_samples,
    resolved_key,
    rule_use_cases,
    spec_label,
    verdict_spec,
)
from .intervals import CUSTOM_GPU, INF, Box, referenced_dims, universe

# thresholds the engine itself reads (derive.py), besides conditions and message templates
ENGINE_THRESHOLDS = {
    "unmerged_latency_overhead": "derive.py: serving.unmerged_gpu_hours_per_day",
    "multitask_temperature": "derive.py: the multi-task temperature when defaults.multitask.temperature is unset",
}
MEMORY_FACTS = ("model.params", "hardware.gpu_count", "data.seq_len", "training.precision", "training.optimizer",
                "training.micro_batch_size", "training.seq_len", "training.gradient_checkpointing",
                "training.sharding")
SEVERITY_ORDER = {"error": 0, "warning": 1, "note": 2}


@dataclass
class CheckReport:
    """The outcome of ``check_policy``: diagnostics, what was exact and what sampled, timings."""

    policy: Any
    diagnostics: list[Diagnostic]
    provenance: dict[str, str] = field(default_factory=dict)  # check -> "exact" | "sampled ..." | "skipped ..."
    stats: dict[str, Any] = field(default_factory=dict)
    lock_path: str | None = None

    def count(self, severity: str) -> int:
        """Return how many diagnostics have ``severity``."""
        return sum(1 for d in self.diagnostics if d.severity == severity)

    def failed(self, deny_warnings: bool = False) -> bool:
        """Return True when there is an error (or, with ``deny_warnings``, a warning)."""
        return self.count("error") > 0 or (deny_warnings and self.count("warning") > 0)

    def to_dict(self) -> dict:
        """Return a JSON-safe report."""
        return {"policy": {"name": self.policy.name, "version": self.policy.version, "origin": self.policy.origin,
                           "semantic_sha256": self.policy.semantic_sha256},
                "lock": self.lock_path, "diagnostics": [d.to_dict() for d in self.diagnostics],
                "counts": {s: self.count(s) for s in ("error", "warning", "note")},
                "provenance": self.provenance, "stats": self.stats}


class _Ctx:
    """What the checks share: the compiled policy, its analysis, locations and the memory probe."""

    def __init__(self, policy: Any, compile_ctx: Any, analysis: Analysis, probe: MemoryProbe | None,
                 max_gpus: int):
        self.policy = policy
        self.cctx = compile_ctx
        self.analysis = analysis
        self.space = analysis.space
        self.probe = probe
        self.max_gpus = max_gpus
        self.index = {r["id"]: i for i, r in enumerate(compile_ctx.data.get("rules") or [])
                      if isinstance(r, dict) and "id" in r}
        self.diags: list[Diagnostic] = []
        self.samples = 0
        self.fit_gap_grid = 0
        self.dominance: dict[tuple, bool] = {}
        self.memory_samples: dict[tuple, list] = {}
        self._resolved: dict[tuple, str] = {}

    def resolved(self, info: RuleInfo, uc: str) -> str:
        """Return ``analysis.resolved_key`` of a select rule's verdict for ``uc`` (memoised)."""
        key = (info.id, uc if info.rule.then.get("use_case") else None)
        found = self._resolved.get(key)
        if found is None:
            found = resolved_key(self.policy, info.rule.then, uc)
            self._resolved[key] = found
        return found

    def rule_loc(self, rule_id: str, *sub: Any) -> Location:
        """Return the location of a rule (or a field inside it)."""
        i = self.index.get(rule_id)
        if i is None:
            return self.policy.locations.get(f"rules.{rule_id}", Location())
        return self.cctx.loc(("rules", i) + tuple(sub))

    def loc(self, *path: Any, key: bool = False) -> Location:
        """Return the location of a path into the merged policy document."""
        return self.cctx.loc(tuple(path), key)

    def add(self, code: str, message: str, loc: Location, help: str, severity: str, path: str = "") -> None:
        """Record one diagnostic."""
        self.diags.append(Diagnostic(code, message, loc, help, severity, path))


# --- the checks ----------------------------------------------------------------------------------

def _never_holds(c: _Ctx) -> None:
    for info in c.analysis.rules.values():
        if info.never_holds:
            c.add("rule-never-holds", f"{info.rule.kind} rule `{info.id}`: its conditions can never hold together "
                  "(exact)", c.rule_loc(info.id, "when"), "remove the contradicting comparison or the rule", "error",
                  f"rules.{info.id}")


def _reachability(c: _Ctx) -> None:
    for info in c.analysis.advise:
        if info.never_holds:
            continue
        ok, why = advise_reachable(c.analysis, info)
        if not ok:
            c.add("advise-never-matches", f"advise rule `{info.id}` can never match: {why} (exact)",
                  c.rule_loc(info.id, "when"), "change its conditions on the verdict facts, add a select rule that "
                  "chooses such a verdict, or remove the rule", "error", f"rules.{info.id}")


def _memory_signature(region: list[Box]) -> frozenset:
    """Return what of a region decides its memory samples (the memory facts and GPUs it allows)."""
    return frozenset(tuple((n, cons) for n, cons in box if n in MEMORY_FACTS or n == "hardware.gpu") for box in region)


def _dominance(c: _Ctx, earlier: RuleInfo, later: RuleInfo, region: list[Box], uc: str) -> bool:
    """Return True when ``earlier``'s verdict fits whenever ``later``'s does, sampled over ``region``.

    Memoised on the two verdicts and the memory facts the region allows: many rules share verdicts
    and memory regions, and the answer depends on nothing else.
    """
    probe = c.probe
    if probe is None:
        return False
    spec_e = verdict_spec(c.policy, earlier.rule.then, uc)
    spec_l = verdict_spec(c.policy, later.rule.then, uc)
    key_e, key_l = memory_key(spec_e), memory_key(spec_l)
    key = (key_e, key_l, uc, _memory_signature(region))
    found = c.dominance.get(key)
    if found is None:
        found = True
        for box in region:
            for facts, count, bf16 in _memory_samples(c, box, uc):
                c.samples += 1
                if (probe.min_estimate(spec_e, facts, count, bf16, key_e)
                        > probe.min_estimate(spec_l, facts, count, bf16, key_l) + 1e-6):
                    found = False
                    break
            if not found:
                break
        c.dominance[key] = found
    return found


def _memory_samples(c: _Ctx, box: Box, uc: str | None, micro_batch: int | None = None,
                    counts_grid: tuple = COUNT_GRID) -> list[tuple[dict, int, bool]]:
    """Return (normalized facts, gpu count, bf16) over model sizes x GPU counts x bf16 inside ``box`` (memoised)."""
    space, probe = c.space, c.probe
    assert probe is not None
    key = (_memory_signature([box]), uc, micro_batch, counts_grid)
    found = c.memory_samples.get(key)
    if found is not None:
        return found
    point = {k: v for k, v in space.point(box).items() if k in MEMORY_FACTS and k not in ("model.params",
                                                                                       "hardware.gpu_count")}
    if micro_batch is not None and "training.micro_batch_size" not in point:
        point["training.micro_batch_size"] = micro_batch
    base = base_facts(c.policy)
    if uc is not None:
        base["task"]["use_case"] = uc
    counts = [int(x) for x in numeric_samples(space, box, "hardware.gpu_count", counts_grid)]
    bf16s = sorted({bool(c.policy.gpus.get(g, {}).get("bf16", True)) for g in space.values(box, "hardware.gpu")})
    found = []
    for params in numeric_samples(space, box, "model.params", MODEL_GRID, lower=MIN_MODEL_PARAMS):
        for count in counts:
            facts = probe.normalized(example_facts(c.policy, {**point, "model.params": params,
                                                              "hardware.gpu_count": count}, base))
            found.extend((facts, count, bf16) for bf16 in bf16s)
    c.memory_samples[key] = found
    return found


def _names(ids: list[str], most: int = 8) -> str:
    shown = ", ".join(f"`{i}`" for i in ids[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


def _shadowing(c: _Ctx) -> None:
    """Report select rules that can never be chosen: first over earlier rules with the same verdict (exact), then,
    for what remains, over earlier rules whose verdicts fit whenever its own does (sampled). Each pass stops as
    soon as the rule is covered, and samples only the part of an overlap not covered yet."""
    space = c.space
    select = [i for i in c.analysis.select if not i.never_holds]
    for pos, later in enumerate(select):
        rest = list(later.over)
        exact: list[str] = []
        for earlier in select[:pos]:
            if not rest:
                break
            inter = space.meet_all(earlier.under, rest)
            if not inter:
                continue
            same = [uc for uc in rule_use_cases(space, earlier, inter)
                    if c.resolved(earlier, uc) == c.resolved(later, uc)]
            part = [r for b in inter if same and (r := space.restrict(b, "task.use_case", frozenset(same)))]
            if part:
                rest = space.remainder(rest, part)
                exact.append(earlier.id)
        if not rest:
            c.add("rule-shadowed", f"select rule `{later.id}` can never be chosen: wherever its conditions hold, "
                  f"{_names(exact)} come{'s' if len(exact) == 1 else ''} first with the same verdict (exact)",
                  c.rule_loc(later.id), "remove the rule, give it a lower priority number than the rules that cover "
                  "it, or narrow their conditions", "error", f"rules.{later.id}")
            continue
        sampled: list[str] = []
        for earlier in select[:pos]:
            if not rest:
                break
            inter = space.meet_all(earlier.under, rest)
            if not inter:
                continue
            dominated = []
            for uc in rule_use_cases(space, earlier, inter):
                if c.resolved(earlier, uc) == c.resolved(later, uc):
                    continue
                region = [r for b in inter if (r := space.restrict(b, "task.use_case", frozenset({uc}))) is not None]
                if _dominance(c, earlier, later, region, uc):
                    dominated.append(uc)
            part = [r for b in inter if dominated and (r := space.restrict(b, "task.use_case", frozenset(dominated)))]
            if part:
                rest = space.remainder(rest, part)
                sampled.append(earlier.id)
        if not rest:
            names = exact + sampled
            c.add("rule-shadowed", f"select rule `{later.id}` can never be chosen: wherever its conditions hold, "
                  f"{_names(names)} come{'s' if len(names) == 1 else ''} first whose verdicts fit whenever its own "
                  "does (fit dominance sampled over model sizes x GPU counts; conditions exact)", c.rule_loc(later.id),
                  "remove the rule, give it a lower priority number than the rules that cover it, or narrow "
                  "their conditions", "warning", f"rules.{later.id}")


def _overlaps(c: _Ctx) -> None:
    select = [i for i in c.analysis.select if not i.never_holds]
    space = c.space
    for i, a in enumerate(select):
        for b in select[i + 1:]:
            if a.rule.priority != b.rule.priority:
                continue
            region = space.meet_all(a.under, b.under)
            differing = [uc for uc in rule_use_cases(space, a, region) if c.resolved(a, uc) != c.resolved(b, uc)]
            if not differing:
                continue
            box = next(r for x in region if (r := space.restrict(x, "task.use_case", frozenset(differing))))
            ex = example_facts(c.policy, space.point(box))
            c.add("rule-overlap", f"select rules `{a.id}` and `{b.id}` both have priority {a.rule.priority}, choose "
                  f"different verdicts ({spec_label(verdict_spec(c.policy, a.rule.then, differing[0]))} vs "
                  f"{spec_label(verdict_spec(c.policy, b.rule.then, differing[0]))}) and both apply where "
                  f"{space.describe(box)}; the tie is broken by id, so `{a.id}` wins (exact). Example: "
                  f"{facts_text(ex)}", c.rule_loc(b.id, "priority"),
                  "give one of them a distinct priority to make the order explicit", "warning", f"rules.{b.id}")


def _gaps(c: _Ctx) -> None:
    space = c.space
    select = c.analysis.select
    dims = referenced_dims(space, [i.rule for i in select])
    whole = [universe(space, dims)]
    rest = space.remainder(whole, [b for i in select for b in i.under])
    if not rest:
        return
    opaque = [i.id for i in select if i.opaque]
    shown = 0
    for box in rest:
        if shown >= 3:
            break
        example, confirmed = _gap_example(c, box)
        free = space.free_dims([box])
        note = ""
        if free:
            note = f"; it constrains {', '.join(free)}, computed by the memory model"
        if opaque:
            note += f"; rules {', '.join(opaque)} compare two facts and were left out of the exact cover"
        status = ("confirmed: no select rule's conditions hold for " + facts_text(example)) if confirmed else \
            ("not confirmed by a concrete fact set (the example " + facts_text(example) +
             " is decided by some rule)")
        c.add("select-gap", f"no select rule applies where {space.describe(box)} (exact{note}); {status}",
              c.loc("rules", key=True), "add a select rule for this region, or a catch-all rule with `when: []` "
              "at the end", "warning", "rules")
        shown += 1
    if len(rest) > shown:
        c.add("select-gap", f"{len(rest) - shown} more gap region(s) not shown", c.loc("rules", key=True),
              "fix the regions above and run decide check again", "warning", "rules")


def _gap_example(c: _Ctx, box: Box) -> tuple[dict, bool]:
    """Return an example fact set in the gap and whether evaluating the policy confirms no rule holds."""
    point = c.space.point(box)
    example = example_facts(c.policy, point)
    if c.probe is None:
        return example, False
    from ..evaluate import evaluator_for
    from ..facts import FactsError

    evaluator = evaluator_for(c.policy)
    tries = [example] + [example_facts(c.policy, {**point, "model.params": p}) for p in MODEL_GRID]
    for facts in tries:
        try:
            flat = evaluator.derive(c.probe.normalized(facts)).flat
        except (FactsError, ValueError):
            continue
        if not any(rule.check(flat) is None for rule in evaluator.select):
            return facts, True
    return example, False


def _never_fits(c: _Ctx) -> None:
    probe = c.probe
    if probe is None:
        return
    space = c.space
    for info in c.analysis.select:
        if info.never_holds:
            continue
        best: tuple[float, str] | None = None
        fits = False
        for micro_batch in (None, 1):
            for box in info.over:
                gpus = _gpus_in(c, box)
                if not gpus:
                    continue
                ucs = rule_use_cases(space, info, [box]) if info.rule.then.get("use_case") else [None]
                for uc in ucs:
                    spec = verdict_spec(c.policy, info.rule.then, uc)
                    grid = tuple(n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= c.max_gpus)
                    for facts, count, bf16 in _memory_samples(c, _min_model_box(space, box), uc, micro_batch, grid):
                        if count > c.max_gpus:
                            continue
                        c.samples += 1
                        est = probe.min_estimate(spec, facts, count, bf16)
                        for name, memory, gbf16 in gpus:
                            if gbf16 != bf16:
                                continue
                            usable = probe.usable(memory)
                            if est <= usable:
                                fits = True
                                break
                            short = est - usable
                            if best is None or short < best[0]:
                                best = (short, f"{spec_label(spec)} needs {est:.1f} GiB per GPU on {count}x "
                                        f"{name or 'custom'} ({usable:.1f} GiB usable) for a "
                                        f"{facts['model']['params'] / 1e9:.3g}B model"
                                        + (" with micro_batch_size 1" if micro_batch else ""))
                        if fits:
                            break
                    if fits:
                        break
                if fits:
                    break
            if fits:
                break
        if not fits and best is not None:
            c.add("rule-never-fits", f"select rule `{info.id}`: its verdict never fits in memory where its "
                  f"conditions hold, on any catalog GPU with up to {c.max_gpus} GPUs (sampled); closest: "
                  f"{best[1]}", c.rule_loc(info.id, "then"),
                  "relax the conditions that force a large model or few GPUs, or choose a smaller verdict",
                  "error", f"rules.{info.id}")


def _min_model_box(space: Any, box: Box) -> Box:
    """Return ``box`` with model.params narrowed to its smallest values (memory grows with the model)."""
    c = space.values(box, "model.params")
    lo = max(c.lo, MIN_MODEL_PARAMS)
    from .intervals import Interval

    narrowed = space.restrict(box, "model.params", Interval(lo, lo * 1.000001 if c.hi == INF else min(c.hi, lo * 1.000001),
                                                             c.lo_open and lo == c.lo, False))
    return narrowed if narrowed is not None else box


def _gpus_in(c: _Ctx, box: Box) -> list[tuple[str, float, bool]]:
    """Return (name, memory GiB, bf16) of the catalog GPUs the box allows (plus a custom GPU at its memory bound)."""
    allowed = c.space.values(box, "hardware.gpu")
    mem = c.space.values(box, "hardware.gpu_memory_gb")
    constrained = any(n == "hardware.gpu_memory_gb" for n, _ in box)
    out = []
    for name, entry in c.policy.gpus.items():
        if name in allowed and (not constrained or mem.contains(float(entry["memory_gb"]))):
            out.append((name, float(entry["memory_gb"]), bool(entry.get("bf16", True))))
    if CUSTOM_GPU in allowed and constrained:
        if mem.hi != INF:
            out.append((CUSTOM_GPU, mem.hi * (1 - 1e-9) if mem.hi_open else mem.hi, True))
        else:
            biggest = max((float(e["memory_gb"]) for e in c.policy.gpus.values()), default=80.0)
            out.append((CUSTOM_GPU, max(biggest, mem.lo), True))
    return out


FIT_GAP_COUNTS = (1, 2, 8)


def _fit_gaps(c: _Ctx) -> None:
    """Warn where select rules' conditions hold but none of their verdicts fits although some method would."""
    if c.probe is None:
        return
    from ..evaluate import evaluator_for
    from ..facts import FactsError
    from ..trace import SelectEvent
    from .grid import GridEvaluator, build_grid, point_weight

    policy = c.policy
    grid = build_grid([policy], counts=FIT_GAP_COUNTS, select_only=True)
    ge = GridEvaluator(policy)
    results = ge.evaluate(grid, spot_checks=0, advice=False, keep=True, keep_holds=False)
    order = [r.id for r in policy.select_rules]
    found: dict[str, list] = {}  # first rule whose conditions hold -> [(mem, mask, weight)]
    for mem, res in results.items():
        gaps = res.chosen.get(None, 0)
        if res.error or not gaps or not res.derived.flat.get("fits.any"):
            continue
        for rid in order:
            if not gaps:
                break
            part = gaps & ge.holds_at(mem, rid)
            if part:
                found.setdefault(rid, []).append((mem, part, point_weight(grid, mem)))
                gaps &= ~part
    c.fit_gap_grid = grid.size
    evaluator = evaluator_for(policy)
    for rid, parts in found.items():
        count = sum(mask.bit_count() * w for _, mask, w in parts)
        example = None
        for mem, mask, _ in sorted(parts, key=lambda p: p[0]):
            facts = grid.facts(mem, (mask & -mask).bit_length() - 1)
            try:
                ev = evaluator.evaluate(c.probe.normalized(facts))
            except (FactsError, ValueError):
                continue
            if ev.candidate is None and ev.flat.get("fits.any"):
                example = (facts, ev)
                break
        if example is None:
            continue
        facts, ev = example
        held = [e.rule for e in ev.trace if isinstance(e, SelectEvent) and e.conditions_hold]
        chosen = ev.derived.candidates[rid]
        fitting = sorted((cand.estimate.total_gib, m) for m, cand in ev.derived.defaults.items() if cand.fits)
        fits_text = ", ".join(f"{m} ({gib:.1f} GiB)" for gib, m in fitting[:4])
        rest = [f"`{h}`" for h in held if h != rid]
        others = f"; the conditions of {', '.join(rest)} hold too" if rest else ""
        c.add("fit-gap", f"where the conditions of select rule `{rid}` hold, no rule chooses a method that fits in "
              f"{count:,} of {grid.size:,} sampled fact sets although another method would; confirmed: "
              f"{facts_text(facts)} is infeasible: `{rid}` chooses {chosen.label()} "
              f"({chosen.estimate.total_gib:.1f} GiB, {chosen.usable_gb:.1f} usable){others}, while "
              f"{fits_text} would fit", c.rule_loc(rid),
              "add a fallback rule for these conditions with a verdict that fits (e.g. QLoRA), or let a later rule "
              "cover them", "warning", f"rules.{rid}")


def _properties(c: _Ctx, examples: int) -> None:
    from .properties import run_properties

    for v in run_properties(c.policy, examples):
        if v.use_case:
            loc, path = c.loc("use_cases", v.use_case, key=True), f"use_cases.{v.use_case}"
        else:
            loc, path = (c.rule_loc(v.rule), f"rules.{v.rule}") if v.rule else (c.loc("rules", key=True), "rules")
        example = f"; counterexample: {facts_text(v.facts)}" if v.facts else ""
        c.add("property-violated", f"{v.property}: {v.message}{example}", loc,
              "fix the rule, or, for more-data-keeps-capacity, say that the rule means it (`waives: "
              "[more-data-keeps-capacity]`)" if v.property == "more-data-keeps-capacity" else
              "fix the rules that decide there", "error", path)


def _use_case_table(c: _Ctx) -> None:
    policy, space = c.policy, c.space
    rows = policy.use_cases
    # values of use_case.method / use_case.rank that no row has
    row_methods = {r.get("method", "lora") for r in rows.values()}
    row_ranks = {int(r.get("rank") or 0) for r in rows.values()}
    for rule in policy.rules:
        for cmp in comparisons(rule.when):
            if cmp.fact not in ("use_case.method", "use_case.rank") or cmp.op not in ("==", "in"):
                continue
            values = cmp.value if cmp.op == "in" else (cmp.value,)
            have = row_methods if cmp.fact == "use_case.method" else row_ranks
            missing = [v for v in values if v not in have]
            if missing:
                c.add("use-case-missing-value", f"rule `{rule.id}`: no use-case row has {cmp.fact} "
                      f"{', '.join(map(str, missing))}", cmp.location, "add a row with that value, or drop it "
                      "from the condition", "note", cmp.path)
    # rules that override a row's method with one of another family
    reached: set[str] = set()
    for info in c.analysis.select:
        then = info.rule.then
        if not then.get("use_case") or info.never_holds:
            continue
        ucs = rule_use_cases(space, info)
        reached.update(ucs)
        override = then.get("method")
        if not override:
            continue
        for uc in ucs:
            row_method = rows[uc].get("method", "lora")
            if (row_method in RANKED_METHODS) != (override in RANKED_METHODS):
                what = "has no rank, so the method default rank is used" if override in RANKED_METHODS else \
                    "has a rank that the method ignores"
                c.add("use-case-method-override", f"rule `{info.id}` turns use case `{uc}` ({row_method}) into "
                      f"{override}, which {what}", c.rule_loc(info.id, "then"),
                      f"exclude `{uc}` in the conditions (e.g. use_case.method in [...]) or give the row a method "
                      f"of the {override} family", "warning", f"rules.{info.id}")
    reads_row = any(cmp.fact in ("use_case.method", "use_case.rank") for r in policy.rules
                    for cmp in comparisons(r.when))
    for uc, row in rows.items():
        if uc in reached:
            continue
        extra = " (conditions read use_case.method/rank, so the row is still used as data)" if reads_row else ""
        c.add("use-case-row-unused", f"use case `{uc}`: no `use_case: true` rule can apply to it, so its verdict "
              f"({spec_label({'method': row.get('method'), 'rank': row.get('rank')})}) is never chosen{extra}",
              c.loc("use_cases", uc, key=True), "widen a `use_case: true` rule to cover it, or remove the row",
              "warning", f"use_cases.{uc}")


def _unused_names(c: _Ctx, case_gpus: set[str]) -> None:
    import string

    policy = c.policy
    used: set[str] = set()
    for rule in policy.rules:
        used.update(cmp.threshold for cmp in comparisons(rule.when) if cmp.threshold)
        for msg in list(rule.warn) + list(rule.note):
            with contextlib.suppress(ValueError):
                used.update(f for _, f, _, _ in string.Formatter().parse(msg.get("message", "")) if f)
    for name in policy.thresholds:
        if name in used or name in ENGINE_THRESHOLDS:
            continue
        c.add("threshold-unused", f"threshold `{name}` is not used by any condition or message", c.loc(
            "thresholds", name, key=True), "use it in a rule (value: {threshold: " + name + "}) or remove it",
              "warning", f"thresholds.{name}")
    named: set[str] = set()
    for rule in policy.rules:
        for cmp in comparisons(rule.when):
            if cmp.fact == "hardware.gpu":
                named.update(cmp.value if isinstance(cmp.value, tuple) else (cmp.value,))
    default = ((policy.defaults.get("facts") or {}).get("hardware") or {}).get("gpu")
    named.update({default} if default else set())
    named.update(case_gpus)
    for name, entry in policy.gpus.items():
        if name in named:
            continue
        twins = [g for g, e in policy.gpus.items() if g != name and e.get("memory_gb") == entry.get("memory_gb")
                 and bool(e.get("bf16", True)) == bool(entry.get("bf16", True))]
        same = f"; it decides like {', '.join(twins)} (same memory and bf16)" if twins else ""
        c.add("gpu-unused", f"GPU `{name}` is not named by any rule, default or test case{same}",
              c.loc("gpus", name, key=True), "add a test case on it, or drop it if no one uses it", "note",
              f"gpus.{name}")


def _case_gpus(policy_path: str, policy_names: dict[str, str]) -> set[str]:
    """Return the catalog GPUs the policy's test cases name (aliases resolved); unreadable cases are skipped."""
    from ..diagnostics import DiagnosticError
    from .testing import load_cases, test_files

    out: set[str] = set()
    for f in test_files(policy_path):
        try:
            cases = load_cases(f)
        except DiagnosticError:
            continue
        for case in cases:
            hardware = case.facts.get("hardware")
            gpu = hardware.get("gpu") if isinstance(hardware, dict) else None
            if isinstance(gpu, str):
                out.add(policy_names.get(gpu, gpu))
    return out


# --- driver ------------------------------------------------------------------------------------

def compile_for_check(path: str) -> tuple[Any, Any]:
    """Compile the policy at ``path`` keeping the compiler context (for locations and warnings).

    Returns (policy, context). Raises PolicyError with every diagnostic when the policy is invalid or
    durable-rules cannot run it (``validation.engine_limit_diagnostics``).
    """
    from ..policy import CompileContext, PolicyError, run_stages
    from ..policy.compiler import read_policy_files
    from .validation import engine_limit_diagnostics

    files, root, origin, reader = read_policy_files(path)
    ctx = run_stages(CompileContext(dict(files), root, origin, reader))
    if ctx.has_errors or ctx.policy is None:
        raise PolicyError(ctx.diags)
    limits = engine_limit_diagnostics(ctx.policy)
    if limits:
        raise PolicyError(ctx.diags + limits)
    return ctx.policy, ctx


def check_policy(path: str, *, lock_path: str | None = None, max_gpus: int = 64, memory: bool = True,
                 properties: int = 0) -> CheckReport:
    """Run every check on the policy at ``path`` and return the report (diagnostics sorted by location).

    ``lock_path`` overrides the versions.lock search; ``memory=False`` skips the checks that need the
    memory model (fit dominance, never-fits, gap confirmation); ``properties`` > 0 also searches the
    policy properties (``properties.py``) with that many generated fact sets each. Raises PolicyError
    for an invalid policy, DiagnosticError for a malformed lock file and ImportError when
    ``properties`` is asked for without hypothesis installed.
    """
    from .versions import find_lock

    t0 = time.perf_counter()
    policy, cctx = compile_for_check(path)
    analysis = analyse(policy)
    probe = None
    skipped = ""
    if memory:
        try:
            probe = MemoryProbe(policy)
        except ImportError as exc:  # the memory model is not installed
            skipped = f"skipped: memory model unavailable ({exc})"
    c = _Ctx(policy, cctx, analysis, probe, max_gpus)
    c.diags.extend(d for d in cctx.diags if d.severity != "error")
    timings: dict[str, float] = {}
    steps = [("never-holds", _never_holds), ("advise-reachability", _reachability), ("shadowing", _shadowing),
             ("overlap", _overlaps), ("gaps", _gaps), ("never-fits", _never_fits), ("fit-gaps", _fit_gaps),
             ("use-case-table", _use_case_table),
             ("unused", lambda ctx: _unused_names(ctx, _case_gpus(path, policy.gpu_names())))]
    if properties:
        steps.append(("properties", lambda ctx: _properties(ctx, properties)))
    for name, step in steps:
        t = time.perf_counter()
        step(c)
        timings[name] = round(time.perf_counter() - t, 4)
    lock_file = lock_path or (_display_path(str(p)) if (p := find_lock(path)) else None)
    versions_how = "skipped: no versions.lock found"
    if lock_file:
        from .release import release_diagnostics

        t = time.perf_counter()
        version_diags, versions_how = release_diagnostics(policy, lock_file, cctx.loc(("version",)))
        c.diags.extend(version_diags)
        timings["versions"] = round(time.perf_counter() - t, 4)
    dominance = ("sampled: estimates compared over models 0.5B-70B x GPU counts 1-8 x bf16 in the overlap"
                 if probe else skipped)
    fits = (f"sampled: smallest model the conditions allow, every catalog GPU, 1-{max_gpus} GPUs, default and "
            "micro_batch_size 1" if probe else skipped)
    provenance = {
        "never-holds": "exact", "advise-reachability": "exact", "overlap": "exact", "use-case-table": "exact",
        "unused": "exact", "gaps": "exact" + ("; examples confirmed by evaluating the policy" if probe else ""),
        "shadowing": "exact for equal verdicts; fit dominance " + dominance,
        "never-fits": fits,
        "fit-gaps": (f"sampled: {c.fit_gap_grid:,} fact sets (models 0.5B-70B and model boundaries x every GPU "
                     f"class x {'/'.join(map(str, FIT_GAP_COUNTS))} GPUs x every use case x every condition cell); "
                     "examples confirmed by evaluating the policy" if probe else skipped),
        "versions": versions_how,
    }
    if properties:
        provenance["properties"] = (f"searched: {properties} generated fact sets per property (hypothesis, shrunk "
                                    "counterexamples); rows-reachable over the grid")
    if analysis.space.opaque_rules:
        provenance["fact-vs-fact"] = ("rules " + ", ".join(sorted(analysis.space.opaque_rules)) +
                                      " compare two facts: their regions are over/under-approximated")
    diags = sorted(c.diags, key=lambda d: (d.location.file, d.location.line, d.location.col,
                                           SEVERITY_ORDER.get(d.severity, 3), d.code, d.message))
    stats = {"select_rules": len(policy.select_rules), "advise_rules": len(policy.advise_rules),
             "use_cases": len(policy.use_cases), "gpus": len(policy.gpus), "memory_samples": c.samples,
             "memory_evaluations": probe.evaluations if probe else 0, "seconds": round(time.perf_counter() - t0, 3),
             "timings": timings}
    return CheckReport(policy, diags, provenance, stats, lock_file)


def _display_path(path: str) -> str:
    """Return ``path`` relative to the working directory when it lies below it."""
    import os

    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def render_check_text(report: CheckReport) -> str:
    """Return the report as text: one block per diagnostic, then provenance and a summary line."""
    lines = [d.render() for d in report.diagnostics]
    p = report.policy
    lines.append(f"checked {p.name} {p.version}: {report.stats['select_rules']} select rules, "
                 f"{report.stats['advise_rules']} advise rules, {report.stats['use_cases']} use cases, "
                 f"{report.stats['gpus']} GPUs")
    for name, how in report.provenance.items():
        lines.append(f"  {name}: {how}")
    lines.append(f"{report.count('error')} error(s), {report.count('warning')} warning(s), "
                 f"{report.count('note')} note(s)")
    return "\n".join(lines)
