"""Every broken fixture policy under the command that must catch it: exit status, code and a golden output.

A fixture ``tests/fixtures/policies/broken-NAME/`` holds one deliberate mistake of a policy author;
``GOLDENS`` names the command that catches it, and ``<command>.expected.txt`` beside the fixture holds
its exact output (``UPDATE_GOLDEN=1`` rewrites it after review). The `decide check` fixtures are
listed in test_check.py.
"""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from ruleengine.cli import main

from .conftest import FIXTURES, REPO

# fixture -> [(command and arguments after the fixture path, exit status, a text that must appear[, golden name])]
GOLDENS: dict[str, list[tuple]] = {
    "broken-units": [(["validate"], 3, "threshold-implausible")],
    "broken-not-runnable": [(["validate"], 3, "number-out-of-range")],
    "broken-not-finite": [(["validate"], 3, "yaml-not-finite")],
    "broken-deep-conditions": [(["validate"], 3, "yaml-too-deep")],
    "broken-huge-number": [(["validate"], 3, "yaml-bad-value")],
    "broken-engine-limits": [(["validate"], 3, "engine-limit"), (["check"], 3, "engine-limit"),
                             (["test"], 3, "engine-limit")],
    "broken-phases": [(["validate"], 3, "rank-not-power-of-two")],
    "broken-boundary": [(["test", "--mutants", "--min-mutation-score", "100"], 5, "SURVIVED", "test-mutants")],
    "broken-uncovered-row": [(["test", "--min-coverage", "100"], 5, "FAIL coverage", "test-min-coverage")],
    # hypothesis shrinks to a counterexample that may differ between machines: no golden output
    "broken-properties": [(["check", "--properties"], 5, "property-violated", "")],
    "broken-fit-gap": [(["check", "--deny-warnings"], 5, "fit-gap"),
                       (["--policy", "--model-params", "7B", "--gpu", "rtx4090-24gb", "--quality", "prototype",
                         "--examples", "50k", "--no-audit"], 1, "no rule chooses a method that fits", "decide")],
}
CASES = [(name, i) for name, runs in GOLDENS.items() for i in range(len(runs))]


def _golden_name(args: list[str]) -> str:
    return "-".join(a.lstrip("-") for a in args if not a.startswith("tests/")) + ".expected.txt"


@pytest.mark.parametrize("name,i", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_fixture_golden(name, i, monkeypatch, expected_file):
    monkeypatch.chdir(REPO)
    args, status, code = GOLDENS[name][i][:3]
    target = f"tests/fixtures/policies/{name}"
    command = [args[0], target, *args[1:]]
    result = CliRunner().invoke(main, command, catch_exceptions=False)
    assert result.exit_code == status, result.output
    assert (f"[{code}]" if code.islower() and " " not in code else code) in result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    text = f"$ decide {' '.join(command)}\n# exit {result.exit_code}\n{result.stdout}{result.stderr}"
    text = re.sub(r"^Decision \S+", "Decision <id>", text, flags=re.M)  # a new id every time
    golden = GOLDENS[name][i][3] + ".expected.txt" if len(GOLDENS[name][i]) > 3 else _golden_name(args)
    if golden == ".expected.txt":
        for prop in ("more-memory-stays-feasible", "more-data-keeps-capacity", "rows-reachable"):
            assert f"property-violated]: {prop}:" in result.output
        return
    expected_file(FIXTURES / name / golden, text)
