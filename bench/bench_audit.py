"""Audit store: bytes per record, where an append's time goes, append rates the way the service and `decide batch`
append, verify time; against baselines run in the same process.

    .venv/bin/python bench/bench_audit.py [--n 2000] [--threads 8] [--synchronous FULL NORMAL] [--dir DIR]
                                          [--postgres [URL]] [--skip-verify]

Decisions: a realistic mix, one real decision per case of the bundled policy's tests (different models, GPUs,
use cases, feasible and infeasible), cycled with fresh ids; a synthetic decision when the engine cannot run.

* size: the record as the old store kept it (canonical JSON text) vs what the store keeps now (compressed
  body) and the whole SQLite file divided by the number of records (indexes, hashes, signatures included).
* steps: CPU time per record of each step of an append, measured one step at a time in one thread.
* append, store kept open, each way timed on fresh records into a fresh store (rec/s of wall time, and the
  process's CPU time per record: the machine is shared, CPU time is the steadier figure):
    - ``append`` 1 thread: ``AuditWriter.append(decision, policy)`` in a loop, one commit per record;
    - ``append`` N threads: the same from ``--threads`` threads (group commit);
    - service: what ``decide serve`` does per request (ruleengine/service/core.py ``Service.record``):
      ``prepare_record`` (the canonical text it also answers with) then ``append_prepared`` from N threads;
      and the same timed without ``prepare_record``: what recording adds to a service that answers with
      the canonical text anyway;
    - batch: what ``decide batch`` does (ruleengine/cli/decide.py): records prepared with the decision
      (``api.prepare_record``) and appended in groups (``api.record_many``, one commit and one signature per
      group). ``--workers 1`` prepares in the appending process; with more workers they prepare and the
      appending process only appends, so its rate is timed without the preparation;
    - plain INSERT: ``json.dumps(decision)`` into a table, one transaction per record, same pragmas (baseline).
* verify: ``store.verify(public_keys=...)`` per record, scaled to 100k, against the old per-record work
  (parse, re-serialise, hash, jsonschema) done here on the same records.
* ``--postgres``: the append ways against PostgreSQL: a server started for the run in a temporary directory
  (initdb/pg_ctl, as bench_service.py and the tests do; fsync on), or the database at URL.

Goal (issue 9): >= 2,000 appends/s per process with the store kept open (group commit is fine).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ruleengine import api  # noqa: E402
from ruleengine.audit import AuditWriter, PolicySnapshot, SqliteAuditStore, build_record, canonical_json  # noqa: E402
from ruleengine.audit.codec import encode  # noqa: E402
from ruleengine.audit.records import (  # noqa: E402
    GENESIS_HASH,
    _validator,
    canonical_decision,
    hash_body_bytes,
    prepare_record,
    utc_now_iso,
)
from ruleengine.audit.signing import SigningKey, head_statement  # noqa: E402
from ruleengine.decision import new_decision_id  # noqa: E402

BATCH_GROUP = 64  # what ruleengine/cli/decide.py uses (AUDIT_GROUP)


class _Engine:
    """What ``api.prepare_record`` / ``api.record_many`` need of an engine: its policy and sha256."""

    def __init__(self, policy: PolicySnapshot):
        self.policy = policy
        self.sha256 = policy.sha256


def sample_decisions() -> tuple[list[dict], PolicySnapshot]:
    """Return (decision dicts, their policy): one real decision per policy test case, else a synthetic one."""
    try:
        import yaml

        from ruleengine.api import decide
        from ruleengine.facts import FactsError
        from ruleengine.paths import default_policy
        from ruleengine.policy import load_policy

        policy = load_policy(None)
        out = []
        for path in sorted((default_policy() / "tests").glob("*.yaml")):
            for case in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("cases") or []:
                if isinstance(case, dict) and isinstance(case.get("facts"), dict):
                    try:
                        out.append(decide(policy, case["facts"]).to_dict())
                    except FactsError:
                        continue
        if out:
            return out, PolicySnapshot(policy.sha256, policy.snapshot())
    except Exception as exc:  # noqa: BLE001 - any failure means: use the synthetic decision
        print(f"(engine unavailable: {type(exc).__name__}: {exc}; using a synthetic decision)", file=sys.stderr)
    from ruleengine.audit import snapshot_hash

    snapshot = {"root": "policy.yaml", "files": {"policy.yaml": "name: bench\n" * 50}}
    sha = snapshot_hash(snapshot)
    trace = [{"kind": "select", "rule": f"rule-{i}", "priority": i, "matched": i == 3, "memory_gb": 17.25 + i,
              "failed": {"fact": "data.examples", "op": ">=", "actual": 50000, "expected": 1e6}} for i in range(25)]
    d = {"schema_version": "1", "decision_id": new_decision_id(), "created_at": "2025-01-01T00:00:00.000Z",
         "policy": {"name": "bench", "version": "1.0.0", "sha256": sha},
         "facts": {"given": {"model": {"params": "7B"}}, "normalized": {"model": {"params": 7e9}}},
         "derived": {f"k{i}": i * 1.5 for i in range(60)}, "feasible": True,
         "verdict": {"method": "lora", "rank": 16}, "chosen_rule": "rule-3", "matched_rules": ["rule-3"],
         "rejected": [], "warnings": [], "trace": trace, "metrics": {"total_ms": 3.0}}
    return [d], PolicySnapshot(sha, snapshot)


def fresh(decisions: list[dict], n: int) -> list[dict]:
    """Return ``n`` decisions cycling through ``decisions``, each with a new id."""
    return [dict(decisions[i % len(decisions)], decision_id=new_decision_id()) for i in range(n)]


# -- steps ---------------------------------------------------------------------------------------------------------

def _cpu_us(fn: Callable[[object], object], data: list) -> float:
    """Return the CPU time of this thread per item of ``fn`` over ``data``, in µs."""
    t0 = time.thread_time()
    for x in data:
        fn(x)
    return (time.thread_time() - t0) / len(data) * 1e6


def steps(decisions: list[dict], policy: PolicySnapshot, key: SigningKey, folder: str, n: int) -> None:
    """Print the CPU time per record of each step of an append, one step at a time in this thread."""
    items = fresh(decisions, n)
    serialise = _cpu_us(canonical_decision, items)
    prepare = _cpu_us(lambda d: prepare_record(d, policy.sha256), items)
    prepared = [prepare_record(d, policy.sha256) for d in items]
    bodies = [p.body_bytes(7) for p in prepared]
    compress = _cpu_us(lambda b: encode(b, bodies[0]), bodies)
    hashing = _cpu_us(lambda b: hash_body_bytes(b, GENESIS_HASH), bodies)
    sign = _cpu_us(lambda i: key.sign(head_statement(i, GENESIS_HASH, key.key_id, utc_now_iso())), list(range(n)))
    with AuditWriter(os.path.join(folder, "steps.sqlite3"), key=key, create=True, synchronous="NORMAL") as writer:
        writer.append(items[0], policy)
        one = [[prepare_record(d, policy.sha256)] for d in fresh(decisions, n // 2)]
        per_commit = _cpu_us(writer.append_prepared, one)
        recs = [prepare_record(d, policy.sha256) for d in fresh(decisions, n)]
        groups = [recs[i:i + BATCH_GROUP] for i in range(0, len(recs), BATCH_GROUP)]
        grouped = _cpu_us(writer.append_prepared, groups) * len(groups) / len(recs)
    print(f"steps (CPU µs per record, one thread): serialise + key scan {serialise:5.0f}   schema check + envelope "
          f"{prepare - serialise:4.0f}   compress {compress:4.0f}   hash {hashing:3.0f}   sign (per commit) {sign:3.0f}")
    print(f"      chain + compress + hash + insert + commit (synchronous=NORMAL): {per_commit:4.0f} one record per "
          f"commit, {grouped:4.0f} in groups of {BATCH_GROUP}")


# -- append ways ---------------------------------------------------------------------------------------------------

def _way_append(writer: AuditWriter, chunk: list[dict], policy: PolicySnapshot) -> None:
    for d in chunk:
        writer.append(d, policy)


def _way_service(writer: AuditWriter, chunk: list[dict], policy: PolicySnapshot) -> None:
    for d in chunk:  # ruleengine/service/core.py Service.record
        writer.ensure_snapshot(policy)
        prepared = prepare_record(d, policy.sha256)
        writer.append_prepared([prepared])


def _way_service_own(writer: AuditWriter, chunk: list, policy: PolicySnapshot) -> None:
    for prepared in chunk:  # Service.record with the canonical text already made (the service answers with it)
        writer.ensure_snapshot(policy)
        writer.append_prepared([prepared])


def _way_batch(writer: AuditWriter, chunk: list, policy: PolicySnapshot) -> None:
    engine = _Engine(policy)
    group: list = []
    for d in chunk:  # ruleengine/cli/decide.py batch_command, --workers 1: prepared here, appended in groups
        group.append(api.prepare_record(d, engine))
        if len(group) >= BATCH_GROUP:
            api.record_many(group, engine, writer=writer)
            group = []
    if group:
        api.record_many(group, engine, writer=writer)


def _way_batch_parent(writer: AuditWriter, chunk: list, policy: PolicySnapshot) -> None:
    engine = _Engine(policy)
    for i in range(0, len(chunk), BATCH_GROUP):  # the records come prepared from the worker processes
        api.record_many(chunk[i:i + BATCH_GROUP], engine, writer=writer)


WAYS = {"append": _way_append, "service": _way_service, "service-own": _way_service_own, "batch": _way_batch,
        "batch-parent": _way_batch_parent}
PREPARED_BEFORE = ("service-own", "batch-parent")  # ways timed on records prepared before the clock starts


def bench_way(location: str, items: list[dict], policy: PolicySnapshot, key: SigningKey, synchronous: str,
              threads: int, way: str) -> tuple[float, float]:
    """Append ``items`` through one open AuditWriter the way ``way`` does from ``threads`` threads; return
    (records per second of wall time, CPU µs of this process per record)."""
    writer = AuditWriter(location, key=key, create=True, synchronous=synchronous)
    writer.append(items[0], policy)  # store the snapshot, make the dictionary: not part of the steady state
    rest: list = items[1:]
    if way in PREPARED_BEFORE:
        rest = [prepare_record(d, policy.sha256) for d in rest]
    chunks = [rest[i::threads] for i in range(threads)]
    run = WAYS[way]
    c0, t0 = time.process_time(), time.perf_counter()
    workers = [threading.Thread(target=run, args=(writer, c, policy)) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    writer.close()
    return len(rest) / wall, cpu / len(rest) * 1e6


def bench_plain(path: str, items: list[dict], synchronous: str) -> tuple[float, float]:
    """Return (rec/s, CPU µs per record) of INSERTing ``json.dumps(decision)`` rows, one transaction each."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("CREATE TABLE plain (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")
    c0, t0 = time.process_time(), time.perf_counter()
    for d in items:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO plain(id, body) VALUES (?, ?)", (d["decision_id"], json.dumps(d)))
        conn.execute("COMMIT")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    conn.close()
    return len(items) / wall, cpu / len(items) * 1e6


def append_report(label: str, location_for: Callable[[str], str], decisions: list[dict], policy: PolicySnapshot,
                  key: SigningKey, synchronous: str, n: int, threads: int, plain: tuple[float, float] | None) -> None:
    """Run every append way against fresh stores from ``location_for(name)`` and print one block."""
    runs = [("append, 1 thread (a commit per record)", "append", 1),
            (f"append, {threads} threads (group commit)", "append", threads),
            (f"service: prepare + append_prepared, {threads} threads", "service", threads),
            ("  the same, the text already made (the service's answer)", "service-own", threads),
            (f"batch --workers 1: prepare + groups of {BATCH_GROUP}", "batch", 1),
            (f"batch --workers >1: the appending process, groups of {BATCH_GROUP}", "batch-parent", 1)]
    print(f"append {label}:")
    for text, way, th in runs:
        rate, cpu = bench_way(location_for(f"{way}-{th}"), fresh(decisions, n), policy, key, synchronous, th, way)
        print(f"    {text:<58} {rate:6.0f} rec/s   CPU {cpu:5.0f} µs/record")
    if plain is not None:
        print(f"    {'plain INSERT of json.dumps, a transaction per record (baseline)':<58} {plain[0]:6.0f} rec/s   "
              f"CPU {plain[1]:5.0f} µs/record")


def old_verify_work(records: list[dict]) -> float:
    """Return seconds for the old verify's per-record work: parse, re-serialise, hash, jsonschema iter_errors."""
    import hashlib

    texts = [canonical_json({k: v for k, v in r.items() if k not in ("prev_hash", "record_hash")})
             for r in records]
    validator = _validator()
    t0 = time.perf_counter()
    for text, rec in zip(texts, records, strict=True):
        body = json.loads(text)
        hashlib.sha256(canonical_json(body).encode() + rec["prev_hash"].encode()).hexdigest()
        list(validator.iter_errors(dict(body, prev_hash=rec["prev_hash"], record_hash=rec["record_hash"])))
    return time.perf_counter() - t0


def main() -> None:
    """Run the benchmarks and print sizes, steps, rates and ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="records per run (default 2000)")
    ap.add_argument("--threads", type=int, default=8, help="threads for the group-commit runs (default 8)")
    ap.add_argument("--synchronous", choices=["FULL", "NORMAL", "OFF"], nargs="+", default=["FULL", "NORMAL"],
                    help="SQLite synchronous settings to run (default: FULL NORMAL)")
    ap.add_argument("--dir", default=None, help="directory for the database files (default: a temp dir)")
    ap.add_argument("--postgres", metavar="URL", nargs="?", const="temp", default=None,
                    help="also append to PostgreSQL: a server started for the run, or the (empty) database at URL")
    ap.add_argument("--skip-verify", action="store_true", help="do not time verify")
    args = ap.parse_args()
    import logging

    logging.getLogger("ruleengine.audit").setLevel(logging.ERROR)  # every run creates stores: no warning each
    decisions, policy = sample_decisions()
    key = SigningKey.generate()
    print(f"{len(decisions)} distinct decisions, n = {args.n}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        # -- size ----------------------------------------------------------------------------------------------
        items = fresh(decisions, args.n)
        old = sum(len(canonical_json(dict(build_record(d, policy.sha256), seq=1, prev_hash="0" * 64,
                                          record_hash="0" * 64)).encode()) for d in items[:200]) / min(200, args.n)
        size_db = os.path.join(tmp, "size.sqlite3")
        with AuditWriter(size_db, key=key, create=True) as writer:
            for i in range(0, len(items), 100):
                writer.append_many([(d, policy) for d in items[i:i + 100]])
        conn = sqlite3.connect(size_db)
        bodies = conn.execute("SELECT avg(length(body)) FROM records").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        per_record_file = os.path.getsize(size_db) / args.n
        print(f"size: record as canonical JSON {old:8.0f} B   stored body {bodies:7.0f} B   whole SQLite file per "
              f"record {per_record_file:7.0f} B   ({old / per_record_file:.1f}x smaller)")
        steps(decisions, policy, key, tmp, min(args.n, 1000))
        # -- append --------------------------------------------------------------------------------------------
        for sync in args.synchronous:
            plain = bench_plain(os.path.join(tmp, f"plain-{sync}.sqlite3"), fresh(decisions, args.n), sync)
            append_report(f"SQLite synchronous={sync}", lambda name, s=sync: os.path.join(tmp, f"{name}-{s}.sqlite3"),
                          decisions, policy, key, sync, args.n, args.threads, plain)
        if args.postgres:
            _postgres(args, decisions, policy, key)
        # -- verify --------------------------------------------------------------------------------------------
        if not args.skip_verify:
            with SqliteAuditStore(size_db, read_only=True) as store:
                t0 = time.perf_counter()
                report = store.verify(public_keys=[key.public])
                new = time.perf_counter() - t0
                assert report.ok, report.problems[:3]
                records = list(store.iter_all())
            old_t = old_verify_work(records)
            print(f"verify: {new / args.n * 1e5:6.1f} s per 100k records (measured on {args.n}, scaled)   old "
                  f"per-record work: {old_t / args.n * 1e5:6.1f} s per 100k   ratio new/old: {new / old_t:4.2f}x")


def _postgres(args: argparse.Namespace, decisions: list[dict], policy: PolicySnapshot, key: SigningKey) -> None:
    """Run the append ways against PostgreSQL (a temporary server, or the database at ``--postgres URL``)."""
    import contextlib

    import psycopg

    if args.postgres == "temp":
        from bench_service import postgres

        server = postgres()
    else:
        server = contextlib.nullcontext(args.postgres)
    with server as url:
        admin = url.rsplit("/", 1)[0] + "/postgres"
        made: list[str] = []

        def location_for(name: str) -> str:
            if args.postgres != "temp":  # a given database: one store, appended to by every way in turn
                return url
            db = "bench_" + name.replace("-", "_")
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {db}")
            made.append(db)
            return url.rsplit("/", 1)[0] + "/" + db

        append_report("PostgreSQL (loopback, fsync on)" if args.postgres == "temp" else "PostgreSQL", location_for,
                      decisions, policy, key, "FULL", args.n, args.threads, None)


if __name__ == "__main__":
    main()
