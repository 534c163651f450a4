"""The SQLite store: appending, chaining, reading, filters, snapshots, opening errors."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from ruleengine.audit import (
    GENESIS_HASH,
    AuditStore,
    InvalidRecord,
    RecordFilter,
    RecordNotFound,
    SqliteAuditStore,
    StoreUnavailable,
    build_record,
    compute_record_hash,
    open_store,
)


def test_store_satisfies_the_protocol(db_path):
    with SqliteAuditStore(db_path, create=True) as store:
        assert isinstance(store, AuditStore)


def test_append_chains_records(filled):
    path, ids = filled
    with SqliteAuditStore(path, read_only=True) as store:
        records = list(store.iter_all())
        assert [r["id"] for r in records] == ids
        assert [r["seq"] for r in records] == list(range(1, len(ids) + 1))
        prev = GENESIS_HASH
        for rec in records:
            assert rec["prev_hash"] == prev
            assert rec["record_hash"] == compute_record_hash(rec, prev)
            prev = rec["record_hash"]
        assert store.head() == (len(ids), prev)
        report = store.verify()
        assert report.ok, report.problems
        assert (report.records_checked, report.snapshots_checked) == (8, 1)
        assert (report.head_seq, report.head_hash) == (8, prev)


def test_wal_mode_and_guards(db_path, make_decision, snapshot, snap_sha):
    with SqliteAuditStore(db_path, create=True) as store:
        store.put_policy_snapshot(snap_sha, snapshot)
        store.append(build_record(make_decision(), snap_sha))
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE records SET method = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM records")
    conn.close()


def test_get_and_resolve_id(filled):
    path, ids = filled
    with SqliteAuditStore(path, read_only=True) as store:
        assert store.get(ids[3])["seq"] == 4
        assert store.resolve_id(ids[3]) == ids[3]
        assert store.resolve_id(ids[3].lower()) == ids[3]
        assert store.resolve_id(ids[3][:-2]) == ids[3]  # unique prefix
        with pytest.raises(RecordNotFound, match="ambiguous"):
            store.resolve_id(ids[0][:4])
        with pytest.raises(RecordNotFound, match="no record"):
            store.get("0" * 26)
        with pytest.raises(RecordNotFound, match="no record"):
            store.resolve_id("ZZZZZZ")
        with pytest.raises(RecordNotFound):
            store.resolve_id("%")


def test_list_filters(filled):
    path, ids = filled
    with SqliteAuditStore(path, read_only=True) as store:
        assert [r["id"] for r in store.list()] == ids
        lora = store.list(RecordFilter(method="lora"))
        assert len(lora) == 5 and all(r["decision"]["verdict"]["method"] == "lora" for r in lora)
        infeasible = store.list(RecordFilter(method="infeasible"))
        assert len(infeasible) == 1 and infeasible[0]["decision"]["verdict"] is None
        assert store.list(RecordFilter(policy="test")) == store.list()
        assert store.list(RecordFilter(policy="other")) == []
        assert [r["id"] for r in store.list(RecordFilter(limit=3))] == ids[-3:]
        now = datetime.now(UTC)
        assert len(store.list(RecordFilter(since=now - timedelta(hours=1)))) == 8
        assert store.list(RecordFilter(since=now + timedelta(hours=1))) == []
        assert store.count() == 8


def test_snapshots_stored_once(db_path, snapshot, snap_sha):
    with SqliteAuditStore(db_path, create=True) as store:
        assert store.put_policy_snapshot(snap_sha, snapshot) is True
        assert store.put_policy_snapshot(snap_sha, snapshot) is False
        assert store.get_policy_snapshot(snap_sha) == snapshot
        assert store.stats()["snapshots"] == 1
        with pytest.raises(InvalidRecord, match="hashes to"):
            store.put_policy_snapshot("0" * 64, snapshot)
        with pytest.raises(RecordNotFound):
            store.get_policy_snapshot("1" * 64)


def test_append_rejects_chained_or_invalid_records(db_path, make_decision, snapshot, snap_sha):
    with SqliteAuditStore(db_path, create=True) as store:
        rec = build_record(make_decision(), snap_sha)
        with pytest.raises(InvalidRecord, match="snapshot"):
            store.append(rec)  # the policy snapshot must be stored first
        store.put_policy_snapshot(snap_sha, snapshot)
        store.append(rec)
        with pytest.raises(InvalidRecord, match="already"):
            store.append(rec)
        with pytest.raises(InvalidRecord, match="envelope"):
            store.append({**rec, "seq": 5})
        with pytest.raises(InvalidRecord, match="schema"):
            store.append({**build_record(make_decision(), snap_sha), "caller": ""})
        assert store.count() == 1
        assert store.verify().ok


def test_missing_store_is_not_created_for_reading(tmp_path):
    path = tmp_path / "nope" / "audit.sqlite3"
    with pytest.raises(StoreUnavailable, match="does not exist") as exc:
        open_store(str(path))
    assert str(path) in str(exc.value)
    assert not path.exists() and not path.parent.exists()


def test_corrupt_and_foreign_files(tmp_path):
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreUnavailable, match="not a readable SQLite") as exc:
        open_store(str(garbage))
    assert str(garbage) in str(exc.value)
    foreign = tmp_path / "foreign.sqlite3"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreUnavailable, match="not a finetune-policy audit store"):
        open_store(str(foreign))
    with pytest.raises(StoreUnavailable, match="not a file"):
        open_store(str(tmp_path))


def test_newer_store_version_is_refused(db_path):
    SqliteAuditStore(db_path, create=True).close()
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'store_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreUnavailable, match="store version 99"):
        open_store(db_path)


def test_empty_store_verifies(db_path):
    with SqliteAuditStore(db_path, create=True) as store:
        report = store.verify()
    assert report.ok and report.records_checked == 0 and report.head_seq == 0


def test_version_1_store_still_verifies_and_is_upgraded_by_a_writer(tmp_path, make_decision, snapshot, snap_sha):
    """A store written by store version 1 (plain canonical JSON bodies, no signatures) verifies unchanged when
    opened read-only (and is not modified), and a writer upgrades it in place and chains on from its head."""
    from ruleengine.audit import AuditWriter, PolicySnapshot
    from ruleengine.audit.records import canonical_json, compute_record_hash, index_columns, record_body

    path = str(tmp_path / "v1.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for ddl in ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                "CREATE TABLE records (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, recorded_at TEXT NOT NULL, "
                "policy_name TEXT, policy_sha256 TEXT NOT NULL, method TEXT, feasible INTEGER, body TEXT NOT NULL, "
                "prev_hash TEXT NOT NULL, record_hash TEXT NOT NULL)",
                "CREATE TABLE policy_snapshots (sha256 TEXT PRIMARY KEY, snapshot TEXT NOT NULL, stored_at TEXT NOT NULL)"):
        conn.execute(ddl)
    for name, table in (("records_append_only_update", "records"), ("records_append_only_delete", "records"),
                        ("snapshots_append_only_update", "policy_snapshots"),
                        ("snapshots_append_only_delete", "policy_snapshots")):
        op = "UPDATE" if name.endswith("update") else "DELETE"
        conn.execute(f"CREATE TRIGGER {name} BEFORE {op} ON {table} BEGIN SELECT RAISE(ABORT, 'x'); END")
    conn.execute("INSERT INTO policy_snapshots VALUES (?, ?, 'then')", (snap_sha, canonical_json(snapshot)))
    prev = GENESIS_HASH
    for seq in (1, 2):
        rec = dict(build_record(make_decision(), snap_sha), seq=seq)
        h = compute_record_hash(rec, prev)
        cols = index_columns(rec)
        conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (seq, cols["id"], cols["recorded_at"], cols["policy_name"], cols["policy_sha256"], cols["method"],
                      cols["feasible"], canonical_json(record_body(rec)), prev, h))
        prev = h
    for key, value in (("store_version", "1"), ("head_seq", "2"), ("head_hash", prev), ("created_at", "then")):
        conn.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
    conn.close()
    with open_store(path) as store:
        assert store.version == "1" and store.verify().ok
    with AuditWriter(path) as writer:
        writer.append(make_decision(), PolicySnapshot(snap_sha, snapshot))
    with open_store(path) as store:
        report = store.verify()
        assert store.version == "2" and report.ok, [p.render() for p in report.problems]
        assert [r["seq"] for r in store.iter_all()] == [1, 2, 3]
        assert store.get(store.list()[2]["id"])["prev_hash"] == prev
