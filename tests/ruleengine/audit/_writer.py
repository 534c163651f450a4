"""Appending subprocess for the concurrency and kill -9 tests.

    python _writer.py STORE COUNT [--fresh-open] [--key KEYFILE] [--group N] [--threads T]

STORE is a path or a postgresql:// URL. Appends COUNT records (COUNT 0 = until killed) and prints
``committed <n> <id>`` after each commit, flushed, so the parent knows exactly which records were committed.
``--fresh-open`` goes through ``record_decision`` (opens the store per record, as `decide` does); otherwise one
AuditWriter stays open (as a service does). ``--group N``: N records per ``append_many`` (one transaction, one
signature, as `decide batch` does); ``--threads T``: T threads appending one record at a time through the one
writer (group commit, as the service does).
"""

from __future__ import annotations

import sys
import threading

from _factory import PLAN, SNAPSHOT, make_decision

from ruleengine.audit import AuditWriter, PolicySnapshot, record_decision, snapshot_hash
from ruleengine.decision import new_decision_id


def main() -> None:
    db, count = sys.argv[1], int(sys.argv[2])
    args = sys.argv[3:]
    fresh = "--fresh-open" in args
    key = args[args.index("--key") + 1] if "--key" in args else None
    group = int(args[args.index("--group") + 1]) if "--group" in args else 1
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else 1
    sha = snapshot_hash(SNAPSHOT)
    policy = PolicySnapshot(sha, SNAPSHOT)
    writer = None if fresh else AuditWriter(db, key_path=key, create=True)
    lock = threading.Lock()
    n = 0

    def report(ids: list[str]) -> None:
        nonlocal n
        with lock:
            for rid in ids:
                n += 1
                sys.stdout.write(f"committed {n} {rid}\n")
            sys.stdout.flush()

    def one(i: int) -> dict:
        method, rank, use_case = PLAN[i % len(PLAN)]
        return make_decision(method, rank, use_case=use_case, decision_id=new_decision_id())

    def loop(share: int) -> None:
        i = 0
        while share == 0 or i < share:
            if writer is None:
                report([record_decision(one(i), SNAPSHOT, sha, db_path=db, key_path=key)])
            elif group > 1:
                report(writer.append_many([(one(i + j), policy) for j in range(group)]))
            else:
                report([writer.append(one(i), policy)])
            i += group

    workers = [threading.Thread(target=loop, args=(count // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if writer is not None:
        writer.close()


if __name__ == "__main__":
    main()
