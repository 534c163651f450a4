"""Each claim of the threat model in docs/audit.md, proven on a SQLite store (the PostgreSQL equivalents are in
test_postgres.py). Actors: the writer (holds the signing key), someone with write access to the store but not
the key (a DB admin, anyone who can write the file), an auditor with read access only."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ruleengine.audit import (
    AuditWriter,
    NotAnAuditStore,
    PolicySnapshot,
    SqliteAuditStore,
    StoreNotWritable,
    StoreUnavailable,
    open_store,
    record_decision,
)
from ruleengine.audit.records import canonical_json
from ruleengine.audit.signing import SigningKey
from ruleengine.cli import main


@pytest.fixture
def keyfiles(tmp_path):
    """(private key path, public key path, SigningKey) made by `decide audit keygen`."""
    res = CliRunner().invoke(main, ["audit", "keygen", "-o", str(tmp_path / "writer.key")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    priv, pub = tmp_path / "writer.key", tmp_path / "writer.key.pub"
    return str(priv), str(pub), SigningKey.load(priv)


@pytest.fixture
def signed(db_path, snapshot, snap_sha, make_decision, plan, keyfiles):
    """A store of 8 records written by a writer holding the key; returns (path, ids, public key path)."""
    priv, pub, _key = keyfiles
    policy = PolicySnapshot(snap_sha, snapshot)
    with AuditWriter(db_path, key_path=priv, create=True) as writer:
        ids = [writer.append(make_decision(m, r, use_case=u), policy) for m, r, u in plan]
    return db_path, ids, pub


def verify(path, *, pub=None, anchor=None):
    from ruleengine.audit.signing import load_public_key

    with SqliteAuditStore(path, read_only=True) as store:
        return store.verify(anchor=anchor, public_keys=[load_public_key(pub)] if pub else None)


def kinds(report):
    return [(p.seq, p.kind) for p in report.problems]


def _rewrite_from(att, first: int, edit) -> None:
    """Edit record ``first`` with ``edit(body)`` and re-hash every record from there to the end, and the head."""
    last = att.execute("SELECT max(seq) FROM records")[0][0]
    prev = att.execute("SELECT prev_hash FROM records WHERE seq = ?", (first,))[0][0]
    for seq in range(first, last + 1):
        body = att.body(seq)
        if seq == first:
            edit(body)
        prev = att.write_body(seq, body, rehash=True, prev_hash=prev)
    att.execute("UPDATE meta SET value = ? WHERE key = 'head_hash'", (prev,))


# --- the writer holds the key --------------------------------------------------------------------------------------


def test_writer_signs_every_commit_and_verify_proves_it(signed):
    path, ids, pub = signed
    report = verify(path, pub=pub)
    assert report.ok, [p.render() for p in report.problems]
    assert report.signatures["proven"] and report.signatures["covered_seq"] == len(ids)
    res = CliRunner().invoke(main, ["audit", "verify", "--db", path, "--public-key", pub], catch_exceptions=False)
    assert res.exit_code == 0 and "signed: every record up to seq 8" in res.stdout


def test_one_transaction_one_signature(db_path, snapshot, snap_sha, make_decision, keyfiles):
    priv, pub, _key = keyfiles
    with AuditWriter(db_path, key_path=priv, create=True) as writer:
        writer.append_many([(make_decision(), PolicySnapshot(snap_sha, snapshot)) for _ in range(5)])
    assert sqlite3.connect(db_path).execute("SELECT seq FROM signatures").fetchall() == [(5,)]
    assert verify(db_path, pub=pub).ok


# --- someone with write access to the store, without the key ---------------------------------------------------


def test_edited_record_is_caught_without_any_key(signed, attacker):
    path, _ids, _pub = signed
    att = attacker(path)
    body = att.body(3)
    body["decision"]["verdict"]["rank"] = 4
    att.write_body(3, body)
    att.restore_guards()
    assert kinds(verify(path))[0] == (3, "hash-mismatch")


def test_rechained_rewrite_passes_the_chain_but_not_the_public_key(signed, attacker):
    """The careful forger: edits seq 3, re-hashes to the end, fixes the head, deletes the signatures and the stored
    key. The chain is consistent again (verify without a key passes: the documented limit of a bare chain);
    the writer's public key proves seq 3..8 are not the writer's."""
    path, _ids, pub = signed
    att = attacker(path)
    _rewrite_from(att, 3, lambda b: b["decision"]["verdict"].update(rank=128))
    att.execute("DELETE FROM signatures")
    att.execute("DELETE FROM keys")
    att.restore_guards()
    assert verify(path).ok
    proven = verify(path, pub=pub)
    assert kinds(proven) == [(1, "unsigned-records")]


def test_rechained_rewrite_keeping_old_signatures_is_located(signed, attacker):
    path, _ids, pub = signed
    att = attacker(path)
    _rewrite_from(att, 3, lambda b: b["decision"]["verdict"].update(rank=128))
    att.restore_guards()
    report = verify(path, pub=pub)
    assert report.first_problem.seq == 3 and report.first_problem.kind == "signed-hash-mismatch"
    assert (3, "unsigned-records") in kinds(report)


def test_forged_appended_record_passes_the_anchor_but_not_the_public_key(signed, attacker, make_decision, snap_sha):
    """Appending a record of one's own (right seq, right prev_hash, right hash, head moved) leaves an older anchor
    intact; it carries no signature by the writer's key."""
    path, _ids, pub = signed
    clean = verify(path, pub=pub)
    anchor = (clean.head_seq, clean.head_hash)
    att = attacker(path)
    from ruleengine.audit.codec import encode
    from ruleengine.audit.records import build_record, hash_body_bytes, index_columns

    body = build_record(make_decision(), snap_sha)
    body["seq"] = 9
    data = canonical_json(body).encode()
    new_hash = hash_body_bytes(data, clean.head_hash)
    dictionary = bytes(att.execute("SELECT data FROM dictionaries")[0][0])
    cols = index_columns(body)
    att.execute("INSERT INTO records (seq, id, recorded_at, policy_name, policy_sha256, method, feasible, body, "
                "codec, dict_id, prev_hash, record_hash) VALUES (9, ?, ?, ?, ?, ?, ?, ?, 'zlib-dict', 1, ?, ?)",
                (cols["id"], cols["recorded_at"], cols["policy_name"], cols["policy_sha256"], cols["method"],
                 cols["feasible"], encode(data, dictionary)[1], clean.head_hash, new_hash))
    att.execute("UPDATE meta SET value = '9' WHERE key = 'head_seq'")
    att.execute("UPDATE meta SET value = ? WHERE key = 'head_hash'", (new_hash,))
    att.restore_guards()
    # the anchor cannot see an append (only the store's own signatures, which a careful forger deletes, can)
    assert not any(k.startswith("anchor") for _s, k in kinds(verify(path, anchor=anchor)))
    assert kinds(verify(path, pub=pub)) == [(9, "unsigned-records")]
    res = CliRunner().invoke(main, ["audit", "verify", "--db", path, "--public-key", pub], catch_exceptions=False)
    assert res.exit_code == 6 and "seq 9 carry no valid signature" in res.stdout


def test_own_key_swapped_in_is_not_trusted(signed, attacker, tmp_path):
    """The forger re-signs a rewritten chain with a key of their own and replaces the stored public key: the
    store is consistent with itself, the auditor's public key is not fooled."""
    from ruleengine.audit.chain import sign_head

    path, _ids, pub = signed
    att = attacker(path)
    _rewrite_from(att, 2, lambda b: b.update(caller="mallory@elsewhere"))
    att.execute("DELETE FROM signatures")
    att.execute("DELETE FROM keys")
    mallory = SigningKey.generate()
    head_seq, head_hash = att.execute("SELECT seq, record_hash FROM records ORDER BY seq DESC LIMIT 1")[0]
    sig = sign_head(mallory, head_seq, head_hash)
    att.execute("INSERT INTO keys VALUES (?, ?, 'now')", (mallory.key_id, mallory.public.hex))
    att.execute("INSERT INTO signatures VALUES (?, ?, ?, ?, ?)", (sig.seq, sig.key_id, sig.record_hash,
                                                                  sig.signed_at, sig.signature))
    att.restore_guards()
    assert verify(path).ok  # consistent with the key it keeps itself
    report = verify(path, pub=pub)
    assert kinds(report) == [(1, "unsigned-records")] and report.signatures["other_keys"] == 1


def test_forged_signature_bytes_are_reported(signed, attacker):
    path, _ids, pub = signed
    att = attacker(path)
    att.execute("UPDATE signatures SET signature = zeroblob(64) WHERE seq = 8")
    att.restore_guards()
    report = verify(path, pub=pub)
    # seq 8's signature is garbage; the newest valid one (seq 7) vouches for 1..7, and seq 8 for nothing
    assert kinds(report) == [(8, "bad-signature"), (8, "unsigned-records")]
    assert report.signatures["covered_seq"] == 7


def test_truncating_the_tail_with_its_signatures_needs_the_anchor(signed, attacker):
    """Removing the newest records together with their signatures leaves a shorter chain that is validly signed:
    only a head noted elsewhere (--anchor) shows the loss. The documented limit of signing."""
    path, _ids, pub = signed
    anchor = (verify(path).head_seq, verify(path).head_hash)
    att = attacker(path)
    att.execute("DELETE FROM records WHERE seq > 6")
    att.execute("DELETE FROM signatures WHERE seq > 6")
    att.execute("UPDATE meta SET value = '6' WHERE key = 'head_seq'")
    att.execute("UPDATE meta SET value = (SELECT record_hash FROM records WHERE seq = 6) WHERE key = 'head_hash'")
    att.restore_guards()
    assert verify(path, pub=pub).ok
    assert kinds(verify(path, pub=pub, anchor=anchor)) == [(None, "anchor-missing")]


def test_duplicate_key_body_is_rejected_even_when_rehashed(signed, attacker):
    """A body whose JSON says method twice reads as lora to one reader and qlora to another (SQL's json_extract
    takes the first, Python the last). Re-hashed, it passes the hash; it is still reported, and not shown."""
    path, ids, _pub = signed
    att = attacker(path)
    data = att.body_bytes(1)
    assert b'"method":"lora"' in data
    forged = data.replace(b'"method":"lora"', b'"method":"lora","method":"qlora"', 1)
    _ = att.write_body(1, forged, rehash=True)
    att.restore_guards()
    report = verify(path)
    assert (1, "duplicate-key") in kinds(report)
    res = CliRunner().invoke(main, ["audit", "show", ids[0], "--db", path], catch_exceptions=False)
    assert res.exit_code == 2 and "appears twice" in res.stderr


def test_verify_hashes_the_stored_bytes_not_a_reserialisation(signed, attacker):
    """Bytes that parse to the same JSON (a space added) are still different bytes: hash-mismatch."""
    path, _ids, _pub = signed
    att = attacker(path)
    data = att.body_bytes(2)
    att.write_body(2, data.replace(b'{"caller"', b'{ "caller"', 1))
    att.restore_guards()
    assert json.loads(att.body_bytes(2)) == json.loads(data)
    assert kinds(verify(path))[0] == (2, "hash-mismatch")


def test_edited_dictionary_is_caught(signed, attacker):
    path, _ids, _pub = signed
    att = attacker(path)
    att.execute("UPDATE dictionaries SET data = CAST(replace(CAST(data AS TEXT), 'lora', 'LORA') AS BLOB)")
    att.restore_guards()
    report = verify(path)
    assert report.first_problem.kind == "dictionary-hash-mismatch"
    assert {p.kind for p in report.problems} >= {"unreadable"}  # zlib refuses the stream with another dictionary


# --- the store's location ------------------------------------------------------------------------------------------


def test_foreign_sqlite_database_is_refused_and_untouched(tmp_path, make_decision, snapshot, snap_sha):
    foreign = tmp_path / "app.sqlite3"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers(name) VALUES ('ada')")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    with pytest.raises(NotAnAuditStore, match="other tables"):
        record_decision(make_decision(), snapshot, snap_sha, db_path=str(foreign))
    with pytest.raises(NotAnAuditStore):
        open_store(str(foreign))
    assert foreign.read_bytes() == before
    res = CliRunner().invoke(main, ["audit", "verify", "--db", str(foreign)], catch_exceptions=False)
    assert res.exit_code == 2 and "not a finetune-policy audit store" in res.stderr


def test_deleted_store_is_not_recreated_under_a_running_writer(db_path, make_decision, snapshot, snap_sha):
    policy = PolicySnapshot(snap_sha, snapshot)
    writer = AuditWriter(db_path, create=True)
    writer.append(make_decision(), policy)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            os.remove(db_path + suffix)
    ok, why = writer.healthy()
    assert not ok and "deleted" in why
    with pytest.raises(StoreNotWritable, match="refusing to re-create") as exc:
        writer.append(make_decision(), policy)
    assert exc.value.exit_code == 7
    writer.close()
    assert not os.path.exists(db_path)


def test_replaced_store_is_refused(db_path, tmp_path, make_decision, snapshot, snap_sha):
    policy = PolicySnapshot(snap_sha, snapshot)
    writer = AuditWriter(db_path, create=True)
    writer.append(make_decision(), policy)
    other = str(tmp_path / "other.sqlite3")
    record_decision(make_decision(), snapshot, snap_sha, db_path=other)
    os.replace(other, db_path)
    with pytest.raises(StoreNotWritable, match="replaced"):
        writer.append(make_decision(), policy)
    writer.close()


def test_missing_store_is_created_only_by_an_explicit_writer(db_path, make_decision, snapshot, snap_sha):
    with pytest.raises(StoreNotWritable, match="does not exist"):
        AuditWriter(db_path)
    with pytest.raises(StoreUnavailable, match="does not exist"):
        open_store(db_path)
    assert not os.path.exists(db_path)
    record_decision(make_decision(), snapshot, snap_sha, db_path=db_path)  # the CLI's first decision creates it
    assert open_store(db_path).count() == 1


# --- an auditor with read access only ------------------------------------------------------------------------------


def _as_reader() -> list[str] | None:
    """A command prefix that runs a process without the right to write files we own, or None if impossible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    # root keeps uid 0 but loses the capabilities that bypass file permissions
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_reader_without_write_permission_can_verify_list_show_export(signed, tmp_path):
    prefix = _as_reader()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot drop the right to write")
    path, ids, pub = signed
    copy_dir = tmp_path / "readonly"
    copy_dir.mkdir()
    copy = copy_dir / "audit.sqlite3"
    shutil.copy(path, copy)
    os.chmod(copy, 0o444)
    os.chmod(copy_dir, 0o555)
    before = copy.read_bytes()
    try:
        cmd = [*prefix, sys.executable, "-m", "ruleengine.cli", "audit"]
        root = str(Path(__file__).resolve().parents[3])  # the checkout under test, not an installed copy
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for args in (["verify", "--public-key", pub], ["list"], ["show", ids[0]], ["export"]):
            res = subprocess.run([*cmd, *args, "--db", str(copy)], capture_output=True, text=True, env=env,
                                 timeout=120)
            assert res.returncode == 0, (args, res.stderr)
        probe = subprocess.run([*prefix, sys.executable, "-c", "open(__import__('sys').argv[1], 'ab')", str(copy)],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0, "the reader could write the file: the test proves nothing"
        writer = subprocess.run([*prefix, sys.executable, "-c",
                                 "from ruleengine.audit import AuditWriter; AuditWriter(__import__('sys').argv[1])",
                                 str(copy)], capture_output=True, text=True, env=env, timeout=60)
        assert writer.returncode != 0 and "StoreNotWritable" in writer.stderr
    finally:
        os.chmod(copy_dir, 0o755)
    assert copy.read_bytes() == before
    assert sorted(p.name for p in copy_dir.iterdir()) == ["audit.sqlite3"]  # no -wal/-shm left behind


def test_read_only_open_writes_nothing(signed):
    path, _ids, _pub = signed
    with open_store(path) as store:
        with pytest.raises(StoreNotWritable, match="read-only"):
            store.check_writable()
        with pytest.raises(StoreNotWritable, match="read-only"):
            store.put_policy_snapshot("ab" * 32, {"root": "p.yaml", "files": {"p.yaml": "x"}}) if \
                False else store._write(lambda conn: None)


def test_export_with_signatures_is_proven_offline(signed, tmp_path):
    """An export with --signatures carries the signed heads: a copy verifies with the public key anywhere, and a
    record appended to the file by someone without the key is reported."""
    path, ids, pub = signed
    out = tmp_path / "chain.jsonl"
    runner = CliRunner()
    res = runner.invoke(main, ["audit", "export", "--db", path, "--signatures", "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 16 and all("head_signature" in line for line in lines[8:])
    res = runner.invoke(main, ["audit", "verify", "--jsonl", str(out), "--public-key", pub], catch_exceptions=False)
    assert res.exit_code == 0 and "signed: every record up to seq 8" in res.stdout
    # drop the last record and its signature, then forge a ninth record chained onto the eighth's hash
    records = [json.loads(line) for line in lines[:8]]
    forged = dict(records[-1], seq=9, prev_hash=records[-1]["record_hash"], caller="mallory@elsewhere")
    from ruleengine.audit.records import compute_record_hash

    forged["record_hash"] = compute_record_hash(forged, forged["prev_hash"])
    out.write_text("\n".join(lines[:8] + [canonical_json(forged)] + lines[8:]) + "\n", encoding="utf-8")
    res = runner.invoke(main, ["audit", "verify", "--jsonl", str(out), "--public-key", pub], catch_exceptions=False)
    assert res.exit_code == 6 and "seq 9 carry no valid signature" in res.stdout


def test_creating_a_store_is_never_silent(db_path, make_decision, snapshot, snap_sha, caplog):
    with caplog.at_level("WARNING", logger="ruleengine.audit"):
        record_decision(make_decision(), snapshot, snap_sha, db_path=db_path)
        record_decision(make_decision(), snapshot, snap_sha, db_path=db_path)
    created = [r for r in caplog.records if "created a new, empty audit store" in r.getMessage()]
    assert len(created) == 1 and db_path in created[0].getMessage()
