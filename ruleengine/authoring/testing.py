"""Policy test cases: YAML files beside a policy (``tests/*.yaml``) with facts and expectations.

A case file holds ``cases:``, a list of ``{note, facts, expect}``. ``expect`` may give
``feasible``, ``method``, ``rank``, ``target_modules``, ``rule`` (the chosen rule id),
``matched_rules`` (must all be among the matched select rules), ``warnings`` / ``notes``
(codes that must be present), ``not_warnings`` / ``not_notes`` (codes that must be absent).

``validate_cases`` checks the cases against the policy before anything runs (facts valid,
rule ids, methods and message codes known), so a typo in ``not_warnings`` cannot make a case
pass silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..diagnostics import Diagnostic, DiagnosticError, Location, did_you_mean
from ..yamlsafe import LocatedDoc, load_yaml_file

EXPECT_KEYS = ("feasible", "method", "rank", "target_modules", "rule", "matched_rules", "warnings", "notes",
               "not_warnings", "not_notes")
GATE_KEYS = ("min_coverage", "min_mutation_score")
ENGINE_NOTE_CODES = ("verdict-adjusted", "facts-adjusted", "settings-changed-to-fit")  # notes the engine adds


@dataclass
class Case:
    """One test case with where it was written."""

    note: str
    facts: dict
    expect: dict
    location: Location
    file: str
    index: int = 0
    doc: LocatedDoc | None = field(default=None, repr=False, compare=False)

    def loc(self, *path: Any, key: bool = False) -> Location:
        """Return the location of a path inside this case (the case itself when unknown)."""
        if self.doc is None:
            return self.location
        return self.doc.loc(("cases", self.index) + tuple(path), key)

    def facts_input(self) -> Any:
        """Return the facts as a FactsInput whose diagnostics point into the case file."""
        from ..facts import FactsInput

        return FactsInput(self.facts, _CaseDoc(self) if self.doc is not None else None)


class _CaseDoc:
    """Locates facts paths inside a case (duck-types LocatedDoc.loc for FactsInput)."""

    def __init__(self, case: Case):
        self.case = case

    def loc(self, path: tuple, key: bool = False) -> Location:
        return self.case.loc("facts", *path, key=key)


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


test_files.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


def load_gates(path: str) -> dict[str, float]:
    """Return the ``gates:`` a case file declares (``min_coverage``, ``min_mutation_score``, percent).

    Raises DiagnosticError (located) for a malformed file or gate.
    """
    doc = load_yaml_file(path)
    data = doc.data if isinstance(doc.data, dict) else {}
    gates = data.get("gates") or {}
    diags = []
    if not isinstance(gates, dict):
        raise DiagnosticError([Diagnostic("test-bad-gates", "`gates:` must be a mapping", doc.loc(("gates",)),
                                          "write gates: {min_coverage: 100, min_mutation_score: 90}")])
    out: dict[str, float] = {}
    for key, value in gates.items():
        if key not in GATE_KEYS:
            diags.append(Diagnostic("test-unknown-gate", f"unknown gate `{key}`", doc.loc(("gates", key), True),
                                    did_you_mean(str(key), GATE_KEYS)))
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            diags.append(Diagnostic("test-bad-gates", f"`{key}` must be a percentage (0-100)",
                                    doc.loc(("gates", key)), f"write {key}: 90"))
        else:
            out[key] = float(value)
    if diags:
        raise DiagnosticError(diags)
    return out


def load_cases(path: str) -> list[Case]:
    """Load the cases of one file; raises DiagnosticError (file:line:col) for a malformed file."""
    doc = load_yaml_file(path)
    data = doc.data
    diags: list[Diagnostic] = []
    if not isinstance(data, dict) or not isinstance(data.get("cases", []), list) or not (
            "cases" in data or "gates" in data):
        raise DiagnosticError([Diagnostic("test-bad-file", "a test file must hold `cases:`, a list (and may "
                                          "declare `gates:`)", Location(path, 1, 1), "see docs/policy-authoring.md")])
    for key in data:
        if key not in ("cases", "gates"):
            diags.append(Diagnostic("test-unknown-key", f"unknown key `{key}` in a test file", doc.loc((key,), True),
                                    "a test file holds `cases:` and may declare `gates:`"))
    cases: list[Case] = []
    for i, raw in enumerate(data.get("cases") or []):
        loc = doc.loc(("cases", i))
        if not isinstance(raw, dict) or not isinstance(raw.get("facts"), dict) or not isinstance(raw.get("expect"), dict):
            diags.append(Diagnostic("test-bad-case", "a case needs `facts:` and `expect:` mappings", loc,
                                    "write `- note: ...` / `facts: {...}` / `expect: {...}`"))
            continue
        for key in raw:
            if key not in ("note", "facts", "expect"):
                diags.append(Diagnostic("test-unknown-key", f"unknown key `{key}` in a case", doc.loc(("cases", i, key), True),
                                        did_you_mean(key, ("note", "facts", "expect"))))
        for key in raw["expect"]:
            if key not in EXPECT_KEYS:
                diags.append(Diagnostic("test-unknown-expectation", f"unknown expectation `{key}`",
                                        doc.loc(("cases", i, "expect", key), True), did_you_mean(key, EXPECT_KEYS)))
        cases.append(Case(str(raw.get("note", f"case {i + 1}")), raw["facts"], raw["expect"], loc, path, i, doc))
    if diags:
        raise DiagnosticError(diags)
    return cases


def validate_cases(cases: list[Case], policy: Any) -> list[Diagnostic]:
    """Return the problems of ``cases`` against ``policy``: invalid facts, unknown rule ids, methods, codes.

    Every diagnostic points into the case file. An empty list means the cases can run.
    """
    from ..facts import FactsError, normalize_facts
    from ..vocabulary import METHODS

    rule_ids = [r.id for r in policy.rules]
    select_ids = [r.id for r in policy.select_rules]
    warn_codes = sorted({w["code"] for r in policy.rules for w in r.warn})
    note_codes = sorted({n["code"] for r in policy.rules for n in r.note} | set(ENGINE_NOTE_CODES))
    diags: list[Diagnostic] = []
    for case in cases:
        try:
            normalize_facts(case.facts_input(), policy)
        except FactsError as exc:
            diags.extend(exc.diagnostics)
        exp = case.expect

        def bad(key: str, message: str, help: str, *sub: Any, case: Case = case) -> None:
            diags.append(Diagnostic("test-bad-expectation", message, case.loc("expect", key, *sub), help))

        if "feasible" in exp and not isinstance(exp["feasible"], bool):
            bad("feasible", "`feasible` must be true or false", "write feasible: true")
        if "method" in exp and exp["method"] not in METHODS:
            bad("method", f"unknown method `{exp['method']}`", did_you_mean(str(exp["method"]), METHODS))
        if "rank" in exp and exp["rank"] is not None and (isinstance(exp["rank"], bool) or not isinstance(exp["rank"], int)):
            bad("rank", "`rank` must be an integer (or null)", "write rank: 16")
        if "rule" in exp and exp["rule"] is not None and exp["rule"] not in select_ids:
            bad("rule", f"`{exp['rule']}` is not a select rule of policy `{policy.name}`",
                did_you_mean(str(exp["rule"]), select_ids))
        for key, known in (("matched_rules", select_ids), ("warnings", warn_codes), ("not_warnings", warn_codes),
                           ("notes", note_codes), ("not_notes", note_codes)):
            if key not in exp:
                continue
            if not isinstance(exp[key], list):
                bad(key, f"`{key}` must be a list", f"write {key}: [a, b]")
                continue
            for j, value in enumerate(exp[key]):
                if value not in known:
                    what = "select rule" if key == "matched_rules" else ("warning code" if "warn" in key else "note code")
                    bad(key, f"`{value}` is not a {what} of policy `{policy.name}`",
                        did_you_mean(str(value), known if key != "matched_rules" else rule_ids), j)
    return diags


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
    """Decide the case's facts under ``policy`` and compare with its expectations.

    A case whose facts are rejected (FactsError) is returned with ``error`` set, never raised.
    """
    from .. import api

    try:
        decision = api.engine_for(policy).decide(case.facts_input(), origin=os.path.dirname(case.file)).to_dict()
    except DiagnosticError as exc:
        return CaseResult(case, error="; ".join(f"{d.location}: {d.message}" for d in exc.diagnostics))
    return CaseResult(case, check_case(case, decision), decision)
