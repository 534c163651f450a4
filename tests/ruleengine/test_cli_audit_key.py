"""`--audit-key` on the recording commands: the chain heads they write are signed with that key."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ruleengine.cli import main

FLAGS = ["--model-params", "7B", "--gpu", "a100-80gb", "--examples", "50k"]


def test_decide_explain_and_batch_sign_with_audit_key(tmp_path, monkeypatch):
    monkeypatch.delenv("FINETUNE_POLICY_AUDIT_KEY", raising=False)
    runner = CliRunner()
    key, db = tmp_path / "k", str(tmp_path / "a.sqlite3")
    assert runner.invoke(main, ["audit", "keygen", "-o", str(key)]).exit_code == 0
    assert runner.invoke(main, [*FLAGS, "--audit-db", db, "--audit-key", str(key)]).exit_code == 0
    assert runner.invoke(main, ["explain", *FLAGS, "--audit-db", db, "--audit-key", str(key)]).exit_code == 0
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps({"model": {"params": p}, "hardware": {"gpu": "a100-80gb"},
                                          "data": {"examples": "50k"}}) for p in ("1B", "7B", "13B")) + "\n")
    batch = runner.invoke(main, ["batch", str(jobs), "-o", str(tmp_path / "out.jsonl"), "--workers", "1",
                                 "--audit-db", db, "--audit-key", str(key)])
    assert batch.exit_code == 0, batch.output
    verified = runner.invoke(main, ["audit", "verify", "--db", db, "--public-key", str(key) + ".pub"])
    assert verified.exit_code == 0, verified.output
    listed = runner.invoke(main, ["audit", "list", "--db", db, "--format", "json"])
    assert listed.exit_code == 0 and len(json.loads(listed.stdout)) == 5


def test_an_unreadable_audit_key_is_exit_7_and_nothing_is_decided_unrecorded(tmp_path):
    result = CliRunner().invoke(main, [*FLAGS, "--audit-db", str(tmp_path / "a.sqlite3"), "--audit-key",
                                       str(tmp_path / "missing.key")])
    assert result.exit_code == 7
