"""Every test case written beside every bundled policy passes (the use-case table rows among them)."""

from pathlib import Path

import pytest

from ruleengine.authoring.testing import load_cases, run_case, test_files
from ruleengine.cli.policy import discover_policies
from ruleengine.paths import policies_root
from ruleengine.policy import load_policy

CASES = [(policy_path, case) for policy_path in discover_policies((str(policies_root()),))
         for f in test_files(policy_path) for case in load_cases(f)]


def _id(item):
    policy_path, case = item
    return f"{Path(policy_path).name}:{Path(case.file).stem}:{case.location.line}"


@pytest.mark.parametrize("item", CASES, ids=[_id(c) for c in CASES])
def test_policy_case(item):
    policy_path, case = item
    result = run_case(load_policy(policy_path), case)
    assert result.error is None, f"{case.note}: {result.error}"
    assert result.passed, f"{case.note} ({case.location}): " + "; ".join(
        f"{m['field']}: expected {m['expected']!r}, got {m['actual']!r}" for m in result.mismatches)


def test_every_use_case_row_has_a_case():
    policy = load_policy(None)
    covered = {case.facts.get("task", {}).get("use_case") for p, case in CASES if Path(p).name == "default"}
    assert set(policy.use_cases) <= covered
