"""`decide check`: each check on a deliberately broken policy (golden files), the default policy, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ruleengine.authoring.check import check_policy
from ruleengine.cli import main

from .conftest import FIXTURES, MINI, REPO

BROKEN = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and p.name.startswith("broken-"))
# the code each fixture exists for, and the exit status of `decide check` on it
EXPECTED = {
    "broken-dead-advise": ("advise-never-matches", 5),
    "broken-gap": ("select-gap", 0),
    "broken-never-fits": ("rule-never-fits", 5),
    "broken-never-holds": ("rule-never-holds", 5),
    "broken-overlap": ("rule-overlap", 0),
    "broken-shadowed": ("rule-shadowed", 5),
    "broken-unbumped-version": ("version-not-bumped", 5),
    "broken-unused-names": ("threshold-unused", 0),
    "broken-use-case-rules": ("use-case-method-override", 0),
    "broken-use-case-table": ("rank-not-power-of-two", 3),
}


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_every_broken_fixture_is_listed():
    from .test_fixtures import GOLDENS

    assert sorted(set(EXPECTED) | set(GOLDENS)) == BROKEN


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_policy_golden(name, monkeypatch, expected_file):
    """`decide check` on each broken fixture prints exactly its golden file (UPDATE_GOLDEN=1 rewrites)."""
    monkeypatch.chdir(REPO)
    target = f"tests/fixtures/policies/{name}"
    result = run("check", target)
    code, status = EXPECTED[name]
    assert result.exit_code == status, result.output
    assert f"[{code}]" in result.output
    text = f"$ decide check {target}\n# exit {result.exit_code}\n{result.stdout}{result.stderr}"
    expected_file(FIXTURES / name / "check.expected.txt", text)


@pytest.mark.parametrize("name", [n for n, (_, status) in EXPECTED.items() if status == 0])
def test_deny_warnings_turns_warnings_into_failure(name, monkeypatch):
    monkeypatch.chdir(REPO)
    assert run("check", f"tests/fixtures/policies/{name}", "--deny-warnings").exit_code == 5


def test_default_policy_has_no_errors():
    # speed is measured by bench/bench_check.py, not asserted here
    report = check_policy(str(REPO / "policies" / "default"))
    assert report.count("error") == 0, [d.render() for d in report.diagnostics]
    codes = {d.code for d in report.diagnostics}
    assert "rule-shadowed" not in codes and "select-gap" not in codes and "rule-never-fits" not in codes
    assert report.count("warning") == 0, [d.render() for d in report.diagnostics]
    assert "advise-never-matches" not in codes


def test_fallbacks_with_cheaper_verdicts_are_not_shadowed(write_policy):
    """A later rule with the same conditions and a cheaper verdict is a fallback (the implicit fit guard)."""
    path = write_policy("""
        - id: table
          priority: 10
          when: []
          then: {use_case: true}
          rationale: the table
        - id: table-qlora
          priority: 20
          when: [{fact: use_case.method, op: in, value: [lora]}]
          then: {use_case: true, method: qlora}
          rationale: the same adapter on a 4-bit base
        - id: same-as-table
          priority: 30
          when: [{fact: task.use_case, op: "==", value: chat}]
          then: {method: lora, rank: 16, target_modules: all-linear}
          rationale: the chat row's verdict again
        """)
    report = check_policy(path)
    shadowed = {d.path: d for d in report.diagnostics if d.code == "rule-shadowed"}
    assert "rules.table-qlora" not in shadowed
    assert shadowed["rules.same-as-table"].severity == "error"  # exact: same resolved verdict for chat


def test_fact_to_fact_comparisons_are_reported_as_approximated(write_policy):
    path = write_policy("""
        - id: more-memory-than-lora
          priority: 10
          when: [{fact: hardware.usable_gb, op: ">", value: {fact: mem.lora_gb}}]
          then: {method: lora, rank: 16}
          rationale: compares two facts
        - id: rest
          priority: 90
          when: []
          then: {method: qlora, rank: 16}
          rationale: fallback
        """)
    report = check_policy(path)
    assert "more-memory-than-lora" in report.provenance["fact-vs-fact"]


def test_check_json_format_and_update_lock(tmp_path, write_policy):
    path = write_policy("""
        - id: rest
          priority: 90
          when: []
          then: {use_case: true}
          rationale: fallback
        """, header=MINI.replace("gpus:", "settings: {major_flip_percent: 50}\ngpus:"))
    lock = tmp_path / "versions.lock"
    changelog = tmp_path / "CHANGELOG.md"
    result = run("check", path, "--format", "json", "--lock", str(lock))
    assert result.exit_code == 5, result.output  # no CHANGELOG entry for mini 1.0.0
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["policies"][0]["policy"]["name"] == "mini"
    assert [d["code"] for d in data["policies"][0]["diagnostics"] if d["severity"] == "error"] == [
        "changelog-missing-entry"]
    assert {"error", "warning", "note"} == set(data["policies"][0]["counts"])
    refused = run("check", path, "--update-lock", "--lock", str(lock))
    assert refused.exit_code == 5 and "changelog-missing-entry" in refused.stdout and not lock.exists()
    changelog.write_text("# Changelog\n\n## mini 1.0.0\n\nFirst release.\n", encoding="utf-8")
    result = run("check", path, "--update-lock", "--lock", str(lock))
    assert result.exit_code == 0 and "recorded mini 1.0.0" in result.stdout
    assert "mini" in lock.read_text() and (tmp_path / "releases" / "mini" / "1.0.0.yaml").is_file()
    # change the policy without a version bump: check and --update-lock both refuse
    policy_file = os.path.join(path, "policy.yaml")
    with open(policy_file, "a", encoding="utf-8") as fh:
        fh.write("""  - id: big
    priority: 10
    when: [{fact: data.examples, op: ">=", value: {threshold: large_data_examples}}]
    then: {method: full_ft}
    rationale: new
""")
    result = run("check", path, "--lock", str(lock))
    assert result.exit_code == 5 and "version-not-bumped" in result.stdout
    assert run("check", path, "--update-lock", "--lock", str(lock)).exit_code == 5
    target = Path(policy_file)
    # a patch bump for a change that flips verdicts is too small, even with its CHANGELOG entry
    target.write_text(target.read_text(encoding="utf-8").replace("version: 1.0.0", "version: 1.0.1"), encoding="utf-8")
    with open(changelog, "a", encoding="utf-8") as fh:
        fh.write("\n## mini 1.0.1\n\nFull FT on big data.\n")
    result = run("check", path, "--lock", str(lock))
    assert result.exit_code == 5 and "error[version-bump-too-small]" in result.stdout, result.output
    assert "needs MINOR" in result.stdout and "1.1.0" in result.stdout
    assert run("check", path, "--update-lock", "--lock", str(lock)).exit_code == 5
    assert "1.0.1" not in lock.read_text()
    target.write_text(target.read_text(encoding="utf-8").replace("version: 1.0.1", "version: 1.1.0"), encoding="utf-8")
    result = run("check", path, "--update-lock", "--lock", str(lock))
    assert result.exit_code == 5 and "no entry for mini 1.1.0" in result.stdout  # the CHANGELOG names 1.0.1
    changelog.write_text(changelog.read_text(encoding="utf-8").replace("mini 1.0.1", "mini 1.1.0"), encoding="utf-8")
    result = run("check", path, "--update-lock", "--lock", str(lock))
    assert result.exit_code == 0, result.output
    assert "1.1.0" in lock.read_text() and "1.0.0" in lock.read_text()
    assert (tmp_path / "releases" / "mini" / "1.1.0.yaml").is_file()


def test_invalid_policy_exits_3_with_located_errors(monkeypatch):
    monkeypatch.chdir(REPO)
    result = run("check", "tests/fixtures/policies/broken-use-case-table")
    assert result.exit_code == 3
    assert "policy.yaml:14:43: error[rank-not-power-of-two]" in result.stderr


def test_decide_check_default_in_a_real_subprocess():
    exe = REPO / ".venv" / "bin" / "decide"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ruleengine.cli"]
    done = subprocess.run(cmd + ["check", "policies/default"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checked default" in done.stdout and "0 error(s)" in done.stdout


def test_memory_probe_fits_exactly_when_the_engine_says_so():
    """The sampled checks rely on: a verdict fits a GPU iff its minimal estimate <= usable memory."""
    from ruleengine.authoring.analysis import MemoryProbe, verdict_spec
    from ruleengine.derive import derive
    from ruleengine.facts import normalize_facts
    from ruleengine.policy import load_policy

    policy = load_policy(None)
    probe = MemoryProbe(policy)
    for params in ("1.1B", "7B", "13B", "34B", "70B"):
        for gpu in ("a10g-24gb", "a100-80gb", "v100-32gb"):
            for count in (1, 4):
                facts = normalize_facts({"model": {"params": params}, "hardware": {"gpu": gpu, "gpu_count": count},
                                         "data": {"examples": 50000}, "task": {"use_case": "chat"}}, policy)
                derived = derive(policy, facts)
                for rule in policy.select_rules:
                    spec = verdict_spec(policy, rule.then, "chat")
                    low = probe.min_estimate(spec, facts, count, policy.gpus[gpu]["bf16"])
                    assert (low <= derived.usable_gb) == derived.candidates[rule.id].fits, (params, gpu, count, rule.id)


def test_a_bad_test_case_does_not_crash_check(tmp_path, write_policy):
    """check reads the cases only for the GPUs they name: a malformed case is `decide test`'s to report."""
    path = write_policy("""
        - id: rest
          priority: 90
          when: []
          then: {use_case: true}
          rationale: fallback
        """)
    tests = tmp_path / "p" / "tests"
    tests.mkdir()
    (tests / "cases.yaml").write_text("cases:\n  - note: bad\n    facts: {hardware: [1, 2], model: 7}\n"
                                      "    expect: {method: lora}\n", encoding="utf-8")
    result = run("check", path)
    assert result.exit_code == 0, result.output
    tested = run("test", path)
    assert tested.exit_code == 2 and "cases.yaml:3:" in tested.stderr
