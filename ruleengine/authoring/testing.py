"""Policy test cases: YAML files beside a policy (``tests/*.yaml``) with facts and expectations.

A case file holds ``cases:``, a list of ``{note, facts, expect}``. ``expect`` may give
``feasible``, ``method``, ``rank``, ``target_modules``, ``rule`` (the chosen rule id),
``matched_rules`` (must all be among the matched select rules), ``warnings`` / ``notes``
(codes that must be present), ``not_warnings`` / ``not_notes`` (codes that must be absent).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..diagnostics import Diagnostic, DiagnosticError, Location
from ..yamlsafe import load_yaml_file

EXPECT_KEYS = ("feasible", "method", "rank", "target_modules", "rule", "matched_rules", "warnings", "notes",
               "not_warnings", "not_notes")


@dataclass
class Case:
    """One test case with where it was written."""

    note: str
    facts: dict
    expect: dict
    location: Location
    file: str


@dataclass
class CaseResult:
    """The outcome of one case: the mismatches (empty when it passed) and what the decision was."""

    case: Case
    mismatches: list[dict] = field(default_factory=list)
    decision: dict | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        """Return True when the case met every expectation."""
        return not self.mismatches and self.error is None


def test_files(policy_path: str | os.PathLike) -> list[str]:
    """Return the case files of a policy: ``<bundle>/tests/*.yaml`` or ``<file stem>.tests/*.yaml``."""
    p = Path(policy_path)
    folder = p / "tests" if p.is_dir() else p.with_suffix("").with_name(p.stem + ".tests")
    if not folder.is_dir():
        return []
    return [str(f) for f in sorted(folder.glob("*.y*ml"))]


def load_cases(path: str) -> list[Case]:
    """Load the cases of one file; raises DiagnosticError (file:line:col) for a malformed file."""
    doc = load_yaml_file(path)
    data = doc.data
    diags: list[Diagnostic] = []
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise DiagnosticError([Diagnostic("test-bad-file", "a test file must hold `cases:`, a list",
                                          Location(path, 1, 1), "see docs/policy-authoring.md")])
    cases: list[Case] = []
    for i, raw in enumerate(data["cases"]):
        loc = doc.loc(("cases", i))
        if not isinstance(raw, dict) or not isinstance(raw.get("facts"), dict) or not isinstance(raw.get("expect"), dict):
            diags.append(Diagnostic("test-bad-case", "a case needs `facts:` and `expect:` mappings", loc))
            continue
        for key in raw["expect"]:
            if key not in EXPECT_KEYS:
                from ..diagnostics import did_you_mean

                diags.append(Diagnostic("test-unknown-expectation", f"unknown expectation `{key}`",
                                        doc.loc(("cases", i, "expect", key), True), did_you_mean(key, EXPECT_KEYS)))
        cases.append(Case(str(raw.get("note", f"case {i + 1}")), raw["facts"], raw["expect"], loc, path))
    if diags:
        raise DiagnosticError(diags)
    return cases


def check_case(case: Case, decision: dict) -> list[dict]:
    """Return the mismatches between ``case.expect`` and a decision dict (empty when all hold)."""
    verdict = decision.get("verdict") or {}
    actual: dict[str, Any] = {
        "feasible": decision["feasible"], "method": verdict.get("method"), "rank": verdict.get("rank"),
        "target_modules": verdict.get("target_modules"), "rule": decision.get("chosen_rule"),
    }
    warn_codes = [w["code"] for w in decision["warnings"]]
    note_codes = [n["code"] for n in decision["notes"]]
    out: list[dict] = []
    for key, expected in case.expect.items():
        if key in actual:
            if actual[key] != expected:
                out.append({"field": key, "expected": expected, "actual": actual[key]})
        elif key == "matched_rules":
            missing = [r for r in expected if r not in decision["matched_rules"]]
            if missing:
                out.append({"field": key, "expected": expected, "actual": decision["matched_rules"]})
        elif key in ("warnings", "notes"):
            codes = warn_codes if key == "warnings" else note_codes
            missing = [c for c in expected if c not in codes]
            if missing:
                out.append({"field": key, "expected": f"includes {missing}", "actual": codes})
        elif key in ("not_warnings", "not_notes"):
            codes = warn_codes if key == "not_warnings" else note_codes
            present = [c for c in expected if c in codes]
            if present:
                out.append({"field": key, "expected": f"excludes {present}", "actual": codes})
    return out


def run_case(policy: Any, case: Case) -> CaseResult:
    """Decide the case's facts under ``policy`` and compare with its expectations."""
    from ..engine import decide

    try:
        decision = decide(policy, case.facts, origin=os.path.dirname(case.file)).to_dict()
    except DiagnosticError as exc:
        return CaseResult(case, error="; ".join(d.message for d in exc.diagnostics))
    return CaseResult(case, check_case(case, decision), decision)
