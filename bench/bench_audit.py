"""Audit store: bytes per record, append rate with the store kept open, verify time; against baselines run in
the same process.

    .venv/bin/python bench/bench_audit.py [--n 2000] [--threads 8] [--synchronous FULL NORMAL] [--dir DIR]
                                          [--postgres URL]

Decisions: a realistic mix, one real decision per case of the bundled policy's tests (different models, GPUs,
use cases, feasible and infeasible), cycled with fresh ids; a synthetic decision when the engine cannot run.

* size: the record as the old store kept it (canonical JSON text) vs what the store keeps now (compressed
  body) and the whole SQLite file divided by the number of records (indexes, hashes, signatures included).
* append: ``AuditWriter.append`` (serialise, schema check, compress, hash, sign the head, commit) from one thread
  and from ``--threads`` threads (group commit), against a plain ``INSERT`` of ``json.dumps(decision)``, one
  transaction per record, same pragmas.
* verify: ``store.verify(public_keys=...)`` per record, scaled to 100k, against the old per-record work
  (parse, re-serialise, hash, jsonschema) done here on the same records.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ruleengine.audit import AuditWriter, PolicySnapshot, SqliteAuditStore, build_record, canonical_json  # noqa: E402
from ruleengine.audit.records import _validator  # noqa: E402
from ruleengine.audit.signing import SigningKey  # noqa: E402
from ruleengine.decision import new_decision_id  # noqa: E402


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


def bench_writer(path: str, items: list[dict], policy: PolicySnapshot, key: SigningKey, synchronous: str,
                 threads: int) -> float:
    """Return seconds to append ``items`` through one open AuditWriter from ``threads`` threads."""
    writer = AuditWriter(path, key=key, create=True, synchronous=synchronous)
    writer.append(items[0], policy)  # store the snapshot, make the dictionary: not part of the steady state
    rest = items[1:]
    chunks = [rest[i::threads] for i in range(threads)]

    def run(chunk: list[dict]) -> None:
        for d in chunk:
            writer.append(d, policy)

    t0 = time.perf_counter()
    workers = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed * len(items) / max(1, len(rest))


def bench_plain(path: str, items: list[dict], synchronous: str) -> float:
    """Return seconds to INSERT ``json.dumps(decision)`` rows, one transaction each, same pragmas."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("CREATE TABLE plain (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")
    t0 = time.perf_counter()
    for d in items:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO plain(id, body) VALUES (?, ?)", (d["decision_id"], json.dumps(d)))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


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
    """Run the benchmarks and print sizes, rates and ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="records per run (default 2000)")
    ap.add_argument("--threads", type=int, default=8, help="threads for the group-commit run (default 8)")
    ap.add_argument("--synchronous", choices=["FULL", "NORMAL", "OFF"], nargs="+", default=["FULL", "NORMAL"],
                    help="SQLite synchronous settings to run (default: FULL NORMAL)")
    ap.add_argument("--dir", default=None, help="directory for the database files (default: a temp dir)")
    ap.add_argument("--postgres", metavar="URL", default=None,
                    help="also append to this PostgreSQL database (empty, or an audit store)")
    args = ap.parse_args()
    import logging

    logging.getLogger("ruleengine.audit").setLevel(logging.ERROR)  # every run creates stores: no warning each
    decisions, policy = sample_decisions()
    key = SigningKey.generate()
    print(f"{len(decisions)} distinct decisions, n = {args.n}")
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
        # -- append --------------------------------------------------------------------------------------------
        for sync in args.synchronous:
            one = bench_writer(os.path.join(tmp, f"w1-{sync}.sqlite3"), fresh(decisions, args.n), policy, key, sync, 1)
            many = bench_writer(os.path.join(tmp, f"wn-{sync}.sqlite3"), fresh(decisions, args.n), policy, key, sync,
                                args.threads)
            plain = bench_plain(os.path.join(tmp, f"plain-{sync}.sqlite3"), fresh(decisions, args.n), sync)
            print(f"append synchronous={sync:<6} 1 thread: {args.n / one:6.0f} rec/s   {args.threads} threads (group "
                  f"commit): {args.n / many:6.0f} rec/s   plain INSERT: {args.n / plain:6.0f} rec/s   ratio "
                  f"writer(1 thread)/plain time: {one / plain:4.2f}x")
        # -- verify --------------------------------------------------------------------------------------------
        with SqliteAuditStore(size_db, read_only=True) as store:
            t0 = time.perf_counter()
            report = store.verify(public_keys=[key.public])
            new = time.perf_counter() - t0
            assert report.ok, report.problems[:3]
            records = list(store.iter_all())
        old_t = old_verify_work(records)
        print(f"verify: {new / args.n * 1e5:6.1f} s per 100k records (measured on {args.n}, scaled)   old per-record "
              f"work: {old_t / args.n * 1e5:6.1f} s per 100k   ratio new/old: {new / old_t:4.2f}x")
        if args.postgres:
            pg = bench_writer(args.postgres, fresh(decisions, args.n), policy, key, "FULL", args.threads)
            pg1 = bench_writer(args.postgres, fresh(decisions, args.n), policy, key, "FULL", 1)
            print(f"postgresql append: 1 thread {args.n / pg1:6.0f} rec/s   {args.threads} threads {args.n / pg:6.0f} "
                  "rec/s")


if __name__ == "__main__":
    main()
