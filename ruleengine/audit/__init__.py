"""The audit trail: tamper-evident decision records, their policy snapshots, verification and replay.

Entry point for ``decide``::

    from ruleengine.audit import record_decision
    record_id = record_decision(decision.to_dict(), policy.snapshot(), policy.sha256)

The store is an SQLite file: ``db_path`` if given, else ``$FINETUNE_POLICY_AUDIT_DB``, else
``~/.local/share/finetune-policy/audit.sqlite3``. See docs/audit.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from .records import (
    GENESIS_HASH,
    RECORD_VERSION,
    build_record,
    canonical_json,
    compute_record_hash,
    snapshot_hash,
    summarize,
    verify_jsonl,
    write_jsonl,
)
from .sqlite_store import SqliteAuditStore
from .store import (
    AuditError,
    AuditStore,
    InvalidRecord,
    Problem,
    RecordFilter,
    RecordNotFound,
    StoreUnavailable,
    VerifyReport,
)

ENV_DB = "FINETUNE_POLICY_AUDIT_DB"

__all__ = [
    "ENV_DB", "GENESIS_HASH", "RECORD_VERSION", "AuditError", "AuditStore", "InvalidRecord", "Problem",
    "RecordFilter", "RecordNotFound", "SqliteAuditStore", "StoreUnavailable", "VerifyReport", "build_record",
    "canonical_json", "compute_record_hash", "default_db_path", "open_store", "record_decision", "snapshot_hash",
    "summarize", "verify_jsonl", "write_jsonl",
]


def default_db_path() -> str:
    """Return the audit store path used when none is given.

    ``$FINETUNE_POLICY_AUDIT_DB`` if set and non-empty (``~`` expanded), else
    ``~/.local/share/finetune-policy/audit.sqlite3``. Never raises.
    """
    env = os.environ.get(ENV_DB)
    if env:
        return os.path.expanduser(env)
    return os.path.join(Path.home(), ".local", "share", "finetune-policy", "audit.sqlite3")


def open_store(db_path: str | os.PathLike | None = None, *, create: bool = False) -> SqliteAuditStore:
    """Return the SQLite audit store at ``db_path`` (None = ``default_db_path()``).

    With ``create=False`` (for reading) the file must already exist. Raises StoreUnavailable when it is
    missing, not SQLite, or not an audit store.
    """
    path = os.fspath(db_path) if db_path is not None else default_db_path()
    return SqliteAuditStore(path, create=create)


def record_decision(decision: dict, policy_snapshot: dict, policy_sha256: str, *,
                    db_path: str | None = None) -> str:
    """Record one decision in the audit store and return its record id (the decision's ``decision_id``).

    ``decision`` is ``Decision.to_dict()``; ``policy_snapshot`` is ``policy.snapshot()`` and ``policy_sha256``
    its hash (``policy.sha256``). The snapshot is stored once per hash, then the record is appended to the
    hash chain in one transaction. ``db_path`` None means ``default_db_path()`` (the store is created if
    missing).

    Raises InvalidRecord when the decision is not JSON-safe, lacks a ULID ``decision_id``, was already recorded,
    or the snapshot does not hash to ``policy_sha256``; StoreUnavailable when the store cannot be opened or
    written; AuditError when it stays locked by other writers beyond the retry budget (120 s).
    """
    record = build_record(decision, policy_sha256)
    with SqliteAuditStore(db_path if db_path is not None else default_db_path(), create=True) as store:
        store.put_policy_snapshot(policy_sha256, policy_snapshot)
        return store.append(record)
