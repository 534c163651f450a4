"""`decide test`: case files, failures as field tables, located errors for bad cases, rule coverage."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from click.testing import CliRunner

from ruleengine.authoring.coverage import run_policy_tests
from ruleengine.authoring.testing import load_cases, test_files
from ruleengine.cli import main

from .conftest import REPO

RULES = """
- id: big-data-full-ft
  priority: 10
  when: [{fact: data.examples, op: ">=", value: {threshold: large_data_examples}}]
  then: {method: full_ft}
  rationale: lots of data
- id: table
  priority: 90
  when: []
  then: {use_case: true}
  rationale: the table
- id: full-ft-forgetting
  kind: advise
  priority: 100
  when: [{fact: verdict.method, op: "==", value: full_ft}]
  warn: [{code: forgetting-monitor, message: watch forgetting}]
  rationale: full FT forgets
"""

CASES = """\
cases:
  - note: chat with a small dataset
    facts:
      model: {params: 7B}
      data: {examples: 20k}
    expect: {feasible: true, method: lora, rank: 16, rule: table, not_warnings: [forgetting-monitor]}
"""


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def with_cases(path: str, text: str, name: str = "cases.yaml") -> Path:
    folder = Path(path) / "tests"
    folder.mkdir(exist_ok=True)
    target = folder / name
    target.write_text(textwrap.dedent(text), encoding="utf-8")
    return target


def test_default_policy_passes_with_full_rule_coverage():
    report = run_policy_tests(str(REPO / "policies" / "default"))
    assert not report.failures, [(r.case.note, r.mismatches, r.error) for r in report.failures]
    assert report.rule_coverage == 100.0
    assert report.outcome_coverage == 100.0
    unreachable = sorted(r.id for r in report.rules if r.unreachable)
    assert unreachable == []
    result = run("test", str(REPO / "policies" / "default"), "--min-coverage", "100")
    assert result.exit_code == 0, result.output
    n = len(report.rules)
    assert f"rule coverage: {n}/{n} rules exercised (100.0%)" in result.stdout


def test_a_failing_case_shows_a_field_table_and_exits_5(write_policy):
    path = write_policy(RULES)
    with_cases(path, CASES.replace("method: lora, rank: 16, rule: table", "method: qlora, rank: 16, rule: table"))
    result = run("test", path)
    assert result.exit_code == 5
    out = result.stdout
    assert "1 passed" not in out and "0 passed, 1 failed" in out
    assert "FAIL " in out and "cases.yaml:2:5: chat with a small dataset" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("    ")]
    assert ["field", "expected", "actual"] in lines and ["method", "qlora", "lora"] in lines


def test_coverage_counts_chosen_and_matched_rules_and_both_outcomes(write_policy):
    path = write_policy(RULES)
    with_cases(path, CASES)
    report = run_policy_tests(path)
    cov = {r.id: r for r in report.rules}
    assert cov["table"].exercised == 1 and cov["big-data-full-ft"].exercised == 0
    assert cov["big-data-full-ft"].seen_false == 1 and cov["big-data-full-ft"].seen_true == 0
    assert cov["table"].can_be_false is False  # `when: []` has no false outcome
    assert round(report.rule_coverage, 1) == 33.3
    result = run("test", path, "--min-coverage", "50")
    assert result.exit_code == 5 and "below the minimum 50%" in result.stdout
    data = json.loads(run("test", path, "--format", "json").stdout)
    assert data["ok"] is True and data["policies"][0]["coverage"]["rules_percent"] == 33.33


def test_malformed_case_files_give_located_errors_and_exit_2(write_policy):
    path = write_policy(RULES, name="a")
    with_cases(path, """\
        cases:
          - note: typo in an expectation key
            facts: {model: {params: 7B}, data: {examples: 20k}}
            expect: {methd: lora}
        """)
    result = run("test", path)
    assert result.exit_code == 2
    assert "cases.yaml:4:14: error[test-unknown-expectation]: unknown expectation `methd`" in result.stderr
    assert "did you mean `method`?" in result.stderr
    path = write_policy(RULES, name="b")
    with_cases(path, "cases: [1, 2\n")
    result = run("test", path)
    assert result.exit_code == 2 and "error[yaml-syntax]" in result.stderr


def test_cases_are_validated_against_the_policy(write_policy):
    """Unknown rule ids, codes (a typo in not_warnings would pass silently) and bad facts are located errors."""
    path = write_policy(RULES)
    target = with_cases(path, """\
        cases:
          - note: bad
            facts: {model: {params: 7B}, data: {examples: lots}}
            expect: {rule: tabel, not_warnings: [forgeting-monitor], method: lora}
        """)
    result = run("test", path)
    assert result.exit_code == 2
    err = result.stderr
    assert f"{target}:3:51: error[facts-bad-count]" in err
    assert "`tabel` is not a select rule of policy `mini`" in err and "did you mean `table`?" in err
    assert "`forgeting-monitor` is not a warning code" in err and "did you mean `forgetting-monitor`?" in err


def test_single_file_policy_reads_cases_beside_it(tmp_path):
    from .conftest import MINI

    policy = tmp_path / "solo.yaml"
    policy.write_text(MINI + textwrap.indent(textwrap.dedent(RULES).strip() + "\n", "  "), encoding="utf-8")
    (tmp_path / "solo.tests").mkdir()
    (tmp_path / "solo.tests" / "a.yaml").write_text(CASES, encoding="utf-8")
    assert test_files(policy) == [str(tmp_path / "solo.tests" / "a.yaml")]
    assert len(load_cases(test_files(policy)[0])) == 1
    assert run("test", str(policy)).exit_code == 0


def test_invalid_policy_exits_3(monkeypatch):
    monkeypatch.chdir(REPO)
    result = run("test", "tests/fixtures/policies/broken-use-case-table")
    assert result.exit_code == 3 and "rank-not-power-of-two" in result.stderr
