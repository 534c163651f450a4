"""`decide test`: run a policy's cases, report failures as field tables, and measure coverage.

Coverage counts rules, use-case rows and GPU entries: a row is covered when some case decides for
its use case, a GPU entry when some case runs on it (names and aliases alike). ``coverage`` is the
share of all three that the cases reach; ``--min-coverage`` applies to it. ``--mutants`` adds the
mutation adequacy of the cases (``mutants.py``).

Rule coverage: a select rule is *exercised* when some case chose it; an advise rule when some
case matched it. Rules that can never apply, proven exactly by the box analysis (conditions that
contradict each other, advise rules on a ``verdict.method`` no select rule can choose there),
are listed separately and left out of the percentage: no case can exercise them, and
``decide check`` reports them.

Outcome coverage: for each rule, whether its conditions were seen true and seen false across
the cases (select rules: ``conditions_hold`` in the trace, regardless of the fit guard; advise
rules: matched). An outcome that cannot happen (``when: []`` is never false) is not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..diagnostics import Diagnostic, DiagnosticError
from .analysis import advise_reachable, analyse
from .intervals import referenced_dims, universe
from .testing import CaseResult, load_cases, load_gates, run_case, test_files, validate_cases


@dataclass
class RuleCoverage:
    """Coverage of one rule across the cases."""

    id: str
    kind: str
    exercised: int = 0  # cases that chose (select) / matched (advise) it
    seen_true: int = 0
    seen_false: int = 0
    can_be_true: bool = True
    can_be_false: bool = True
    unreachable: str = ""  # why the rule can never apply ("" when it can)

    def to_dict(self) -> dict:
        """Return a JSON-safe dict."""
        return dict(self.__dict__)


@dataclass
class PolicyTestReport:
    """The results and coverage of one policy's cases."""

    policy: Any
    path: str
    files: list[str]
    results: list[CaseResult] = field(default_factory=list)
    rules: list[RuleCoverage] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # use case -> cases deciding for it
    gpus: dict[str, int] = field(default_factory=dict)  # catalog GPU -> cases running on it
    gates: dict[str, float] = field(default_factory=dict)  # declared in the case files
    mutation: Any = None  # a mutants.MutationReport when --mutants ran
    seconds: float = 0.0

    @property
    def failures(self) -> list[CaseResult]:
        """Return the cases that failed."""
        return [r for r in self.results if not r.passed]

    @property
    def counted(self) -> list[RuleCoverage]:
        """Return the rules that count towards coverage (those that can apply)."""
        return [r for r in self.rules if not r.unreachable]

    @property
    def rule_coverage(self) -> float:
        """Return the percentage of countable rules exercised by some case (100 when there are none)."""
        counted = self.counted
        if not counted:
            return 100.0
        return 100.0 * sum(1 for r in counted if r.exercised) / len(counted)

    def coverage_counts(self) -> tuple[int, int]:
        """Return (covered, countable) over countable rules, use-case rows and GPU entries."""
        counted = self.counted
        covered = (sum(1 for r in counted if r.exercised) + sum(1 for n in self.rows.values() if n)
                   + sum(1 for n in self.gpus.values() if n))
        return covered, len(counted) + len(self.rows) + len(self.gpus)

    @property
    def coverage(self) -> float:
        """Return the percentage of rules, use-case rows and GPU entries the cases reach (100 when none)."""
        covered, total = self.coverage_counts()
        return 100.0 * covered / total if total else 100.0

    def outcome_counts(self) -> tuple[int, int]:
        """Return (outcomes seen, outcomes possible) over the countable rules."""
        seen = possible = 0
        for r in self.counted:
            for can, count in ((r.can_be_true, r.seen_true), (r.can_be_false, r.seen_false)):
                if can:
                    possible += 1
                    seen += 1 if count else 0
        return seen, possible

    @property
    def outcome_coverage(self) -> float:
        """Return the percentage of possible true/false rule outcomes seen (100 when there are none)."""
        seen, possible = self.outcome_counts()
        return 100.0 * seen / possible if possible else 100.0

    def to_dict(self) -> dict:
        """Return a JSON-safe report."""
        seen, possible = self.outcome_counts()
        return {
            "policy": {"name": self.policy.name, "version": self.policy.version, "path": self.path},
            "files": self.files, "cases": len(self.results), "passed": len(self.results) - len(self.failures),
            "failed": len(self.failures),
            "failures": [{"file": r.case.file, "line": r.case.location.line, "note": r.case.note,
                          "mismatches": r.mismatches, "error": r.error} for r in self.failures],
            "coverage": {"percent": round(self.coverage, 2), "rules_percent": round(self.rule_coverage, 2),
                         "outcomes_percent": round(self.outcome_coverage, 2),
                         "outcomes_seen": seen, "outcomes_possible": possible,
                         "rules": [r.to_dict() for r in self.rules], "use_cases": self.rows, "gpus": self.gpus},
            "gates": self.gates,
            "mutation": self.mutation.to_dict() if self.mutation is not None else None,
            "seconds": round(self.seconds, 3),
        }


def _static(policy: Any) -> dict[str, RuleCoverage]:
    """Return per-rule coverage records with what the box analysis proves about each rule."""
    analysis = analyse(policy)
    space = analysis.space
    out: dict[str, RuleCoverage] = {}
    for rule in policy.rules:
        info = analysis.rules[rule.id]
        rc = RuleCoverage(rule.id, rule.kind)
        if info.never_holds:
            rc.unreachable = "its conditions contradict each other"
        elif rule.kind == "advise":
            ok, why = advise_reachable(analysis, info)
            rc.unreachable = "" if ok else why
        rc.can_be_true = not info.never_holds
        dims = referenced_dims(space, [rule])
        rc.can_be_false = bool(space.remainder([universe(space, dims)], info.over)) if not info.opaque else True
        out[rule.id] = rc
    return out


def run_policy_tests(policy_path: str, mutants: bool = False) -> PolicyTestReport:
    """Run every case file beside the policy at ``policy_path`` and measure coverage (and, with ``mutants``,
    the mutation adequacy of the cases).

    Raises PolicyError (exit 3) for an invalid policy and DiagnosticError (exit 2) for malformed
    case files or cases that do not fit the policy (bad facts, unknown rule ids or codes, bad gates).
    """
    from ..policy import load_policy
    from .validation import require_runnable

    t0 = time.perf_counter()
    policy = load_policy(policy_path)
    require_runnable(policy)
    files = test_files(policy_path)
    cases = []
    gates: dict[str, float] = {}
    diags: list[Diagnostic] = []
    for f in files:
        try:
            cases.extend(load_cases(f))
            gates.update(load_gates(f))
        except DiagnosticError as exc:
            diags.extend(exc.diagnostics)
    if not diags:
        diags.extend(validate_cases(cases, policy))
    if diags:
        raise DiagnosticError(diags)
    report = PolicyTestReport(policy, str(policy_path), files, gates=gates)
    report.rows = {uc: 0 for uc in policy.use_cases}
    report.gpus = {g: 0 for g in policy.gpus}
    coverage = _static(policy)
    for case in cases:
        result = run_case(policy, case)
        report.results.append(result)
        if result.decision is None:
            continue
        normalized = result.decision["facts"]["normalized"]
        use_case, gpu = normalized["task"].get("use_case"), normalized["hardware"].get("gpu")
        if use_case in report.rows:
            report.rows[use_case] += 1
        if gpu in report.gpus:
            report.gpus[gpu] += 1
        for event in result.decision["trace"]:
            if event.get("event") != "rule" or event["rule"] not in coverage:
                continue
            rc = coverage[event["rule"]]
            holds = event["conditions_hold"] if event["kind"] == "select" else event["matched"]
            if holds:
                rc.seen_true += 1
            else:
                rc.seen_false += 1
            if (event["kind"] == "select" and event.get("chosen")) or (event["kind"] == "advise" and event["matched"]):
                rc.exercised += 1
    report.rules = [coverage[r.id] for r in policy.rules]
    if mutants and not report.failures:
        from .mutants import run_mutants

        report.mutation = run_mutants(policy, cases)
    report.seconds = time.perf_counter() - t0
    return report


def _cell(value: Any) -> str:
    import json

    if isinstance(value, str):
        return value
    return json.dumps(value)


def render_failure(result: CaseResult) -> list[str]:
    """Return the lines describing one failed case: where, what, and a field table expected vs actual."""
    case = result.case
    lines = [f"FAIL {case.location}: {case.note}"]
    if result.error:
        lines.append(f"  error: {result.error}")
        return lines
    rows = [("field", "expected", "actual")] + [(m["field"], _cell(m["expected"]), _cell(m["actual"]))
                                                for m in result.mismatches]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        lines.append(f"    {row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}")
    decision = result.decision or {}
    if decision:
        lines.append(f"  decided by `{decision.get('chosen_rule')}`; matched select rules: "
                     f"{', '.join(decision.get('matched_rules') or []) or 'none'}")
    return lines


def render_report_text(report: PolicyTestReport, verbose: bool = False) -> str:
    """Return a policy's test report as text: failures, then rule and outcome coverage."""
    p = report.policy
    lines = [f"{report.path}: {p.name} {p.version}: {len(report.results)} cases in {len(report.files)} files, "
             f"{len(report.results) - len(report.failures)} passed, {len(report.failures)} failed"]
    for result in report.failures:
        lines.extend(render_failure(result))
    counted = report.counted
    exercised = sum(1 for r in counted if r.exercised)
    lines.append(f"rule coverage: {exercised}/{len(counted)} rules exercised ({report.rule_coverage:.1f}%) "
                 "- select: chosen by a case; advise: matched by a case")
    missing = [r.id for r in counted if not r.exercised]
    if missing:
        lines.append("  not exercised: " + ", ".join(missing))
    unreachable = [r for r in report.rules if r.unreachable]
    if unreachable:
        lines.append(f"  not counted, can never apply ({len(unreachable)}; see decide check):")
        lines.extend(f"    {r.id}: {r.unreachable}" for r in unreachable)
    seen, possible = report.outcome_counts()
    both = sum(1 for r in counted if (r.seen_true or not r.can_be_true) and (r.seen_false or not r.can_be_false))
    lines.append(f"outcome coverage: {seen}/{possible} condition outcomes seen ({report.outcome_coverage:.1f}%); "
                 f"{both}/{len(counted)} rules seen both true and false (where possible)")
    only_true = [r.id for r in counted if r.can_be_false and not r.seen_false]
    only_false = [r.id for r in counted if r.can_be_true and not r.seen_true]
    always = [r.id for r in counted if not r.can_be_false]
    if only_true:
        lines.append("  never seen false: " + ", ".join(only_true))
    if only_false:
        lines.append("  never seen true: " + ", ".join(only_false))
    if always and verbose:
        lines.append("  always true (no false outcome): " + ", ".join(always))
    rows = sum(1 for n in report.rows.values() if n)
    gpus = sum(1 for n in report.gpus.values() if n)
    lines.append(f"table coverage: {rows}/{len(report.rows)} use-case rows and {gpus}/{len(report.gpus)} GPU entries "
                 "decided on by a case")
    for what, table in (("use-case rows", report.rows), ("GPU entries", report.gpus)):
        missing = [k for k, n in table.items() if not n]
        if missing:
            lines.append(f"  {what} without a case: " + ", ".join(missing))
    covered, total = report.coverage_counts()
    lines.append(f"coverage: {covered}/{total} rules, use-case rows and GPU entries ({report.coverage:.1f}%)")
    if report.mutation is not None:
        lines.extend(render_mutation_text(report.mutation, verbose))
    elif report.failures and report.gates.get("min_mutation_score") is not None:
        lines.append("mutation: not run while cases fail")
    return "\n".join(lines)


def render_mutation_text(m: Any, verbose: bool = False) -> list[str]:
    """Return the mutation section: the score, then each surviving mutant with a case that would kill it."""
    lines = [f"mutation: {len(m.results)} mutants, {m.killed} killed, {m.equivalent} equivalent (no fact set of the "
             f"grid tells them apart), {len(m.survivors)} survived: score {m.score:.1f}%"]
    by_kind: dict[str, list[int]] = {}
    for r in m.results:
        counts = by_kind.setdefault(r.mutant.kind, [0, 0])
        counts[0] += 1
        counts[1] += 1 if r.killed_by else 0
    lines.append("  by kind: " + ", ".join(f"{k} {v[1]}/{v[0]}" for k, v in sorted(by_kind.items())))
    for r in m.survivors:
        lines.append(f"SURVIVED {r.mutant.location}: {r.mutant.description}")
        if r.suggestion:
            lines.append("  no case tells them apart; this one would (add it to a case file):")
            lines.extend("    " + line for line in r.suggestion["text"].splitlines())
    if verbose:
        lines.extend(f"  equivalent: {r.mutant.description}" for r in m.results if r.equivalent)
    return lines
