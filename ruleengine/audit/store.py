"""The audit storage interface (a Protocol), its verification report and its errors.

Any backend (the bundled one is ``SqliteAuditStore``) keeps decision records in an append-only,
hash-chained sequence, plus policy snapshots keyed by their sha256.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


class AuditError(Exception):
    """Base class for audit-trail errors. ``exit_code`` is the `decide` exit status it maps to."""

    exit_code = 2


class StoreUnavailable(AuditError):
    """The audit store cannot be used: the file is missing, unreadable, not SQLite, or not an audit store."""

    exit_code = 2


class NotAnAuditStore(StoreUnavailable):
    """The location holds a database that is not a finetune-policy audit store (another application's tables,
    or a newer store version): nothing is read from it and nothing is ever written into it."""

    exit_code = 2


class StoreNotWritable(StoreUnavailable):
    """A writer cannot append: the store is missing (and creating it was not asked for), read-only, vanished or
    was replaced under a running writer, or the database refused the write. ``decide`` exits 7."""

    exit_code = 7


class SigningKeyError(AuditError):
    """A signing or public key file is missing, unreadable, too widely readable, or not an Ed25519 key."""

    exit_code = 2


class RecordNotFound(AuditError):
    """No record has the requested id (or an id prefix matched none, or several)."""

    exit_code = 2


class InvalidRecord(AuditError):
    """A record handed to the store is malformed (not JSON-safe, fails the schema, inconsistent)."""

    exit_code = 4


@dataclass(frozen=True)
class Problem:
    """One verification failure. ``seq``/``record_id`` name the record (None for store-level problems);
    ``snapshot`` names a policy snapshot by sha256 for snapshot problems."""

    kind: str
    message: str
    seq: int | None = None
    record_id: str | None = None
    snapshot: str | None = None

    def render(self) -> str:
        """Return a one-line human-readable description naming the record or snapshot."""
        if self.snapshot is not None:
            where = f"policy snapshot {self.snapshot[:16]}"
        elif self.seq is not None:
            where = f"record seq {self.seq}" + (f" (id {self.record_id})" if self.record_id else "")
        else:
            where = "store"
        return f"{where}: {self.kind}: {self.message}"


@dataclass
class VerifyReport:
    """The outcome of ``verify``: ``ok`` is True when no problem was found.

    ``head_seq``/``head_hash`` identify the last record checked: publish them somewhere else (a ticket,
    a commit message) and pass them back as an anchor later to detect a rewritten chain.
    """

    source: str
    records_checked: int = 0
    snapshots_checked: int = 0
    head_seq: int = 0
    head_hash: str = ""
    problems: list[Problem] = field(default_factory=list)
    truncated: bool = False  # more problems existed than were kept
    signatures: dict[str, Any] = field(default_factory=dict)  # see ``ChainVerifier.check_signatures``
    bytes_hashed: bool = True  # False for JSONL: lines are proven canonical, then re-serialised for the hash

    @property
    def ok(self) -> bool:
        """Return True when the chain and every snapshot verified."""
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        """Return the first problem in chain order (record problems by seq, then store and snapshot ones)."""
        return self.problems[0] if self.problems else None

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-safe dict."""
        data = asdict(self)
        data["ok"] = self.ok
        return data


@dataclass(frozen=True)
class RecordFilter:
    """Filters for ``AuditStore.list``; every field None means "no constraint".

    ``method`` matches the verdict's method; the value ``"infeasible"`` matches decisions without one.
    """

    since: datetime | None = None
    policy: str | None = None
    method: str | None = None
    limit: int | None = None


@runtime_checkable
class AuditStore(Protocol):
    """An append-only, hash-chained store of decision records and the policy snapshots they used."""

    def append(self, record: dict) -> str:
        """Append ``record`` (an envelope from ``records.build_record``, without seq/prev_hash/record_hash),
        assigning seq and chaining it; return its id. The record's policy snapshot must be stored first
        (``put_policy_snapshot``). Raises InvalidRecord (malformed, duplicate id, snapshot not stored),
        AuditError (store busy beyond the retry budget) or StoreUnavailable."""
        ...

    def get(self, record_id: str) -> dict:
        """Return the full record (with seq, prev_hash, record_hash). Raises RecordNotFound."""
        ...

    def resolve_id(self, prefix: str) -> str:
        """Return the one record id equal to or starting with ``prefix``. Raises RecordNotFound if none
        or several match."""
        ...

    def list(self, filters: RecordFilter | None = None) -> list[dict]:
        """Return the matching records in seq order (oldest first), full records."""
        ...

    def iter_all(self) -> Iterator[dict]:
        """Yield every record in seq order (full records, chain fields included)."""
        ...

    def verify(self, anchor: tuple[int, str] | None = None, public_keys: Any = None, *,
               all_signatures: bool = False) -> VerifyReport:
        """Check the whole chain, its signed heads and every stored policy snapshot; ``public_keys`` (the
        auditor's ``signing.PublicKey``s) require every record to be covered by a valid signature. Returns a
        VerifyReport (never raises for tampering, only StoreUnavailable when the store cannot be read at all)."""
        ...

    def put_policy_snapshot(self, sha256: str, snapshot: dict) -> bool:
        """Store ``snapshot`` under ``sha256`` once; return True if it was new. Raises InvalidRecord when
        the snapshot's hash is not ``sha256``."""
        ...

    def get_policy_snapshot(self, sha256: str) -> dict:
        """Return the snapshot ``{"root", "files"}`` stored under ``sha256``. Raises RecordNotFound."""
        ...

    def close(self) -> None:
        """Release the store's resources; further calls are errors."""
        ...


@runtime_checkable
class WritableAuditStore(AuditStore, Protocol):
    """What ``AuditWriter`` needs of a backend beyond ``AuditStore`` (both bundled backends provide it)."""

    created: bool  # True when this open created the store

    def append_batch(self, batch: list, key: Any) -> list[str]:
        """Chain ``records.PreparedRecord``s in one transaction after the head, sign the new head with ``key``
        (a ``signing.SigningKey``, or None), commit; return their ids. Raises InvalidRecord, StoreNotWritable,
        AuditError (busy)."""
        ...

    def check_writable(self) -> None:
        """Raise StoreNotWritable unless an append could commit now; writes nothing."""
        ...

    def iter_signatures(self) -> Iterator[Any]:
        """Yield the stored head signatures (``records.SignatureRow``) in seq order."""
        ...
