"""Append throughput of the audit store (hash chain) against a plain INSERT baseline, in the same process.

    .venv/bin/python bench/bench_audit.py [--n 2000] [--synchronous FULL|NORMAL] [--dir DIR]

Both sides write the same decision records, one transaction per record (BEGIN IMMEDIATE ... COMMIT), to an
SQLite file in WAL mode with the same ``synchronous`` setting. The chained side is ``SqliteAuditStore.append``:
schema check, canonical JSON, sha256 chaining, reading the head, index columns, moving the head. The baseline is
``INSERT INTO plain(id, body)`` of ``json.dumps(record)``. Records are built before timing. The decision is a
real one from the default policy when the engine is importable, else a synthetic one of similar shape.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ruleengine.audit import SqliteAuditStore, build_record, snapshot_hash  # noqa: E402
from ruleengine.decision import new_decision_id  # noqa: E402


def sample_decision() -> tuple[dict, dict, str]:
    """Return (decision dict, policy snapshot, its sha256): real if the engine works, else synthetic."""
    try:
        from ruleengine.api import decide
        from ruleengine.policy import load_policy

        policy = load_policy(None)
        d = decide(policy, {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 1},
                            "data": {"examples": "50k"}, "task": {"use_case": "domain_qa"}}).to_dict()
        return d, policy.snapshot(), policy.sha256
    except Exception as exc:  # noqa: BLE001 - any failure means: use the synthetic decision
        print(f"(engine unavailable: {type(exc).__name__}: {exc}; using a synthetic decision)", file=sys.stderr)
    snapshot = {"root": "policy.yaml", "files": {"policy.yaml": "name: bench\n" * 50}}
    sha = snapshot_hash(snapshot)
    trace = [{"kind": "select", "rule": f"rule-{i}", "priority": i, "matched": i == 3, "fits": True,
              "conditions_hold": i == 3, "memory_gb": 17.25 + i, "usable_gb": 72.0, "method": "lora",
              "failed": {"fact": "data.examples", "op": ">=", "actual": 50000, "expected": 1e6, "margin": -950000}}
             for i in range(25)]
    d = {"schema_version": "1", "decision_id": new_decision_id(), "created_at": "2025-01-01T00:00:00.000Z",
         "policy": {"name": "bench", "version": "1.0.0", "sha256": sha},
         "facts": {"given": {"model": {"params": "7B"}}, "normalized": {"model": {"params": 7e9}}},
         "derived": {f"k{i}": i * 1.5 for i in range(60)}, "feasible": True,
         "verdict": {"method": "lora", "rank": 16, "training": {"epochs": 3}}, "chosen_rule": "rule-3",
         "matched_rules": ["rule-3"], "rejected": [{"method": m, "reason": "x" * 80} for m in "abcdefgh"],
         "warnings": [{"code": "w", "message": "m" * 60}], "trace": trace, "metrics": {"total_ms": 3.0}}
    return d, snapshot, sha


def make_records(n: int, decision: dict, sha: str) -> list[dict]:
    """Return ``n`` record envelopes of ``decision`` with fresh ids."""
    out = []
    for _ in range(n):
        d = dict(decision, decision_id=new_decision_id())
        out.append(build_record(d, sha))
    return out


def bench_chain(path: str, records: list[dict], snapshot: dict, sha: str, synchronous: str) -> float:
    """Return seconds to append ``records`` through SqliteAuditStore (excluding opening)."""
    with SqliteAuditStore(path, synchronous=synchronous) as store:
        store.put_policy_snapshot(sha, snapshot)
        t0 = time.perf_counter()
        for rec in records:
            store.append(rec)
        elapsed = time.perf_counter() - t0
        assert store.verify().ok
    return elapsed


def bench_plain(path: str, records: list[dict], synchronous: str) -> float:
    """Return seconds to INSERT ``records`` as plain JSON rows, one transaction each, same pragmas."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("CREATE TABLE plain (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")
    t0 = time.perf_counter()
    for rec in records:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO plain(id, body) VALUES (?, ?)", (rec["id"], json.dumps(rec)))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def main() -> None:
    """Run both benchmarks and print records/s for each and the chained/plain time ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="records per side (default 2000)")
    ap.add_argument("--synchronous", choices=["FULL", "NORMAL", "OFF"], nargs="+", default=["FULL", "NORMAL"],
                    help="SQLite synchronous settings to run (default: FULL NORMAL)")
    ap.add_argument("--dir", default=None, help="directory for the database files (default: a temp dir)")
    args = ap.parse_args()
    decision, snapshot, sha = sample_decision()
    print(f"record size: {len(json.dumps(make_records(1, decision, sha)[0]))} bytes of JSON, n = {args.n}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for sync in args.synchronous:
            records = make_records(args.n, decision, sha)
            chain = bench_chain(os.path.join(tmp, f"chain-{sync}.sqlite3"), records, snapshot, sha, sync)
            plain = bench_plain(os.path.join(tmp, f"plain-{sync}.sqlite3"), records, sync)
            print(f"synchronous={sync:<6}  chained: {args.n / chain:8.0f} rec/s ({chain / args.n * 1e3:6.3f} ms/rec)  "
                  f"plain INSERT: {args.n / plain:8.0f} rec/s ({plain / args.n * 1e3:6.3f} ms/rec)  "
                  f"ratio chained/plain time: {chain / plain:5.2f}x")


if __name__ == "__main__":
    main()
