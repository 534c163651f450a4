"""`decide test`: run a policy's cases, report failures as field tables, and measure rule coverage.

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
from .testing import CaseResult, load_cases, run_case, test_files, validate_cases


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
            "coverage": {"rules_percent": round(self.rule_coverage, 2), "outcomes_percent": round(self.outcome_coverage, 2),
                         "outcomes_seen": seen, "outcomes_possible": possible,
                         "rules": [r.to_dict() for r in self.rules]},
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


def run_policy_tests(policy_path: str) -> PolicyTestReport:
    """Run every case file beside the policy at ``policy_path`` and measure coverage.

    Raises PolicyError (exit 3) for an invalid policy and DiagnosticError (exit 2) for malformed
    case files or cases that do not fit the policy (bad facts, unknown rule ids or codes).
    """
    from ..policy import load_policy
    from .validation import require_runnable

    t0 = time.perf_counter()
    policy = load_policy(policy_path)
    require_runnable(policy)
    files = test_files(policy_path)
    cases = []
    diags: list[Diagnostic] = []
    for f in files:
        try:
            cases.extend(load_cases(f))
        except DiagnosticError as exc:
            diags.extend(exc.diagnostics)
    if not diags:
        diags.extend(validate_cases(cases, policy))
    if diags:
        raise DiagnosticError(diags)
    report = PolicyTestReport(policy, str(policy_path), files)
    coverage = _static(policy)
    for case in cases:
        result = run_case(policy, case)
        report.results.append(result)
        if result.decision is None:
            continue
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
    return "\n".join(lines)
