"""Appending subprocess for the concurrency and kill -9 tests.

    python _writer.py DB COUNT [--fresh-open]

Appends COUNT records (COUNT 0 = until killed) and prints ``committed <n> <id>`` after each commit, flushed,
so the parent knows exactly which records were committed. ``--fresh-open`` goes through
``record_decision`` (opens the store per record, as `decide` does); otherwise one store stays open.
"""

from __future__ import annotations

import sys

from _factory import PLAN, SNAPSHOT, make_decision

from ruleengine.audit import SqliteAuditStore, build_record, record_decision, snapshot_hash
from ruleengine.decision import new_decision_id


def main() -> None:
    db, count = sys.argv[1], int(sys.argv[2])
    fresh = "--fresh-open" in sys.argv[3:]
    sha = snapshot_hash(SNAPSHOT)
    store = None if fresh else SqliteAuditStore(db, create=True)
    if store is not None:
        store.put_policy_snapshot(sha, SNAPSHOT)
    n = 0
    while count == 0 or n < count:
        method, rank, use_case = PLAN[n % len(PLAN)]
        decision = make_decision(method, rank, use_case=use_case, decision_id=new_decision_id())
        if store is None:
            rid = record_decision(decision, SNAPSHOT, sha, db_path=db)
        else:
            rid = store.append(build_record(decision, sha))
        n += 1
        sys.stdout.write(f"committed {n} {rid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
