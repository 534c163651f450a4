"""Property tests: any JSON-safe decision round-trips through the chain, and any change to any record is caught."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ruleengine.audit import SqliteAuditStore, build_record, snapshot_hash
from ruleengine.decision import new_decision_id

SNAP = {"root": "p.yaml", "files": {"p.yaml": "name: prop\n"}}
SHA = snapshot_hash(SNAP)

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                          max_leaves=12)


def _decision(extra: dict) -> dict:
    return {"decision_id": new_decision_id(), "policy": {"name": "prop", "version": "1.0.0", "sha256": SHA},
            "facts": {"given": {"x": extra}}, "feasible": True, "verdict": {"method": "lora", "rank": 8},
            "matched_rules": ["r"], "warnings": [], "metrics": {"extra": extra}}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(extras=st.lists(json_value, min_size=1, max_size=5), data=st.data())
def test_any_decision_roundtrips_and_any_edit_is_detected(attacker_class, extras, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "a.sqlite3")
        with SqliteAuditStore(path, create=True) as store:
            store.put_policy_snapshot(SHA, SNAP)
            decisions = [_decision(e) for e in extras]
            for d in decisions:
                store.append(build_record(d, SHA))
            stored = list(store.iter_all())
            assert [r["decision"] for r in stored] == [json.loads(json.dumps(d)) for d in decisions]
            assert store.verify().ok
        victim = data.draw(st.integers(1, len(extras)), label="victim seq")
        new_value = data.draw(json_value, label="new value")
        att = attacker_class(path)
        body = att.body(victim)
        if body["decision"]["metrics"].get("extra") == new_value:
            new_value = [new_value]
        body["decision"]["metrics"]["extra"] = new_value
        att.write_body(victim, body)
        att.close()
        with SqliteAuditStore(path, read_only=True) as store:
            report = store.verify()
        record_problems = [p for p in report.problems if p.kind != "guard-removed"]
        assert record_problems and record_problems[0].seq == victim
        assert record_problems[0].kind == "hash-mismatch"
