"""Records: canonical JSON, the hash definition, the envelope, the schema, record_decision and the default path."""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import UTC, datetime

import jsonschema
import pytest

from ruleengine.audit import (
    GENESIS_HASH,
    InvalidRecord,
    SqliteAuditStore,
    build_record,
    canonical_json,
    compute_record_hash,
    default_db_path,
    record_decision,
    snapshot_hash,
)
from ruleengine.audit.records import caller_identity, runtime_versions, schema_errors
from ruleengine.paths import load_schema


def test_canonical_json_is_sorted_compact_utf8():
    assert canonical_json({"b": 1, "a": [1.5, "é", None]}) == '{"a":[1.5,"é",null],"b":1}'


@pytest.mark.parametrize("bad", [{"x": math.nan}, {"x": math.inf}, {"x": object()}])
def test_canonical_json_rejects_non_json(bad):
    with pytest.raises(InvalidRecord):
        canonical_json(bad)


def test_record_hash_definition():
    body = {"seq": 1, "id": "X", "decision": {"b": 2, "a": 1}}
    expected = hashlib.sha256((json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                               + GENESIS_HASH).encode()).hexdigest()
    assert compute_record_hash(body, GENESIS_HASH) == expected
    # chain fields are not part of the body
    assert compute_record_hash({**body, "prev_hash": "p", "record_hash": "r"}, GENESIS_HASH) == expected
    assert compute_record_hash(body, "1" * 64) != expected


def test_snapshot_hash_matches_policy_definition(snapshot):
    from ruleengine.policy import snapshot_sha256

    canonical = json.dumps({"root": snapshot["root"], "files": snapshot["files"]}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    assert snapshot_hash(snapshot) == hashlib.sha256(canonical.encode()).hexdigest() == snapshot_sha256(snapshot)
    with pytest.raises(InvalidRecord):
        snapshot_hash({"files": {}})


def test_build_record_envelope(make_decision, snap_sha):
    decision = make_decision()
    now = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    rec = build_record(decision, snap_sha, now=now)
    assert rec["record_version"] == 1
    assert rec["id"] == decision["decision_id"]
    assert rec["recorded_at"] == "2025-03-04T05:06:07.890123Z"
    assert rec["caller"] == caller_identity() and "@" in rec["caller"]
    assert rec["versions"] == runtime_versions()
    assert set(rec["versions"]) == {"finetune_policy", "durable_rules", "python"}
    assert rec["versions"]["durable_rules"] == "2.0.28"
    assert rec["policy"] == {"name": "test", "version": "1.2.0", "sha256": snap_sha}
    assert rec["decision"] == decision  # embedded whole
    assert "seq" not in rec and "record_hash" not in rec


def test_build_record_copies_the_decision(make_decision, snap_sha):
    decision = make_decision()
    rec = build_record(decision, snap_sha)
    decision["verdict"]["rank"] = 999
    assert rec["decision"]["verdict"]["rank"] == 16


def test_build_record_rejects_bad_input(make_decision, snap_sha):
    with pytest.raises(InvalidRecord, match="ULID"):
        build_record(make_decision(decision_id="not-a-ulid"), snap_sha)
    with pytest.raises(InvalidRecord, match="JSON-safe"):
        build_record({**make_decision(), "metrics": {"x": math.nan}}, snap_sha)
    with pytest.raises(InvalidRecord, match="policy"):
        build_record(make_decision(), "f" * 64)  # the decision names another policy hash
    with pytest.raises(InvalidRecord):
        build_record("nope", snap_sha)  # type: ignore[arg-type]


def test_schema_file_is_valid_and_matches_stored_records(filled):
    schema = load_schema("decision-record.schema.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    path, _ids = filled
    with SqliteAuditStore(path, read_only=True) as store:
        for rec in store.iter_all():
            jsonschema.validate(rec, schema)
            assert schema_errors(rec) == []


def test_schema_rejects_unknown_envelope_fields_and_bad_decisions(make_decision, snap_sha):
    rec = build_record(make_decision(), snap_sha)
    assert schema_errors(rec) == []
    assert schema_errors({**rec, "extra": 1})
    assert schema_errors({**rec, "decision": {**rec["decision"], "feasible": "yes"}})
    assert schema_errors({**rec, "decision": {**rec["decision"], "verdict": {"rank": 4}}})


def test_record_decision_checks_the_schema(db_path, make_decision, snapshot, snap_sha):
    with pytest.raises(InvalidRecord, match="schema"):
        record_decision({**make_decision(), "feasible": "yes"}, snapshot, snap_sha, db_path=db_path)


def test_record_decision_roundtrip(db_path, make_decision, snapshot, snap_sha):
    decision = make_decision()
    rid = record_decision(decision, snapshot, snap_sha, db_path=db_path)
    assert rid == decision["decision_id"]
    with SqliteAuditStore(db_path, read_only=True) as store:
        rec = store.get(rid)
        assert rec["seq"] == 1 and rec["prev_hash"] == GENESIS_HASH
        assert rec["record_hash"] == compute_record_hash(rec, rec["prev_hash"])
        assert rec["decision"] == decision
        assert store.get_policy_snapshot(snap_sha) == snapshot
        assert store.verify().ok


def test_record_decision_rejects_a_snapshot_that_does_not_match(db_path, make_decision, snapshot, snap_sha):
    other = {"root": "policy.yaml", "files": {"policy.yaml": "changed\n"}}
    with pytest.raises(InvalidRecord, match="hashes to"):
        record_decision(make_decision(), other, snap_sha, db_path=db_path)


def test_record_decision_twice_is_rejected(db_path, make_decision, snapshot, snap_sha):
    decision = make_decision()
    record_decision(decision, snapshot, snap_sha, db_path=db_path)
    with pytest.raises(InvalidRecord, match="already"):
        record_decision(decision, snapshot, snap_sha, db_path=db_path)


def test_default_db_path_env_and_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_POLICY_AUDIT_DB", str(tmp_path / "x.sqlite3"))
    assert default_db_path() == str(tmp_path / "x.sqlite3")
    monkeypatch.delenv("FINETUNE_POLICY_AUDIT_DB")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == os.path.join(str(tmp_path / "home"), ".local", "share", "finetune-policy",
                                             "audit.sqlite3")


def test_record_decision_uses_env_var(monkeypatch, tmp_path, make_decision, snapshot, snap_sha):
    target = tmp_path / "deep" / "dir" / "env.sqlite3"
    monkeypatch.setenv("FINETUNE_POLICY_AUDIT_DB", str(target))
    rid = record_decision(make_decision(), snapshot, snap_sha)
    with SqliteAuditStore(str(target), read_only=True) as store:
        assert store.get(rid)["id"] == rid


def test_fast_and_reference_validators_agree(make_decision, snap_sha):
    """The compiled validator (jsonschema-rs) and jsonschema judge records the same."""
    from ruleengine.audit.records import _validator, record_is_valid

    base = dict(build_record(make_decision(), snap_sha), seq=1, prev_hash=GENESIS_HASH, record_hash=GENESIS_HASH)
    d = base["decision"]
    variants = [base, {**base, "extra": 1}, {**base, "seq": 0}, {**base, "id": "lower-case-id"},
                {**base, "record_version": 2}, {**base, "caller": ""}, {**base, "prev_hash": "X" * 64},
                {**base, "decision": {**d, "feasible": "yes"}}, {**base, "decision": {**d, "verdict": {"rank": 4}}},
                {**base, "decision": {**d, "matched_rules": [1]}}, {**base, "decision": {**d, "verdict": None}},
                {**base, "policy": {**base["policy"], "sha256": "nope"}}, {**base, "recorded_at": "yesterday"}]
    for v in variants:
        assert record_is_valid(v) == _validator().is_valid(v), v


def test_prepared_body_is_the_canonical_json_of_the_record(make_decision, snap_sha):
    from ruleengine.audit.records import prepare_record, record_body

    prepared = prepare_record(make_decision(), snap_sha)
    body = dict(prepared.envelope, seq=42)
    assert prepared.body_bytes(42) == canonical_json(record_body(body)).encode("utf-8")
    odd = {**make_decision(), "metrics": {2: "two", 10: "ten"}}  # int keys: copied first, so still canonical
    assert prepare_record(odd, snap_sha).decision_text == canonical_json(json.loads(json.dumps(odd)))
