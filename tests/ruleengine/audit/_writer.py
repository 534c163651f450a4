"""Appending subprocess for the concurrency and kill -9 tests.

    python _writer.py STORE COUNT [--fresh-open] [--key KEYFILE]

STORE is a path or a postgresql:// URL. Appends COUNT records (COUNT 0 = until killed) and prints
``committed <n> <id>`` after each commit, flushed, so the parent knows exactly which records were committed.
``--fresh-open`` goes through ``record_decision`` (opens the store per record, as `decide` does); otherwise one
AuditWriter stays open (as a service does).
"""

from __future__ import annotations

import sys

from _factory import PLAN, SNAPSHOT, make_decision

from ruleengine.audit import AuditWriter, PolicySnapshot, record_decision, snapshot_hash
from ruleengine.decision import new_decision_id


def main() -> None:
    db, count = sys.argv[1], int(sys.argv[2])
    args = sys.argv[3:]
    fresh = "--fresh-open" in args
    key = args[args.index("--key") + 1] if "--key" in args else None
    sha = snapshot_hash(SNAPSHOT)
    policy = PolicySnapshot(sha, SNAPSHOT)
    writer = None if fresh else AuditWriter(db, key_path=key, create=True)
    n = 0
    while count == 0 or n < count:
        method, rank, use_case = PLAN[n % len(PLAN)]
        decision = make_decision(method, rank, use_case=use_case, decision_id=new_decision_id())
        if writer is None:
            rid = record_decision(decision, SNAPSHOT, sha, db_path=db, key_path=key)
        else:
            rid = writer.append(decision, policy)
        n += 1
        sys.stdout.write(f"committed {n} {rid}\n")
        sys.stdout.flush()
    if writer is not None:
        writer.close()


if __name__ == "__main__":
    main()
