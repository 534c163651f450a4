"""End to end with the real engine and the bundled default policy: record, verify, replay, what-if, `decide`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ruleengine.audit import SqliteAuditStore, record_decision
from ruleengine.audit.replay import replay_all
from ruleengine.cli import main
from ruleengine.paths import default_policy

BRIEF_FACTS = {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 1},
               "data": {"examples": "50k"}, "task": {"use_case": "domain_qa"}}
INFEASIBLE_FACTS = {"model": {"params": "70B"}, "hardware": {"gpu": "t4-16gb", "gpu_count": 1},
                    "data": {"examples": "50k"}, "task": {"use_case": "domain_qa"}}


@pytest.fixture(scope="module")
def engine():
    """(decide, default policy)."""
    from ruleengine.api import decide
    from ruleengine.policy import load_policy

    policy = load_policy(None)
    decide(policy, BRIEF_FACTS)
    return decide, policy


def _policy_test_facts() -> list[dict]:
    facts = [BRIEF_FACTS, INFEASIBLE_FACTS]
    for path in sorted((default_policy() / "tests").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for case in doc.get("cases") or []:
            if isinstance(case, dict) and isinstance(case.get("facts"), dict):
                facts.append(case["facts"])
    return facts


@pytest.fixture(scope="module")
def real_store(engine, tmp_path_factory):
    """A store holding one real decision per policy test case (plus the brief's example and an infeasible one)."""
    from ruleengine.facts import FactsError

    decide, policy = engine
    path = str(tmp_path_factory.mktemp("e2e") / "audit.sqlite3")
    ids = []
    for facts in _policy_test_facts():
        try:
            decision = decide(policy, facts)
        except FactsError:
            continue  # a case that tests rejected facts
        ids.append(record_decision(decision.to_dict(), policy.snapshot(), policy.sha256, db_path=path))
    assert len(ids) >= 3
    return path, ids


def test_recorded_decisions_verify_and_embed_the_decision(engine, real_store):
    decide, policy = engine
    path, ids = real_store
    with SqliteAuditStore(path, read_only=True) as store:
        report = store.verify()
        assert report.ok, [p.render() for p in report.problems]
        assert report.records_checked == len(ids) and report.snapshots_checked == 1
        first = store.get(ids[0])
        assert first["policy"] == {"name": policy.name, "version": policy.version, "sha256": policy.sha256}
        assert first["decision"]["facts"]["given"] == BRIEF_FACTS
        assert first["decision"]["verdict"]["method"] == "lora"
        assert store.get(ids[1])["decision"]["feasible"] is False
        assert store.get_policy_snapshot(policy.sha256) == policy.snapshot()


def test_every_record_replays_identically(real_store):
    path, ids = real_store
    with SqliteAuditStore(path, read_only=True) as store:
        results = list(replay_all(store))
    assert [r.record_id for r in results] == ids
    assert [(r.record_id, r.status, [d.render() for d in r.differences], r.error) for r in results
            if not r.identical] == []
    res = CliRunner().invoke(main, ["audit", "replay", "--all", "--db", path], catch_exceptions=False)
    assert res.exit_code == 0 and f"{len(ids)} identical, 0 different" in res.stdout
    res = CliRunner().invoke(main, ["audit", "replay", ids[0], "--db", path], catch_exceptions=False)
    assert res.exit_code == 0 and res.stdout.startswith(f"identical: {ids[0]}")


def test_what_if_a_new_policy(real_store, tmp_path):
    """Raise the domain_qa rank of the use-case table from 16 to 32 in a copy of the policy: the domain_qa
    decisions made by the table change, the others do not."""
    path, ids = real_store
    new = tmp_path / "policy"
    shutil.copytree(default_policy(), new)
    table = new / "use_cases.yaml"
    text = table.read_text(encoding="utf-8")
    changed = re.sub(r"(\n  domain_qa:\n(?:    .*\n)*?    rank: )16", r"\g<1>32", text, count=1)
    assert changed != text
    table.write_text(changed, encoding="utf-8")
    res = CliRunner().invoke(main, ["audit", "replay", "--all", "--policy", str(new), "--db", path, "--format",
                                           "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    changed_rows = [r for r in data["results"] if r["status"] != "identical"]
    assert data["counts"]["total"] == len(ids)
    assert any(r["id"] == ids[0] and r["old"] == "lora r16" and r["new"] == "lora r32" for r in changed_rows)
    text_out = CliRunner().invoke(main, ["audit", "replay", "--all", "--policy", str(new), "--db", path]).stdout
    assert "would change" in text_out and ids[0] in text_out


def test_show_explain_uses_the_engine_renderer(real_store):
    path, ids = real_store
    res = CliRunner().invoke(main, ["audit", "show", ids[0], "--db", path, "--explain"], catch_exceptions=False)
    assert res.exit_code == 0
    assert "Why not the others" in res.stdout and "rendered from the stored fields" not in res.stdout
    # counterfactuals are computed from the record's own policy snapshot when the record has none
    assert "What would change the verdict" in res.stdout


def test_decide_records_and_audit_verifies(engine, tmp_path):
    """The real `decide` entry point appends to the store; `decide audit verify` checks it."""
    decide_bin = Path(sys.executable).parent / "decide"
    command = [str(decide_bin)] if decide_bin.exists() else [sys.executable, "-m", "ruleengine.cli"]
    db = tmp_path / "cli.sqlite3"
    run = subprocess.run([*command, "--model-params", "7B", "--gpu", "a100-80gb", "--gpus", "1",
                          "--examples", "50k", "--use-case", "domain_qa", "--format", "json", "--audit-db", str(db)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    decision_id = json.loads(run.stdout)["decision_id"]
    verify = subprocess.run([*command, "audit", "verify", "--db", str(db)], capture_output=True, text=True,
                            timeout=60)
    assert verify.returncode == 0 and verify.stdout.startswith("OK: 1 record(s)"), verify.stdout + verify.stderr
    replay = subprocess.run([*command, "audit", "replay", decision_id, "--db", str(db)],
                            capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0 and replay.stdout.startswith("identical"), replay.stdout + replay.stderr
