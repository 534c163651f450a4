"""The audit trail: tamper-evident decision records, their policy snapshots, verification and replay.

Entry point for ``decide``::

    from ruleengine.audit import record_decision
    record_id = record_decision(decision.to_dict(), policy.snapshot(), policy.sha256)

A service keeps one ``AuditWriter`` open (group commit, signed heads, ``check_writable`` for readiness).

The store is ``db_path`` if given, else ``$FINETUNE_POLICY_AUDIT_DB``, else
``~/.local/share/finetune-policy/audit.sqlite3``: a path or ``sqlite:///path`` (SQLite), or
``postgresql://...``. See docs/audit.md.
"""

from __future__ import annotations

import os
from typing import Any

from .location import ENV_DB, StoreLocation, default_db_path, parse_location
from .records import (
    GENESIS_HASH,
    RECORD_VERSION,
    build_record,
    canonical_json,
    compute_record_hash,
    prepare_record,
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
    NotAnAuditStore,
    Problem,
    RecordFilter,
    RecordNotFound,
    SigningKeyError,
    StoreNotWritable,
    StoreUnavailable,
    VerifyReport,
)
from .writer import AuditWriter, PolicySnapshot

__all__ = [
    "ENV_DB", "GENESIS_HASH", "RECORD_VERSION", "AuditError", "AuditStore", "AuditWriter", "InvalidRecord",
    "NotAnAuditStore", "PolicySnapshot", "Problem", "RecordFilter", "RecordNotFound", "SigningKeyError",
    "SqliteAuditStore", "StoreLocation", "StoreNotWritable", "StoreUnavailable", "VerifyReport", "build_record",
    "canonical_json", "compute_record_hash", "default_db_path", "open_store", "parse_location", "prepare_record",
    "record_decision", "snapshot_hash", "summarize", "verify_jsonl", "write_jsonl",
]


def open_store(db_path: str | os.PathLike | None = None, *, create: bool = False,
               read_only: bool | None = None) -> Any:
    """Return the audit store at ``db_path`` (a path, ``sqlite:///path`` or ``postgresql://...``; None =
    ``default_db_path()``): a SqliteAuditStore or a PostgresAuditStore.

    Read-only unless ``create`` or ``read_only=False`` is given: the store must exist, and nothing is written
    (SQLite ``mode=ro``, PostgreSQL read-only transactions), so a user without write permission can use it.
    Raises StoreUnavailable when it is missing or unreadable, NotAnAuditStore for another application's
    database, StoreNotWritable when a writable open fails.
    """
    location = parse_location(db_path if db_path is not None else default_db_path())
    ro = (not create) if read_only is None else read_only
    if location.kind == "postgresql":
        from .postgres_store import PostgresAuditStore

        return PostgresAuditStore(str(location.url), create=create, read_only=ro)
    return SqliteAuditStore(str(location.path), create=create, read_only=ro)


def record_decision(decision: dict, policy_snapshot: dict, policy_sha256: str, *,
                    db_path: str | None = None, key_path: str | None = None) -> str:
    """Record one decision in the audit store and return its record id (the decision's ``decision_id``).

    One-shot use (the CLI): opens an ``AuditWriter``, appends, closes. ``decision`` is ``Decision.to_dict()``;
    ``policy_snapshot`` is ``policy.snapshot()`` and ``policy_sha256`` its hash. ``db_path`` None means
    ``default_db_path()``; the store is **created** if missing (the first decision creates it; a long-running
    service should hold one AuditWriter instead, which never re-creates a vanished store). ``key_path`` None
    means ``$FINETUNE_POLICY_AUDIT_KEY`` (unsigned when unset).

    Raises InvalidRecord when the decision is not JSON-safe, lacks a ULID ``decision_id``, was already recorded,
    or the snapshot does not hash to ``policy_sha256``; StoreNotWritable / NotAnAuditStore when the store cannot
    be created or written; SigningKeyError for a bad key file; AuditError when it stays locked beyond the retry
    budget (120 s).
    """
    with AuditWriter(db_path, key_path=key_path, create=True) as writer:
        return writer.append(decision, PolicySnapshot(policy_sha256, policy_snapshot))
