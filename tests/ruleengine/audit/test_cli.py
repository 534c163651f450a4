"""`decide audit ...` through click's CliRunner (replay with a stand-in engine), and one real subprocess."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import types
from datetime import UTC
from pathlib import Path

import pytest
from click.testing import CliRunner

from ruleengine.cli import main
from ruleengine.cli.audit import parse_since


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(main, ["audit", *args], env=env, catch_exceptions=False)

    return invoke


# --- list -------------------------------------------------------------------------------------------------------


def test_list_table(filled, run):
    path, ids = filled
    res = run("list", "--db", path)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "ID", "RECORDED"]
    assert len(lines) == 1 + len(ids)
    assert ids[0] in lines[1] and "lora r16" in lines[1] and "test@1.2.0" in lines[1]
    assert "infeasible" in res.stdout


def test_list_json_and_filters(filled, run):
    path, ids = filled
    data = json.loads(run("list", "--db", path, "--format", "json").stdout)
    assert [d["id"] for d in data] == ids
    assert data[0]["method"] == "lora" and data[0]["rank"] == 16 and data[0]["policy"]["name"] == "test"
    assert len(json.loads(run("list", "--db", path, "--method", "qlora", "--format", "json").stdout)) == 1
    assert len(json.loads(run("list", "--db", path, "--method", "infeasible", "--format", "json").stdout)) == 1
    assert len(json.loads(run("list", "--db", path, "--since", "2d", "--format", "json").stdout)) == 8
    assert json.loads(run("list", "--db", path, "--since", "2999-01-01", "--format", "json").stdout) == []
    assert json.loads(run("list", "--db", path, "--policy", "nope", "--format", "json").stdout) == []
    assert [d["id"] for d in json.loads(run("list", "--db", path, "--limit", "2", "--format", "json").stdout)] \
        == ids[-2:]
    bad = run("list", "--db", path, "--since", "yesterday")
    assert bad.exit_code == 2 and "--since" in bad.output


def test_list_honours_the_env_var(filled, run):
    path, ids = filled
    res = run("list", "--format", "json", env={"FINETUNE_POLICY_AUDIT_DB": path})
    assert [d["id"] for d in json.loads(res.stdout)] == ids


def test_parse_since():
    from datetime import datetime

    now = datetime(2025, 1, 10, 12, tzinfo=UTC)
    assert parse_since("2d", now) == datetime(2025, 1, 8, 12, tzinfo=UTC)
    assert parse_since("3h", now) == datetime(2025, 1, 10, 9, tzinfo=UTC)
    assert parse_since("1w", now) == datetime(2025, 1, 3, 12, tzinfo=UTC)
    assert parse_since("2025-01-02", now) == datetime(2025, 1, 2, tzinfo=UTC)
    assert parse_since("2025-01-02T03:00:00+02:00", now) == datetime(2025, 1, 2, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_since("soon", now)


# --- show -------------------------------------------------------------------------------------------------------


def test_show_text_json_and_prefix(filled, run):
    path, ids = filled
    res = run("show", ids[1], "--db", path)
    assert res.exit_code == 0, res.output
    for text in (ids[1], "seq 2", "facts given:", 'hardware.gpu = "a100-80gb"', "qlora r16", "matched",
                 "rejected:", "full_ft", "warnings:", "[overfit]", "durable_rules 2.0.28"):
        assert text in res.stdout, text
    data = json.loads(run("show", ids[1][:-3], "--db", path, "--format", "json").stdout)
    assert data["id"] == ids[1] and data["seq"] == 2 and "record_hash" in data


def test_show_explain(filled, run):
    path, ids = filled
    res = run("show", ids[0], "--db", path, "--explain")
    assert res.exit_code == 0, res.output
    assert "full_ft" in res.stdout and "needs 112.0 GiB > 72.5 usable" in res.stdout
    data = json.loads(run("show", ids[0], "--db", path, "--explain", "--format", "json").stdout)
    assert "full_ft" in data["explanation"]


def test_unknown_and_ambiguous_ids_exit_2(filled, run):
    path, ids = filled
    res = run("show", "0" * 26, "--db", path)
    assert res.exit_code == 2 and "no record with id" in res.stderr
    res = run("show", ids[0][:3], "--db", path)
    assert res.exit_code == 2 and "ambiguous" in res.stderr
    res = run("replay", "0" * 26, "--db", path)
    assert res.exit_code == 2 and "no record with id" in res.stderr


@pytest.mark.parametrize("args", [["list"], ["show", "01HF7YAT9DGBS89SGNWCM4SPNK"], ["verify"],
                                  ["replay", "--all"], ["export"]])
def test_missing_and_corrupt_store_exit_2(tmp_path, run, args):
    missing = tmp_path / "missing.sqlite3"
    res = run(*args, "--db", str(missing))
    assert res.exit_code == 2 and str(missing) in res.stderr and "does not exist" in res.stderr
    assert not missing.exists()
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"\x00garbage" * 512)
    res = run(*args, "--db", str(corrupt))
    assert res.exit_code == 2 and str(corrupt) in res.stderr


# --- verify / export ----------------------------------------------------------------------------------------------


def test_verify_clean_and_tampered(filled, run, attacker):
    path, ids = filled
    res = run("verify", "--db", path)
    assert res.exit_code == 0 and res.stdout.startswith("OK: 8 record(s), 1 policy snapshot(s)")
    head = res.stdout.split("head: ")[1].split()[0]
    assert run("verify", "--db", path, "--anchor", head).exit_code == 0
    att = attacker(path)
    att.write_body(4, att.body_bytes(4).replace(b'"rank":32', b'"rank":8'))
    att.restore_guards()
    res = run("verify", "--db", path)
    assert res.exit_code == 6
    assert f"first bad: record seq 4 (id {ids[3]}): hash-mismatch" in res.stdout
    report = json.loads(run("verify", "--db", path, "--format", "json").stdout)
    assert report["ok"] is False and report["problems"][0]["seq"] == 4


def test_verify_bad_anchor_syntax(filled, run):
    res = run("verify", "--db", filled[0], "--anchor", "nope")
    assert res.exit_code == 2 and "SEQ:HASH" in res.output


def test_export_and_verify_jsonl(filled, run, tmp_path):
    path, ids = filled
    out = tmp_path / "chain.jsonl"
    res = run("export", "--db", path, "-o", str(out))
    assert res.exit_code == 0 and "exported 8 record(s)" in res.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ids
    stdout_export = run("export", "--db", path, "--format", "jsonl").stdout
    assert stdout_export == out.read_text()
    res = run("verify", "--jsonl", str(out))
    assert res.exit_code == 0 and "OK: 8 record(s)" in res.stdout
    out.write_text(out.read_text().replace('"caller":"', '"caller":"z', 1))
    res = run("verify", "--jsonl", str(out))
    assert res.exit_code == 6 and "record seq 1" in res.stdout
    res = run("verify", "--jsonl", str(tmp_path / "none.jsonl"))
    assert res.exit_code == 2 and "none.jsonl" in res.stderr


# --- replay with a stand-in engine -----------------------------------------------------------------------------


class FakePolicy:
    """Decides from the use-case table of _factory.PLAN, with per-use-case overrides."""

    def __init__(self, overrides: dict | None = None, name: str = "test", fail: set | None = None):
        self.overrides = overrides or {}
        self.name, self.version, self.sha256 = name, "9.9.9", "ab" * 32
        self.fail = fail or set()


@pytest.fixture
def fake_engine(monkeypatch, make_decision, plan):
    """Install a stand-in decision pipeline and snapshot loader; returns a setter for the snapshot policy."""
    from ruleengine.audit import replay as replay_mod
    from ruleengine.facts import FactsError

    table = {use_case: (method, rank) for method, rank, use_case in plan}
    state = {"snapshot_policy": FakePolicy()}

    def decide(policy, given, model_config=None, **_kwargs):
        use_case = given["task"]["use_case"]
        if use_case in policy.fail:
            from ruleengine.diagnostics import Diagnostic

            raise FactsError([Diagnostic("facts-unknown-use-case", f"unknown use case {use_case}")])
        method, rank = policy.overrides.get(use_case, table[use_case])
        d = make_decision(method, rank, use_case=use_case)
        return types.SimpleNamespace(to_dict=lambda: d)

    from ruleengine import evaluate, pipeline

    monkeypatch.setattr(pipeline, "decide", decide)
    monkeypatch.setattr(evaluate, "evaluator_for", lambda policy: policy)
    monkeypatch.setattr(replay_mod, "snapshot_policy", lambda store, sha: state["snapshot_policy"])

    def set_snapshot_policy(policy: FakePolicy) -> None:
        state["snapshot_policy"] = policy

    return set_snapshot_policy


def test_replay_identical(filled, run, fake_engine):
    path, ids = filled
    res = run("replay", ids[0], "--db", path)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"identical: {ids[0]}")
    res = run("replay", "--all", "--db", path)
    assert res.exit_code == 0 and "8 identical, 0 different, 0 error(s) of 8 record(s)" in res.stdout


def test_replay_different(filled, run, fake_engine):
    path, ids = filled
    fake_engine(FakePolicy(overrides={"domain_qa": ("lora", 32), "style_tone": ("qlora", 16)}))
    res = run("replay", ids[0], "--db", path)
    assert res.exit_code == 8
    assert f"different: {ids[0]}: lora r16 -> lora r32" in res.stdout
    assert "verdict.rank: 16 -> 32" in res.stdout and "verdict.alpha: 32 -> 64" in res.stdout
    data = json.loads(run("replay", ids[0], "--db", path, "--format", "json").stdout)
    assert data["status"] == "different" and {"path": "verdict.rank", "kind": "changed", "old": 16, "new": 32} \
        in data["differences"]
    res = run("replay", "--all", "--db", path)
    assert res.exit_code == 8
    assert "6 identical, 2 different, 0 error(s) of 8 record(s)" in res.stdout
    # the infeasible style_tone record became feasible: feasibility, verdict, rules and warnings all differ
    chat_infeasible = ids[4]
    line = next(ln for ln in res.stdout.splitlines() if chat_infeasible in ln)
    assert "infeasible" in line and "qlora r16" in line and "feasible: false -> true" in line
    assert "warnings: -overfit (rule style_tone-None) +overfit (rule style_tone-qlora)" in line


def test_replay_error_is_reported(filled, run, fake_engine):
    path, ids = filled
    fake_engine(FakePolicy(fail={"domain_qa"}))
    res = run("replay", ids[0], "--db", path)
    assert res.exit_code == 8 and "cannot re-evaluate" in res.stdout and "unknown use case" in res.stdout


def test_replay_what_if_new_policy(filled, run, fake_engine, monkeypatch, tmp_path):
    import ruleengine.policy as policy_pkg

    path, ids = filled
    new = FakePolicy(overrides={"domain_qa": ("lora", 32), "personalization": ("lora", 8)}, name="next")
    monkeypatch.setattr(policy_pkg, "load_policy", lambda p: new)
    res = run("replay", "--all", "--policy", str(tmp_path), "--db", path)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "what-if: policy next 9.9.9" in out
    assert "2 would change, 6 unchanged" in out
    rows = [ln for ln in out.splitlines() if any(i in ln for i in ids)]
    assert len(rows) == 2
    assert ids[0] in rows[0] and "lora r16" in rows[0] and "lora r32" in rows[0]
    assert ids[5] in rows[1] and "lora r4" in rows[1] and "lora r8" in rows[1]
    res = run("replay", "--all", "--policy", str(tmp_path), "--db", path, "--show-all")
    assert len([ln for ln in res.stdout.splitlines() if any(i in ln for i in ids)]) == 8
    data = json.loads(run("replay", "--all", "--policy", str(tmp_path), "--db", path, "--format", "json").stdout)
    assert data["counts"]["outcome_changed"] == 2 and data["policy"]["name"] == "next"


def test_replay_invalid_new_policy_exits_3(filled, run, fake_engine, monkeypatch, tmp_path):
    import ruleengine.policy as policy_pkg
    from ruleengine.diagnostics import Diagnostic

    def broken(_path):
        raise policy_pkg.PolicyError([Diagnostic("policy-bad", "this policy is broken")])

    monkeypatch.setattr(policy_pkg, "load_policy", broken)
    res = run("replay", "--all", "--policy", str(tmp_path), "--db", filled[0])
    assert res.exit_code == 3 and "this policy is broken" in res.stderr


def test_replay_usage_errors(filled, run):
    path, ids = filled
    assert run("replay", "--db", path).exit_code == 2
    assert run("replay", ids[0], "--all", "--db", path).exit_code == 2
    assert run("replay", ids[0], "--since", "2d", "--db", path).exit_code == 2


@pytest.mark.parametrize("cmd", [[], ["list"], ["show"], ["verify"], ["replay"], ["export"]])
def test_help_is_complete(run, cmd):
    res = run(*cmd, "--help")
    assert res.exit_code == 0
    if cmd:
        assert "--db PATH" in res.stdout and "FINETUNE_POLICY_AUDIT_DB" in res.stdout
    else:
        for sub in ("list", "show", "verify", "replay", "export"):
            assert sub in res.stdout


# --- a real process --------------------------------------------------------------------------------------------


def _audit_command() -> list[str]:
    """`decide audit` from the venv when the entry point has the audit group, else `python -m` the group."""
    decide = Path(sys.executable).parent / "decide"
    if decide.exists():
        probe = subprocess.run([str(decide), "audit", "--help"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 and "verify" in probe.stdout:
            return [str(decide), "audit"]
    return [sys.executable, "-m", "ruleengine.cli", "audit"]


def test_verify_in_a_real_subprocess(filled, attacker):
    path, _ids = filled
    cmd = _audit_command()
    ok = subprocess.run([*cmd, "verify", "--db", path], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK: 8 record(s)")
    att = attacker(path)
    att.execute("DELETE FROM records WHERE seq = 2")
    att.restore_guards()
    bad = subprocess.run([*cmd, "verify", "--db", path], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 6 and "seq 2 missing" in bad.stdout
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 7
    conn.close()


def test_keygen_writes_a_private_key_only_its_owner_can_read(run, tmp_path):
    import os
    import stat

    key = tmp_path / "audit.key"
    res = run("keygen", "-o", str(key))
    assert res.exit_code == 0 and "key id" in res.stdout
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and (tmp_path / "audit.key.pub").exists()
    again = run("keygen", "-o", str(key))
    assert again.exit_code == 2 and "refusing to overwrite" in again.stderr
    os.chmod(key, 0o644)
    from ruleengine.audit import SigningKeyError
    from ruleengine.audit.signing import SigningKey

    with pytest.raises(SigningKeyError, match="chmod 600"):
        SigningKey.load(key)


def test_verify_public_key_errors(filled, run, tmp_path):
    path, _ids = filled
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    res = run("verify", "--db", path, "--public-key", str(bad))
    assert res.exit_code == 2 and "not a PEM public key" in res.stderr
    # an unsigned store cannot prove anything to a key holder: every record is reported
    run("keygen", "-o", str(tmp_path / "k"))
    res = run("verify", "--db", path, "--public-key", str(tmp_path / "k.pub"))
    assert res.exit_code == 6 and "unsigned-records" in res.stdout
