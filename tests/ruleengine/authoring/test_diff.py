"""`decide diff`: textual changes, verdict flips on the grid, the version rule, git revisions."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ruleengine.authoring.diff import (
    diff_policies,
    load_any,
    render_diff_text,
    textual_changes,
    version_diagnostics,
)
from ruleengine.authoring.grid import GridEvaluator, build_grid, point_facts
from ruleengine.cli import main
from ruleengine.evaluate import evaluator_for
from ruleengine.facts import normalize_facts
from ruleengine.policy import load_policy

from .conftest import MINI, REPO

MINI_RULES = """\
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
"""

DEFAULT = REPO / "policies" / "default"
# the bundled policy's version and the next patch/minor versions (the tests edit copies of it)
VERSION = next(line.split(":", 1)[1].strip() for line in (DEFAULT / "policy.yaml").read_text(encoding="utf-8")
               .splitlines() if line.startswith("version:"))
_MAJOR, _MINOR, _PATCH = (int(x) for x in VERSION.split("."))
NEXT_PATCH, NEXT_MINOR = f"{_MAJOR}.{_MINOR}.{_PATCH + 1}", f"{_MAJOR}.{_MINOR + 1}.0"


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _edit(target: Path, version: str, replacements: dict[str, tuple[str, str]]) -> str:
    shutil.copytree(DEFAULT, target, ignore=shutil.ignore_patterns("tests"))
    for fname, (old, new) in {**replacements, "policy.yaml": (f"version: {VERSION}", f"version: {version}")}.items():
        text = (target / fname).read_text(encoding="utf-8")
        assert old in text, (fname, old)
        (target / fname).write_text(text.replace(old, new, 1), encoding="utf-8")
    return str(target)


@pytest.fixture
def edited(tmp_path):
    """Return an editor: edited(version, {file: (old, new)}) -> a copy of the default policy with the edits."""

    def make(version: str, replacements: dict[str, tuple[str, str]], name: str = "new") -> str:
        return _edit(tmp_path / name, version, replacements)

    return make


LOWER_LARGE = {"thresholds.yaml": ("value: 1000000", "value: 500000")}


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    """The default policy with large_data_examples lowered to 500k, the version left as it is, and its diff."""
    path = _edit(tmp_path_factory.mktemp("lowered") / "p", VERSION, LOWER_LARGE)
    report = diff_policies(str(DEFAULT), path)
    return path, report, render_diff_text(report), json.loads(json.dumps(report.to_dict(), default=str))


def test_same_policy_has_no_changes_and_no_impact():
    report = diff_policies(str(DEFAULT), str(DEFAULT))
    assert report.changes == [] and report.impact is None and report.diagnostics == []
    result = run("diff", str(DEFAULT), str(DEFAULT))
    assert result.exit_code == 0 and "same meaning" in result.stdout


def test_lowering_a_threshold_flips_verdicts_to_full_ft(lowered):
    _, _, text, data = lowered
    assert [c["name"] for c in data["changes"]] == ["large_data_examples"]
    assert "threshold `large_data_examples` modified: 1000000 -> 500000" in text
    imp = data["impact"]
    assert imp["verdict_flips"] > 0 and imp["by_kind"].get("feasibility", 0) == 0
    assert all(t["new"] == "full_ft" for t in imp["transitions"])
    example = imp["examples"][0]
    assert 500_000 <= example["facts"]["data"]["examples"] < 1_000_000
    assert example["new_rule"] in ("large-data-full-ft", "new-knowledge-large-data-full-ft")
    assert f"{example['old']} ({example['old_rule']}) -> full_ft ({example['new_rule']})" in text


def test_a_verdict_change_without_a_version_bump_fails(lowered, tmp_path):
    _, report, text, data = lowered
    assert [d["code"] for d in data["diagnostics"]] == ["version-not-bumped"]
    assert report.diagnostics[0].severity == "error"
    assert "error[version-not-bumped]" in text and "change verdict" in text and f"version: {VERSION} -> {VERSION}: FAIL" in text
    old = load_policy(str(DEFAULT))
    patch = load_policy(_edit(tmp_path / "patch", NEXT_PATCH, LOWER_LARGE))
    minor = load_policy(_edit(tmp_path / "minor", NEXT_MINOR, LOWER_LARGE))
    older = _edit(tmp_path / "older", "0.9.0", {})
    assert [d.code for d in version_diagnostics(old, patch, report.impact)] == ["version-bump-too-small"]
    assert version_diagnostics(old, minor, report.impact) == []
    result = run("diff", str(DEFAULT), older)  # same meaning, lower version: no grid, exit 5
    assert result.exit_code == 5 and "error[version-regressed]" in result.stdout


def test_rule_and_table_changes_are_listed(edited):
    new = edited("1.2.0", {
        "rules.yaml": ("  - id: research-best-full-ft\n    priority: 32", "  - id: research-best-full-ft\n    priority: 33"),
        "use_cases.yaml": ("    rank: 32\n", "    rank: 64\n"),
    })
    changes = {c.text() for c in textual_changes(load_policy(str(DEFAULT)), load_policy(new))}
    assert "rule `research-best-full-ft` modified: priority: 32 -> 33" in changes
    assert "use case `code_generation` modified: rank: 32 -> 64" in changes
    result = run("diff", str(DEFAULT), new, "--format", "json")
    data = json.loads(result.stdout)
    assert data["impact"]["verdict_flips"] > 0
    assert {"old": "lora r=32", "new": "lora r=64"} in [{k: t[k] for k in ("old", "new")}
                                                       for t in data["impact"]["transitions"]]


def test_grid_evaluator_agrees_with_the_evaluator():
    policy = load_policy(str(DEFAULT))
    grid = build_grid([policy], models=(1.1e9, 13e9, 70e9), counts=(1, 8))
    outcomes = GridEvaluator(policy).outcomes(grid, spot_checks=0)
    keys = sorted(outcomes)[::211]
    assert len(keys) > 40
    for key in keys:
        facts = normalize_facts(point_facts(grid, key), policy)
        ev = evaluator_for(policy).evaluate(facts, use_engine=False)
        got = outcomes[key]
        assert got.rule == ev.chosen and got.feasible == (ev.candidate is not None)
        if ev.candidate:
            assert (got.method, got.rank) == (ev.candidate.method, ev.candidate.rank)


def test_grid_covers_every_threshold_cell():
    policy = load_policy(str(DEFAULT))
    grid = build_grid([policy])
    assert grid.rule_axes["data.examples"] == [500, 1000, 100000, 1000000]
    assert 11e9 in grid.memory_axes["model.params"] and 0.5e9 in grid.memory_axes["model.params"]
    assert grid.rule_axes["serving.adapters"] == [1, 2]
    assert sum(grid.gpu_weight.values()) == len(policy.gpus)


def test_diff_map_shades_the_changed_cells(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "old" / "policy.yaml").write_text(MINI + MINI_RULES, encoding="utf-8")
    (tmp_path / "new" / "policy.yaml").write_text((MINI + MINI_RULES).replace(
        "large_data_examples: 1000000", "large_data_examples: 500000").replace("1.0.0", "1.1.0"), encoding="utf-8")
    out = tmp_path / "diff.png"
    result = run("diff", str(tmp_path / "old"), str(tmp_path / "new"), "--map", str(out), "--x", "data.examples", "--y", "model.params",
                 "--x-range", "100k:2M", "--resolution", "12")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    share = float(result.stdout.rsplit("(", 1)[1].split("%")[0])
    assert share > 0


def test_policies_from_git_revisions(tmp_path, monkeypatch):
    """REV:PATH reads a bundle from git (here a scratch repository in a temporary directory)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "pol").mkdir(parents=True)
    (repo / "pol" / "policy.yaml").write_text(MINI + MINI_RULES, encoding="utf-8")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q", str(repo)], check=True)
    subprocess.run(git + ["-C", str(repo), "add", "."], check=True)
    subprocess.run(git + ["-C", str(repo), "commit", "-q", "-m", "policy"], check=True)
    policy_file = repo / "pol" / "policy.yaml"
    policy_file.write_text(policy_file.read_text().replace("large_data_examples: 1000000", "large_data_examples: 500000"))
    monkeypatch.chdir(repo)
    old = load_any("HEAD:pol")
    assert old.thresholds["large_data_examples"] == 1e6 and old.origin == "HEAD:pol"
    result = run("diff", "HEAD:pol", "pol")
    assert result.exit_code == 5 and "large_data_examples" in result.stdout
    missing = run("diff", "HEAD:nope", "pol")
    assert missing.exit_code == 3 and "no such path at revision" in missing.stderr
