"""The PostgreSQL backend against a real server (started by the session fixture ``pg_server``): the same chain,
several processes appending to one chain, read-only auditors, foreign databases, tampering by a DB admin."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ruleengine.audit import (
    AuditWriter,
    NotAnAuditStore,
    PolicySnapshot,
    StoreNotWritable,
    StoreUnavailable,
    compute_record_hash,
    open_store,
)
from ruleengine.audit.postgres_store import SCHEMA
from ruleengine.audit.signing import SigningKey


@pytest.fixture
def key(tmp_path) -> SigningKey:
    k = SigningKey.generate()
    k.write(tmp_path / "audit.key", tmp_path / "audit.pub")
    return k


def _fill(url: str, n: int, make_decision, snapshot, snap_sha, key=None) -> list[str]:
    policy = PolicySnapshot(snap_sha, snapshot)
    with AuditWriter(url, key=key, create=True) as writer:
        return [writer.append(make_decision(), policy) for _ in range(n)]


def test_roundtrip_same_chain_as_sqlite(pg_url, make_decision, snapshot, snap_sha, key):
    ids = _fill(pg_url, 5, make_decision, snapshot, snap_sha, key)
    with open_store(pg_url) as store:
        records = list(store.iter_all())
        assert [r["id"] for r in records] == ids and [r["seq"] for r in records] == [1, 2, 3, 4, 5]
        for rec in records:  # the documented hash definition holds for PostgreSQL records too
            assert rec["record_hash"] == compute_record_hash(rec, rec["prev_hash"])
        assert store.get(ids[2])["seq"] == 3 and store.resolve_id(ids[2][:-1]) == ids[2]
        assert store.get_policy_snapshot(snap_sha) == snapshot
        report = store.verify(public_keys=[key.public])
        assert report.ok, [p.render() for p in report.problems]
        assert report.signatures["covered_seq"] == 5 and report.signatures["proven"]


def test_several_processes_append_to_one_chain(pg_url, writer_script, tmp_path, key):
    """4 processes x 50 appends, each holding its own AuditWriter (connection) to one PostgreSQL chain, all
    starting together on a database with no store yet: 200 records, seq 1..200 with no gap and no fork, every
    record a writer reported committed is there, and the signed heads cover the whole chain."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([sys.executable, str(writer_script), pg_url, "50", "--key", str(tmp_path / "audit.key")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    reported = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        reported += [line.split()[2] for line in out.splitlines() if line.startswith("committed ")]
    assert len(reported) == 200
    with open_store(pg_url) as store:
        records = list(store.iter_all())
        report = store.verify(public_keys=[key.public], all_signatures=True)
    assert report.ok, [p.render() for p in report.problems]
    assert [r["seq"] for r in records] == list(range(1, 201))
    assert sorted(r["id"] for r in records) == sorted(reported)  # nothing lost, nothing doubled
    assert len({r["prev_hash"] for r in records}) == 200  # no fork: every record has its own predecessor
    assert report.signatures["covered_seq"] == 200 and report.signatures["checked"] == report.signatures["count"]


def test_a_database_with_other_tables_is_refused_and_untouched(pg_server, make_decision, snapshot, snap_sha):
    db = pg_server.new_database()
    pg_server.admin("CREATE TABLE payroll (id int)", dbname=db)
    with pytest.raises(NotAnAuditStore, match="other tables"):
        AuditWriter(pg_server.url(db), create=True)
    schemas = pg_server.admin("SELECT nspname FROM pg_namespace WHERE nspname = %s", (SCHEMA,), dbname=db)
    assert schemas == []  # nothing was added
    pg_server.admin(f"CREATE SCHEMA {SCHEMA}", dbname=db)
    with pytest.raises(NotAnAuditStore, match="marker"):
        open_store(pg_server.url(db))


def test_a_missing_store_is_created_only_on_request(pg_url):
    with pytest.raises(StoreUnavailable, match="does not exist"):
        open_store(pg_url)
    with pytest.raises(StoreNotWritable, match="does not exist"):
        AuditWriter(pg_url)
    AuditWriter(pg_url, create=True).close()
    with open_store(pg_url) as store:
        assert store.count() == 0


def test_dropped_store_is_not_recreated_under_a_running_writer(pg_server, pg_url, make_decision, snapshot,
                                                                snap_sha):
    policy = PolicySnapshot(snap_sha, snapshot)
    writer = AuditWriter(pg_url, create=True)
    writer.append(make_decision(), policy)
    assert writer.healthy() == (True, "ok")
    pg_server.admin(f"DROP SCHEMA {SCHEMA} CASCADE", dbname=pg_url.rsplit("/", 1)[1])
    ok, why = writer.healthy()
    assert not ok and "gone" in why
    with pytest.raises(StoreNotWritable, match="refusing to re-create"):
        writer.append(make_decision(), policy)
    writer.close()
    assert pg_server.admin("SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,),
                           dbname=pg_url.rsplit("/", 1)[1]) == []


def test_an_auditor_with_select_only_can_verify_and_list_but_not_write(pg_server, make_decision, snapshot, snap_sha,
                                                                        key):
    db = pg_server.new_database()
    ids = _fill(pg_server.url(db), 3, make_decision, snapshot, snap_sha, key)
    pg_server.admin("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'auditor') THEN "
                    "CREATE ROLE auditor LOGIN; END IF; END $$")
    for sql in (f"GRANT USAGE ON SCHEMA {SCHEMA} TO auditor", f"GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO auditor"):
        pg_server.admin(sql, dbname=db)
    url = pg_server.url(db, user="auditor")
    with open_store(url) as store:
        assert store.verify(public_keys=[key.public]).ok
        assert [r["id"] for r in store.list()] == ids
    with pytest.raises(StoreNotWritable):
        AuditWriter(url, key=key).append(make_decision(), PolicySnapshot(snap_sha, snapshot))


def test_db_admin_without_the_key_is_caught(pg_server, make_decision, snapshot, snap_sha, key):
    """A database superuser disables the guards, edits a record and re-hashes the chain to the end, or appends a
    record of their own: with the writer's public key, verify reports both."""
    import psycopg

    from ruleengine.audit.codec import decode, encode
    from ruleengine.audit.records import canonical_json, hash_body_bytes, strict_loads

    db = pg_server.new_database()
    url = pg_server.url(db)
    _fill(url, 4, make_decision, snapshot, snap_sha, key)
    with psycopg.connect(url, autocommit=True) as conn:
        for t in ("records", "signatures"):
            conn.execute(f"ALTER TABLE {SCHEMA}.{t} DISABLE TRIGGER USER")
        dictionary = bytes(conn.execute(f"SELECT data FROM {SCHEMA}.dictionaries").fetchone()[0])
        rows = conn.execute(f"SELECT seq, body, prev_hash FROM {SCHEMA}.records ORDER BY seq").fetchall()
        prev = rows[1][2]
        for seq, blob, _prev in rows[1:]:
            body = strict_loads(decode("zlib-dict", bytes(blob), dictionary))
            if seq == 2:
                body["decision"]["verdict"]["rank"] = 64
            data = canonical_json(body).encode()
            new_hash = hash_body_bytes(data, prev)
            conn.execute(f"UPDATE {SCHEMA}.records SET body = %s, prev_hash = %s, record_hash = %s WHERE seq = %s",
                         (encode(data, dictionary)[1], prev, new_hash, seq))
            prev = new_hash
        conn.execute(f"UPDATE {SCHEMA}.meta SET value = %s WHERE key = 'head_hash'", (prev,))
        for t in ("records", "signatures"):
            conn.execute(f"ALTER TABLE {SCHEMA}.{t} ENABLE TRIGGER USER")
    with open_store(url) as store:
        internal = store.verify()  # no public key: the internal chain is consistent again
        proven = store.verify(public_keys=[key.public])
    # this admin left the stored public key and old signatures in place, so even the unproven check sees it
    assert {p.kind for p in internal.problems} == {"signed-hash-mismatch", "unsigned-records"}
    kinds = [(p.seq, p.kind) for p in proven.problems]
    assert (2, "signed-hash-mismatch") in kinds and (2, "unsigned-records") in kinds


def test_writer_reconnects_after_the_server_drops_its_connection(pg_server, pg_url, make_decision, snapshot,
                                                                  snap_sha):
    """A dropped connection (server restart, failover) fails the call in flight, closed; the next call reconnects
    to the same store (same store_id) and the chain goes on."""
    policy = PolicySnapshot(snap_sha, snapshot)
    writer = AuditWriter(pg_url, create=True)
    writer.append(make_decision(), policy)
    pid = writer.store._conn.info.backend_pid
    pg_server.admin("SELECT pg_terminate_backend(%s)", (pid,))
    ok, why = writer.healthy()
    assert not ok and "connection" in why
    assert writer.healthy() == (True, "ok")
    writer.append(make_decision(), policy)
    writer.close()
    with open_store(pg_url) as store:
        assert store.count() == 2 and store.verify().ok
