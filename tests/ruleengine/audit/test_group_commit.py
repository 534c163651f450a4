"""Group commit keeps every guarantee of a commit per record: a group is signed once at its last record and an
edit of any record of it is still caught; a writer killed between groups (or with threads mid-group) loses
nothing it reported committed and leaves no part of a group; a bad record fails its own group only; `decide
batch` records every decision, in groups, before writing its line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ruleengine.audit import AuditWriter, InvalidRecord, PolicySnapshot, open_store
from ruleengine.audit.signing import SigningKey, load_public_key
from ruleengine.cli import main

GROUP = 8


@pytest.fixture
def keyfiles(tmp_path):
    """(private key path, public key path) made by `decide audit keygen`."""
    res = CliRunner().invoke(main, ["audit", "keygen", "-o", str(tmp_path / "writer.key")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return str(tmp_path / "writer.key"), str(tmp_path / "writer.key.pub")


@pytest.fixture
def grouped(db_path, snapshot, snap_sha, make_decision, keyfiles):
    """seq 1 alone, seq 2..9 as one group (append_many: one signature, at 9), seq 10 alone; (path, pub)."""
    priv, pub = keyfiles
    policy = PolicySnapshot(snap_sha, snapshot)
    with AuditWriter(db_path, key_path=priv, create=True) as writer:
        writer.append(make_decision(rank=4), policy)
        writer.append_many([(make_decision(rank=8 + i), policy) for i in range(GROUP)])
        writer.append(make_decision(rank=64), policy)
    return db_path, pub


def _verify(location: str, pub: str):
    with open_store(location) as store:
        return store.verify(public_keys=[load_public_key(pub)])


def _kinds(report) -> list[tuple]:
    return [(p.seq, p.kind) for p in report.problems]


def test_a_group_is_signed_once_at_its_last_record(grouped):
    path, pub = grouped
    assert [r[0] for r in sqlite3.connect(path).execute("SELECT seq FROM signatures ORDER BY seq")] == [1, 9, 10]
    report = _verify(path, pub)
    assert report.ok, [p.render() for p in report.problems]
    assert report.signatures["covered_seq"] == 10


@pytest.mark.parametrize("seq", range(2, 2 + GROUP))
def test_an_edit_of_any_record_of_a_group_is_caught(grouped, attacker, seq):
    """Edit one record of the group and re-hash the chain from it to the end (head fixed, signatures kept): the
    chain is consistent again, but the group's signature no longer matches, so everything after seq 1 is
    unsigned; the plain edit is a hash mismatch at that very record."""
    path, pub = grouped
    att = attacker(path)
    last = 10
    prev = att.execute("SELECT prev_hash FROM records WHERE seq = ?", (seq,))[0][0]
    for s in range(seq, last + 1):
        body = att.body(s)
        if s == seq:
            body["decision"]["verdict"]["rank"] = 1024
        prev = att.write_body(s, body, rehash=True, prev_hash=prev)
    att.execute("UPDATE meta SET value = ? WHERE key = 'head_hash'", (prev,))
    att.restore_guards()
    kinds = _kinds(_verify(path, pub))
    assert (9, "signed-hash-mismatch") in kinds and (2, "unsigned-records") in kinds, kinds


@pytest.mark.parametrize("seq", range(2, 2 + GROUP))
def test_an_unrehashed_edit_in_a_group_is_located(grouped, attacker, seq):
    path, pub = grouped
    att = attacker(path)
    body = att.body(seq)
    body["decision"]["verdict"]["rank"] = 1024
    att.write_body(seq, body)
    att.restore_guards()
    assert _kinds(_verify(path, pub))[0] == (seq, "hash-mismatch")


def _run_and_kill(location: str, writer_script, key: str, extra: list[str], wait_for: int) -> list[str]:
    """Start an appending subprocess, kill -9 it once it reported ``wait_for`` commits; return the ids it
    reported committed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(writer_script), location, "0", "--key", key, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: list[str] = []
    try:
        while len(seen) < wait_for:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            seen.append(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    seen += proc.stdout.readlines()
    proc.stdout.close()
    proc.stderr.close()
    return [line.split()[2] for line in seen if line.startswith("committed ")]


def _crash_check(location: str, writer_script, keyfiles, extra: list[str], in_flight: int, whole: int) -> None:
    priv, pub = keyfiles
    reported: list[str] = []
    for wait_for in (3, 17, 40):  # kill at different moments
        reported += _run_and_kill(location, writer_script, priv, extra, wait_for)
    report = _verify(location, pub)
    assert report.ok, [p.render() for p in report.problems]
    with open_store(location) as store:
        stored = [r["id"] for r in store.iter_all()]
        signed = [s.seq for s in store.iter_signatures()]
    assert set(reported) <= set(stored)  # nothing reported committed is lost
    assert len(stored) - len(reported) <= 3 * in_flight  # at most what was in flight at each kill
    assert len(stored) % whole == 0 and all(s % whole == 0 for s in signed)  # never a part of a group
    assert report.signatures["covered_seq"] == len(stored)  # every committed group carries its signature


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")
def test_kill_9_between_groups_loses_nothing_committed(db_path, writer_script, keyfiles):
    _crash_check(db_path, writer_script, keyfiles, ["--group", "16"], in_flight=16, whole=16)


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")
def test_kill_9_under_threaded_group_commit_loses_nothing_committed(db_path, writer_script, keyfiles):
    _crash_check(db_path, writer_script, keyfiles, ["--threads", "4"], in_flight=4, whole=1)


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")
def test_kill_9_between_groups_on_postgres_loses_nothing_committed(pg_url, writer_script, keyfiles):
    _crash_check(pg_url, writer_script, keyfiles, ["--group", "16"], in_flight=16, whole=16)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_duplicate_in_a_group_fails_that_group_only(backend, request, tmp_path, snapshot, snap_sha, make_decision):
    location = str(tmp_path / "a.sqlite3") if backend == "sqlite" else request.getfixturevalue("pg_url")
    policy = PolicySnapshot(snap_sha, snapshot)
    key = SigningKey.generate()
    with AuditWriter(location, key=key, create=True) as writer:
        first = make_decision(rank=4)
        writer.append(first, policy)
        with pytest.raises(InvalidRecord):
            writer.append_many([(make_decision(rank=8), policy), (first, policy), (make_decision(rank=16), policy)])
        after = writer.append_many([(make_decision(rank=32), policy), (make_decision(rank=64), policy)])
    with open_store(location) as store:
        assert [r["id"] for r in store.iter_all()] == [first["decision_id"], *after]
        assert store.verify(public_keys=[key.public]).ok


def test_threads_share_commits_and_a_bad_record_fails_only_its_caller(db_path, snapshot, snap_sha, make_decision):
    import threading

    policy = PolicySnapshot(snap_sha, snapshot)
    key = SigningKey.generate()
    recorded = make_decision(rank=4)
    outcomes: list = []
    with AuditWriter(db_path, key=key, create=True) as writer:
        writer.append(recorded, policy)

        def run(i: int) -> None:
            for j in range(25):
                d = recorded if (i, j) == (3, 10) else make_decision(rank=8)
                try:
                    outcomes.append(writer.append(d, policy))
                except InvalidRecord as exc:
                    outcomes.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    errors = [o for o in outcomes if isinstance(o, InvalidRecord)]
    assert len(errors) == 1 and len(outcomes) == 200
    with open_store(db_path) as store:
        ids = [r["id"] for r in store.iter_all()]
        sigs = list(store.iter_signatures())
        assert store.verify(public_keys=[key.public]).ok
    assert sorted(ids[1:]) == sorted(o for o in outcomes if isinstance(o, str))
    assert len(sigs) <= len(ids)


def test_batch_records_every_decision_in_groups_before_its_line(tmp_path, keyfiles):
    from ruleengine.cli.decide import AUDIT_GROUP

    priv, pub = keyfiles
    good = {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "task": {"use_case": "chat"}}
    lines = []
    for i in range(2 * AUDIT_GROUP + 11):
        lines.append("{not json" if i % 13 == 5 else json.dumps({**good, "data": {"examples": 1000 + i}}))
    src, out, db = tmp_path / "in.jsonl", tmp_path / "out.jsonl", str(tmp_path / "audit.sqlite3")
    src.write_text("\n".join(lines) + "\n")
    for workers in ("1", "2"):
        result = CliRunner().invoke(main, ["batch", str(src), "-o", str(out), "--workers", workers, "--detail", "full",
                                           "--audit-db", db, "--audit-key", priv])
        assert result.exit_code == 2, result.output  # the bad lines
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert [r["line"] for r in rows] == list(range(1, len(lines) + 1))
        decided = [r["decision"]["decision_id"] for r in rows if r["ok"]]
        with open_store(db) as store:
            recorded = [r["id"] for r in store.iter_all()][-len(decided):]
            commits = sum(1 for s in store.iter_signatures())
            assert store.verify(public_keys=[load_public_key(pub)]).ok
        assert recorded == decided  # every decided line recorded, in input order
    assert commits == 2 * -(-len(decided) // AUDIT_GROUP)  # one signed commit per group, both runs
