"""Mutation adequacy of a policy's test cases (`decide test --mutants`).

Each *mutant* is the policy with one deliberate mistake a policy author could make:

* ``operator``: a comparison's operator flipped: the boundary moved (``>=`` <-> ``>``, ``<=`` <-> ``<``)
  or negated (``<`` -> ``>=``, ``==`` -> ``!=``, ``in`` -> ``not_in`` ...);
* ``threshold+`` / ``threshold-``: the number a comparison uses moved by one step of its unit
  (1 example, 1M parameters, 0.01 GiB, ...; ``STEPS``);
* ``drop``: one condition of an ``all`` / ``any`` removed;
* ``swap``: two select rules next to each other in evaluation order swapped (only where their
  conditions can hold together).

A mutant is *killed* when some case fails on it. Every mutant is decided by the decision core's own
``Evaluator`` (compiled checks, no durable-rules registration) on the cases' derivations, which a
mutant cannot change (it keeps every verdict). A surviving mutant is compared with the policy on a
grid that holds every mutant's boundaries (``grid.GridEvaluator.difference``): where they decide
differently, that fact set is suggested as a new case, with what the policy decides there; where no
grid point tells them apart, the mutant is *equivalent* and left out of the score.

Score = killed / (mutants - equivalent), in percent.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from ..conditions import All, AnyOf, Cmp, Condition, Not
from ..diagnostics import Location
from ..vocabulary import vocabulary

STEPS = {"params": 1e6, "Bparams": 0.001, "examples": 1, "tokens": 1, "count": 1, "rank": 1, "ms": 1,
         "requests/day": 1, "GiB": 0.01, "$": 0.01, "$/hour": 0.01, "GPU-hours/day": 0.01, "fraction": 0.01,
         "points": 1, "exponent": 0.01}
BOUNDARY = {">=": ">", ">": ">=", "<=": "<", "<": "<="}
NEGATION = {"<": ">=", ">=": "<", ">": "<=", "<=": ">", "==": "!=", "!=": "==", "in": "not_in", "not_in": "in"}


@dataclass
class Mutant:
    """One mutated policy: what was changed, where, and the policy itself."""

    id: str
    rule: str
    kind: str
    description: str
    location: Location
    policy: Any = field(repr=False)


@dataclass
class MutantResult:
    """What the cases did to one mutant."""

    mutant: Mutant
    killed_by: str | None = None  # "file:line: note" of the first case that fails on it
    equivalent: bool = False
    suggestion: dict | None = None  # {"facts", "expect", "note", "text"}

    @property
    def survived(self) -> bool:
        """Return True when no case kills the mutant and it is not equivalent."""
        return self.killed_by is None and not self.equivalent

    def to_dict(self) -> dict:
        """Return a JSON-safe dict."""
        m = self.mutant
        return {"id": m.id, "rule": m.rule, "kind": m.kind, "description": m.description,
                "location": str(m.location), "killed_by": self.killed_by, "equivalent": self.equivalent,
                "suggestion": self.suggestion}


@dataclass
class MutationReport:
    """Every mutant of a policy and what its cases did to it."""

    results: list[MutantResult]
    seconds: float = 0.0
    grid: str = ""

    @property
    def killed(self) -> int:
        """Return how many mutants some case kills."""
        return sum(1 for r in self.results if r.killed_by)

    @property
    def equivalent(self) -> int:
        """Return how many mutants decide like the policy on every grid point."""
        return sum(1 for r in self.results if r.equivalent)

    @property
    def survivors(self) -> list[MutantResult]:
        """Return the mutants no case kills that are not equivalent."""
        return [r for r in self.results if r.survived]

    @property
    def score(self) -> float:
        """Return killed / (mutants - equivalent) in percent (100 when nothing can be killed)."""
        total = len(self.results) - self.equivalent
        return 100.0 * self.killed / total if total else 100.0

    def to_dict(self) -> dict:
        """Return a JSON-safe report."""
        return {"mutants": len(self.results), "killed": self.killed, "equivalent": self.equivalent,
                "survived": len(self.survivors), "score": round(self.score, 2), "seconds": round(self.seconds, 3),
                "grid": self.grid, "results": [r.to_dict() for r in self.results]}


# --- generating mutants -------------------------------------------------------------------------

def _walk(cond: Condition, path: tuple = ()) -> list[tuple[tuple, Condition]]:
    out: list[tuple[tuple, Condition]] = [(path, cond)]
    if isinstance(cond, (All, AnyOf)):
        for i, item in enumerate(cond.items):
            out.extend(_walk(item, path + (i,)))
    elif isinstance(cond, Not):
        out.extend(_walk(cond.item, path + (0,)))
    return out


def _replace(cond: Condition, path: tuple, new: Condition | None) -> Condition:
    """Return ``cond`` with the node at ``path`` replaced by ``new`` (None: removed from its group)."""
    if not path:
        assert new is not None
        return new
    head, rest = path[0], path[1:]
    if isinstance(cond, (All, AnyOf)):
        items = list(cond.items)
        if not rest and new is None:
            del items[head]
        else:
            items[head] = _replace(items[head], rest, new)
        return dataclasses.replace(cond, items=tuple(items))
    if isinstance(cond, Not):
        return dataclasses.replace(cond, item=_replace(cond.item, rest, new))
    raise ValueError(f"no node at {path}")


def _step(fact: str) -> float:
    ft = vocabulary("advise").get(fact)
    step = STEPS.get(ft.unit, 1) if ft is not None else 1
    if ft is not None and (ft.kind == "integer" or fact == "data.examples"):
        step = max(1, step)
    return step


def _show(cmp: Cmp, value: Any = None, op: str | None = None) -> str:
    value = cmp.value if value is None else value
    shown = f"{{{cmp.threshold}}} ({_num(value)})" if cmp.threshold and value == cmp.value else _num(value)
    rhs = cmp.other_fact or shown
    return f"{cmp.fact} {op or cmp.op} {rhs}"


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_num(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _count(value: float) -> str:
    """Return an exact number compactly: 11000000000 -> 11B, 99999 -> 99999, 1.5 -> 1.5."""
    if float(value).is_integer():
        n = int(value)
        for div, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "k")):
            if n >= div and n % div == 0:
                return f"{n // div}{suffix}"
        return str(n)
    return _num(value)


def _with_rule(policy: Any, rule: Any) -> Any:
    return dataclasses.replace(policy, rules=[rule if r.id == rule.id else r for r in policy.rules])


def generate_mutants(policy: Any) -> list[Mutant]:
    """Return every mutant of ``policy`` (see the module docstring), in rule order."""
    from .analysis import analyse

    out: list[Mutant] = []
    for rule in policy.rules:
        nodes = _walk(rule.when)
        for path, node in nodes:
            where = f"`{rule.id}`" + (f" ({node.path})" if getattr(node, "path", "") else "")
            loc = getattr(node, "location", None) or rule.location
            if isinstance(node, Cmp):
                ops = []
                if node.op in BOUNDARY:
                    ops.append(("operator", BOUNDARY[node.op]))
                if node.op in NEGATION and NEGATION[node.op] not in [o for _, o in ops]:
                    ops.append(("operator", NEGATION[node.op]))
                for kind, op in ops:
                    new = dataclasses.replace(node, op=op)
                    out.append(Mutant(f"{rule.id}:{node.path}:{op}", rule.id, kind,
                                      f"{where}: {_show(node)} -> {_show(node, op=op)}", loc,
                                      _with_rule(policy, dataclasses.replace(rule, when=_replace(rule.when, path, new)))))
                numeric = (not node.other_fact and isinstance(node.value, (int, float))
                           and not isinstance(node.value, bool) and node.op not in ("in", "not_in"))
                if numeric:
                    step = _step(node.fact)
                    for sign, kind in ((1, "threshold+"), (-1, "threshold-")):
                        value = node.value + sign * step
                        if isinstance(node.value, int) and float(step).is_integer():
                            value = int(value)
                        new = dataclasses.replace(node, value=value)
                        out.append(Mutant(f"{rule.id}:{node.path}:{kind}", rule.id, kind,
                                          f"{where}: {_show(node)} -> {_show(node, value=value)}", loc,
                                          _with_rule(policy, dataclasses.replace(
                                              rule, when=_replace(rule.when, path, new)))))
            if path and isinstance(_parent(rule.when, path), (All, AnyOf)):
                mutated = _replace(rule.when, path, None)
                text = _show(node) if isinstance(node, Cmp) else "a group of conditions"
                out.append(Mutant(f"{rule.id}:{getattr(node, 'path', path)}:drop", rule.id, "drop",
                                  f"{where}: condition `{text}` removed", loc,
                                  _with_rule(policy, dataclasses.replace(rule, when=mutated))))
    analysis = analyse(policy)
    select = policy.select_rules
    for a, b in zip(select, select[1:], strict=False):
        if not analysis.space.meet_all(analysis.rules[a.id].over, analysis.rules[b.id].over):
            continue  # they never hold together: the order cannot matter
        rules = list(policy.rules)
        i, j = rules.index(a), rules.index(b)
        rules[i], rules[j] = (dataclasses.replace(b, priority=a.priority, order=a.order),
                              dataclasses.replace(a, priority=b.priority, order=b.order))
        out.append(Mutant(f"swap:{a.id}:{b.id}", b.id, "swap", f"rules `{a.id}` and `{b.id}` swapped in order",
                          b.location, dataclasses.replace(policy, rules=rules)))
    return out


def _parent(cond: Condition, path: tuple) -> Condition:
    node = cond
    for part in path[:-1]:
        node = node.items[part] if isinstance(node, (All, AnyOf)) else node.item  # type: ignore[union-attr]
    return node


# --- running them -----------------------------------------------------------------------------------

def light_decision(policy: Any, ev: Any) -> dict:
    """Return the parts of a decision dict that case expectations read, from an ``Evaluation``.

    Equal to ``Decision.to_dict()`` in ``feasible``, ``verdict``, ``chosen_rule``, ``matched_rules`` and the
    warning and note codes (tests/ruleengine/authoring/test_mutants.py checks it on every bundled case).
    """
    warnings: list[dict] = []
    notes: list[dict] = []
    if ev.chosen:
        rule = policy.rule(ev.chosen)
        warnings.extend({"code": w["code"]} for w in rule.warn)
        notes.extend({"code": n["code"]} for n in rule.note)
        if ev.candidate:
            notes.extend({"code": "verdict-adjusted"} for _ in ev.candidate.notes)
            if ev.candidate.fit_changes:
                notes.append({"code": "settings-changed-to-fit"})
    for rid in ev.advice:
        rule = policy.rule(rid)
        warnings.extend({"code": w["code"]} for w in rule.warn)
        notes.extend({"code": n["code"]} for n in rule.note)
    notes.extend({"code": "facts-adjusted"} for _ in ev.derived.notes)
    return {"feasible": ev.candidate is not None, "verdict": ev.candidate.verdict() if ev.candidate else None,
            "chosen_rule": ev.chosen, "warnings": warnings, "notes": notes,
            "matched_rules": [e.rule for e in ev.trace if e.kind == "select" and e.matched]}


def run_mutants(policy: Any, cases: list[Any], suggest: bool = True) -> MutationReport:
    """Mutate ``policy``, run ``cases`` (already validated) on every mutant and analyse the survivors.

    Raises FactsError when a case's facts cannot be derived (validate the cases first).
    """
    import os

    from ..evaluate import Evaluator, evaluator_for
    from ..pipeline import normalized_facts
    from .testing import check_case

    t0 = time.perf_counter()
    original = evaluator_for(policy)
    prepared = []
    for case in cases:
        origin = os.path.dirname(case.file)
        facts = normalized_facts(original, case.facts_input(), origin=origin)
        prepared.append((case, facts, original.derive(facts, origin)))
    results = []
    for mutant in generate_mutants(policy):
        ev_m = Evaluator(mutant.policy)
        result = MutantResult(mutant)
        for case, facts, derived in prepared:
            ev = ev_m.evaluate(facts, use_engine=False, derived=derived)
            if check_case(case, light_decision(mutant.policy, ev)):
                result.killed_by = f"{case.location}: {case.note}"
                break
        results.append(result)
    report = MutationReport(results)
    survivors = [r for r in results if r.killed_by is None]
    if survivors:
        report.grid = _analyse_survivors(policy, survivors, suggest)
    report.seconds = time.perf_counter() - t0
    return report


def _analyse_survivors(policy: Any, survivors: list[MutantResult], suggest: bool) -> str:
    """Mark equivalent survivors and attach a suggested boundary case to the others; return the grid used."""
    from .grid import GridEvaluator, GridTooLarge, build_grid

    try:
        grid = build_grid([policy, *(r.mutant.policy for r in survivors)])
    except GridTooLarge:
        grid = build_grid([policy])
    ge = GridEvaluator(policy)
    results = ge.evaluate(grid, spot_checks=5, keep=True)
    order, prefer = _preferences(policy, grid)
    for r in survivors:
        found = ge.difference(results, r.mutant.policy, order)
        if found is None:
            r.equivalent = True
        elif suggest:
            mem, mask = found
            r.suggestion = _suggestion(policy, r.mutant, grid.facts(mem, _typical(grid, mask, prefer)))
    return f"{grid.size:,} fact sets ({grid.describe()})"


def _preferences(policy: Any, grid: Any) -> tuple[list[tuple], dict[str, Any]]:
    """Return the memory points, most typical first (7B, the default GPU, one GPU), and each rule axis's
    preferred value (the normalized default), so that suggested cases look like ordinary ones."""
    import math

    from ..facts import normalize_facts
    from .analysis import base_facts, default_gpu
    from .grid import NUM_TASKS

    base = normalize_facts(base_facts(policy), policy)
    names = list(grid.memory_axes)
    gpu = default_gpu(policy)
    use_case = base["task"].get("use_case")

    def key(mem: tuple) -> tuple:
        point = dict(zip(names, mem, strict=True))
        return (abs(math.log(float(point["model.params"]) / 7e9)), point["hardware.gpu"] != gpu,
                point["hardware.gpu_count"] != 1, point.get("task.use_case") != use_case)

    prefer: dict[str, Any] = {}
    for name in grid.rule_axes:
        group, field_ = name.split(".")
        prefer[name] = 1 if name == NUM_TASKS else base.get(group, {}).get(field_)
    return sorted(grid.memory_points(), key=key), prefer


def _distance(value: Any, preferred: Any) -> float:
    import math

    if value == preferred:
        return 0.0
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (value, preferred))
    if numbers and value >= 0 and preferred >= 0:
        return min(1.0, abs(math.log10(value + 1) - math.log10(preferred + 1)) / 10)
    return 1.0


def _typical(grid: Any, mask: int, prefer: dict[str, Any]) -> int:
    """Return the set bit of ``mask`` whose rule-axis values differ least from the preferred ones."""
    best, best_score = -1, None
    bits = mask
    seen = 0
    while bits and seen < 4096:
        low = bits & -bits
        index = low.bit_length() - 1
        bits ^= low
        seen += 1
        values = grid.rule_point(index)
        score = sum(_distance(v, prefer.get(name)) for name, v in zip(grid.rule_axes, values, strict=True))
        if best_score is None or score < best_score:
            best, best_score = index, score
    return best


def _suggestion(policy: Any, mutant: Mutant, facts: dict) -> dict | None:
    """Return a case for ``facts`` that the policy passes and ``mutant`` fails: what differs, as expected."""
    from ..facts import FactsError

    try:
        found = _suggestion_core(policy, mutant, facts)
    except FactsError:
        return None
    if found is None:
        return None
    expect, norm, mutant_label = found
    note = f"kills mutant {mutant.id}"
    facts = _plain(policy, mutant, facts, norm, expect)
    text = _case_text(note, facts, expect) + f"\n  # the mutant decides {mutant_label} here"
    return {"note": note, "facts": facts, "expect": expect, "mutant_decides": mutant_label, "text": text}


def _suggestion_core(policy: Any, mutant: Mutant, facts: dict) -> tuple[dict, dict, str] | None:
    """Return (the expectations ``mutant`` fails and the policy meets, normalized facts, what the mutant decides)
    for ``facts``, or None.

    Raises FactsError for invalid facts."""
    from ..evaluate import Evaluator, evaluator_for
    from ..facts import normalize_facts

    norm = normalize_facts(facts, policy)
    original = evaluator_for(policy)
    derived = original.derive(norm)
    want = light_decision(policy, original.evaluate(norm, use_engine=False, derived=derived))
    got = light_decision(mutant.policy, Evaluator(mutant.policy).evaluate(norm, use_engine=False, derived=derived))
    expect: dict[str, Any] = {}
    verdict_w, verdict_g = want["verdict"] or {}, got["verdict"] or {}
    if want["feasible"] != got["feasible"]:
        expect["feasible"] = want["feasible"]
    for key in ("method", "rank"):
        if verdict_w.get(key) != verdict_g.get(key) and want["feasible"]:
            expect[key] = verdict_w.get(key)
    if want["chosen_rule"] != got["chosen_rule"]:
        expect["rule"] = want["chosen_rule"]
    for key, other in (() if expect else (("warnings", "not_warnings"), ("notes", "not_notes"))):
        a = {m["code"] for m in want[key]}
        b = {m["code"] for m in got[key]}
        if a - b:
            expect[key] = sorted(a - b)
        if b - a:
            expect[other] = sorted(b - a)
    if not expect:
        return None
    verdict = got["verdict"]
    label = "infeasible" if verdict is None else (
        f"{verdict['method']} r={verdict['rank']}" if verdict.get("rank") else verdict["method"])
    label += f" ({got['chosen_rule']})" if got["chosen_rule"] else ""
    changed = [f"+{c['code']}" for c in got["warnings"] + got["notes"]
               if c["code"] not in {m["code"] for m in want["warnings"] + want["notes"]}]
    changed += [f"-{c['code']}" for c in want["warnings"] + want["notes"]
                if c["code"] not in {m["code"] for m in got["warnings"] + got["notes"]}]
    return expect, norm, label + (", " + ", ".join(changed) if changed else "")


_DEFAULTS = {("serving", "adapters"): 1, ("serving", "latency_sensitive"): False, ("serving", "requests_per_day"): 0,
             ("task", "quality"): "production"}


def _plain(policy: Any, mutant: Mutant, facts: dict, norm: dict, expect: dict) -> dict:
    """Return ``facts`` without the fields that only restate a default (when the case still kills the mutant)."""
    import copy

    from ..facts import FactsError

    trimmed = copy.deepcopy(facts)
    for (group, key), value in _DEFAULTS.items():
        if trimmed.get(group, {}).get(key) == value:
            del trimmed[group][key]
    row_shift = policy.use_cases.get(norm["task"].get("use_case"), {}).get("shift")
    if trimmed.get("task", {}).get("shift") == row_shift:
        del trimmed["task"]["shift"]
    if trimmed.get("hardware", {}).get("gpu_count") == 1:
        del trimmed["hardware"]["gpu_count"]
    trimmed = {g: v for g, v in trimmed.items() if v}
    try:
        again = _suggestion_expect(policy, mutant, trimmed)
    except FactsError:
        return facts
    return trimmed if again == expect else facts


def _suggestion_expect(policy: Any, mutant: Mutant, facts: dict) -> dict | None:
    found = _suggestion_core(policy, mutant, facts)
    return found[0] if found else None


def _case_text(note: str, facts: dict, expect: dict) -> str:
    import json

    def flow(d: dict) -> str:
        return "{" + ", ".join(f"{k}: {flow(v) if isinstance(v, dict) else _value(v)}" for k, v in d.items()) + "}"

    def _value(v: Any) -> str:
        if isinstance(v, list):
            return json.dumps(v)
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        return _count(v) if isinstance(v, (int, float)) else str(v)

    return f"- note: \"{note}\"\n  facts: {flow(facts)}\n  expect: {flow(expect)}"
