"""``AuditWriter``: a long-lived, thread-safe writer for a service (open once, append many, group commit).

    writer = AuditWriter("postgresql://audit@db/audit", key_path="/etc/finetune-policy/audit.key", create=True)
    record_id = writer.append(decision.to_dict(), policy)   # returns once the record is committed and signed
    writer.check_writable()                                 # for /readyz: raises StoreNotWritable
    writer.close()

Group commit: a thread that appends while another thread's transaction is in flight queues its record; the
next transaction takes every queued record (up to ``max_batch``), chains them, signs the new head once and
commits, and each caller returns when its own record is committed. A lone caller commits alone, so a returned
record id is always durable (per the store's ``synchronous`` setting). If a batch fails, its records are
retried one by one, so one bad record fails only its own caller.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .location import StoreLocation, parse_location
from .records import PreparedRecord, prepare_record
from .signing import SigningKey, default_key_path
from .store import AuditError, StoreNotWritable


class PolicyLike(Protocol):
    """What the writer needs of a policy: its content hash and its snapshot (``ruleengine.policy.Policy``)."""

    @property
    def sha256(self) -> str: ...

    def snapshot(self) -> dict: ...


@dataclass(frozen=True)
class PolicySnapshot:
    """A policy given as its snapshot ``{"root", "files"}`` and sha256 (what ``record_decision`` receives)."""

    sha256: str
    files: dict = field(hash=False)

    def snapshot(self) -> dict:
        """Return the snapshot dict."""
        return self.files


@dataclass
class _Pending:
    records: list[PreparedRecord]
    ids: list[str] | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.ids is not None or self.error is not None


def open_writable_store(location: StoreLocation, *, create: bool, synchronous: str = "FULL") -> Any:
    """Open the store at ``location`` for appending. Raises StoreNotWritable / NotAnAuditStore / StoreUnavailable."""
    if location.kind == "postgresql":
        from .postgres_store import PostgresAuditStore

        return PostgresAuditStore(str(location.url), create=create)
    from .sqlite_store import SqliteAuditStore

    return SqliteAuditStore(str(location.path), create=create, synchronous=synchronous)


class AuditWriter:
    """Appends decisions to one audit store, signing chain heads when it holds a key.

    ``location``: a path, ``sqlite:///path`` or ``postgresql://...`` (None = ``default_db_path()``).
    ``key_path``: the Ed25519 private key file (None = ``$FINETUNE_POLICY_AUDIT_KEY`` if set, else unsigned;
    pass ``key`` to give a loaded SigningKey). ``create``: create the store when it does not exist (otherwise a
    missing store is an error, and a store deleted while the writer runs is never re-created).

    Raises StoreNotWritable (exit 7), NotAnAuditStore, StoreUnavailable or SigningKeyError when opening.
    """

    def __init__(self, location: str | os.PathLike | None = None, *, key_path: str | None = None,
                 key: SigningKey | None = None, create: bool = False, synchronous: str = "FULL",
                 max_batch: int = 256):
        from .location import default_db_path

        self.location = parse_location(location if location is not None else default_db_path())
        if key is None:
            path = key_path if key_path is not None else default_key_path()
            key = SigningKey.load(path) if path else None
        self.key = key
        self.max_batch = max(1, int(max_batch))
        self.store = open_writable_store(self.location, create=create, synchronous=synchronous)
        if getattr(self.store, "created", False):
            # never silent: a store that vanished and comes back empty must be noticed (the chain restarts at 1)
            logging.getLogger("ruleengine.audit").warning("created a new, empty audit store at %s",
                                                          self.location.display())
        self._cond = threading.Condition(threading.Lock())
        self._store_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._committing = False
        self._closed = False
        self._snapshots: set[str] = set()
        self.last_error: BaseException | None = None

    # -- appending --------------------------------------------------------------------------------------------

    def append(self, decision: dict, policy: PolicyLike) -> str:
        """Record one decision (``Decision.to_dict()``) made under ``policy``; return its record id once committed.

        Raises InvalidRecord (not JSON-safe, no ULID, schema, already recorded, snapshot mismatch),
        StoreNotWritable (the store vanished, was replaced or refuses writes) or AuditError (locked too long).
        """
        return self.append_many([(decision, policy)])[0]

    def append_many(self, items: Iterable[tuple[dict, PolicyLike]]) -> list[str]:
        """Record several decisions in one transaction (one signature); return their ids in order.

        Raises like ``append``; on error none of them is recorded.
        """
        prepared = []
        for decision, policy in items:
            self._ensure_snapshot(policy)
            prepared.append(prepare_record(decision, policy.sha256))
        if not prepared:
            return []
        return self._commit(_Pending(prepared))

    def append_prepared(self, records: list[PreparedRecord]) -> list[str]:
        """Chain already prepared records (their snapshots stored); return their ids. Raises like ``append``."""
        return self._commit(_Pending(list(records)))

    def ensure_snapshot(self, policy: PolicyLike) -> None:
        """Store ``policy``'s snapshot once (before ``append_prepared`` of its records). Raises like ``append``."""
        self._ensure_snapshot(policy)

    def _ensure_snapshot(self, policy: PolicyLike) -> None:
        sha = policy.sha256
        if sha in self._snapshots:
            return
        with self._store_lock:
            self._check_open()
            self.store.put_policy_snapshot(sha, policy.snapshot())
        self._snapshots.add(sha)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreNotWritable(f"the audit writer for {self.location.display()} is closed")

    def _commit(self, pending: _Pending) -> list[str]:
        with self._cond:
            self._check_open()
            self._queue.append(pending)
            while not pending.done:
                if self._committing:
                    self._cond.wait()
                    continue
                batch: list[_Pending] = []
                size = 0
                while self._queue and (not batch or size + len(self._queue[0].records) <= self.max_batch):
                    item = self._queue.pop(0)
                    batch.append(item)
                    size += len(item.records)
                self._committing = True
                self._cond.release()
                try:
                    self._run_batch(batch)
                finally:
                    self._cond.acquire()
                    self._committing = False
                    self._cond.notify_all()
        if pending.error is not None:
            raise pending.error
        assert pending.ids is not None
        return pending.ids

    def _run_batch(self, batch: list[_Pending]) -> None:
        flat = [r for p in batch for r in p.records]
        try:
            with self._store_lock:
                ids = self.store.append_batch(flat, self.key)
        except BaseException as exc:  # noqa: BLE001 - handed to the callers
            self.last_error = exc
            if len(batch) == 1:
                batch[0].error = exc
                return
            for p in batch:  # isolate the bad record: each caller gets its own outcome
                try:
                    with self._store_lock:
                        p.ids = self.store.append_batch(p.records, self.key)
                except BaseException as one:  # noqa: BLE001
                    p.error = one
            return
        self.last_error = None
        i = 0
        for p in batch:
            p.ids = ids[i:i + len(p.records)]
            i += len(p.records)

    # -- health -----------------------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Raise StoreNotWritable unless an append could commit now: open, same file (SQLite) or reachable
        database (PostgreSQL), write lock grantable. Writes nothing. For a readiness probe: fail closed."""
        with self._store_lock:
            self._check_open()
            self.store.check_writable()

    def healthy(self) -> tuple[bool, str]:
        """Return ``(True, "ok")`` or ``(False, why)`` from ``check_writable``; never raises."""
        try:
            self.check_writable()
        except AuditError as exc:
            return False, str(exc)
        except Exception as exc:  # noqa: BLE001 - a probe reports, it does not crash
            return False, f"{type(exc).__name__}: {exc}"
        return True, "ok"

    def close(self) -> None:
        """Wait for queued appends, then close the store (idempotent)."""
        with self._cond:
            while self._queue or self._committing:
                self._cond.wait()
            if self._closed:
                return
            self._closed = True
        with self._store_lock:
            self.store.close()

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
