"""The SQLite audit store: WAL mode, one hash-chained ``records`` table, one ``policy_snapshots`` table.

Concurrency: every append is one ``BEGIN IMMEDIATE`` transaction (read the chain head, insert, move the head),
so writers from any number of processes serialize on SQLite's write lock; ``busy_timeout`` waits for the lock
and a retry loop with jittered backoff covers the cases SQLite reports as busy anyway. A process killed
mid-append leaves its transaction uncommitted, which SQLite rolls back on the next open: every committed record
stays intact and the chain stays valid. ``synchronous=FULL`` (the default) also keeps committed records across
power loss.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .records import (
    GENESIS_HASH,
    INDEX_COLUMNS,
    ChainVerifier,
    canonical_json,
    hash_canonical_text,
    index_columns,
    schema_errors,
    snapshot_hash,
    utc_now_iso,
)
from .store import AuditError, InvalidRecord, RecordFilter, RecordNotFound, StoreUnavailable, VerifyReport

STORE_VERSION = "1"
T = TypeVar("T")

_DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    seq           INTEGER PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    recorded_at   TEXT NOT NULL,
    policy_name   TEXT,
    policy_sha256 TEXT NOT NULL,
    method        TEXT,
    feasible      INTEGER,
    body          TEXT NOT NULL,
    prev_hash     TEXT NOT NULL,
    record_hash   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_recorded_at ON records(recorded_at);
CREATE INDEX IF NOT EXISTS records_policy_name ON records(policy_name);
CREATE INDEX IF NOT EXISTS records_method ON records(method);
CREATE TABLE IF NOT EXISTS policy_snapshots (
    sha256    TEXT PRIMARY KEY,
    snapshot  TEXT NOT NULL,
    stored_at TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS records_append_only_update BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_append_only_delete BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS snapshots_append_only_update BEFORE UPDATE ON policy_snapshots
    BEGIN SELECT RAISE(ABORT, 'policy snapshots are append-only'); END;
CREATE TRIGGER IF NOT EXISTS snapshots_append_only_delete BEFORE DELETE ON policy_snapshots
    BEGIN SELECT RAISE(ABORT, 'policy snapshots are append-only'); END;
"""
GUARD_TRIGGERS = ("records_append_only_update", "records_append_only_delete",
                  "snapshots_append_only_update", "snapshots_append_only_delete")
_COLUMNS = "seq, " + ", ".join(INDEX_COLUMNS) + ", body, prev_hash, record_hash"


def _is_busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class SqliteAuditStore:
    """An ``AuditStore`` in one SQLite file (WAL mode). Use as a context manager or call ``close()``.

    ``create=False`` opens an existing store only (read commands): a missing file raises StoreUnavailable
    instead of creating an empty store.
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True, busy_timeout_s: float = 30.0,
                 retry_deadline_s: float = 120.0, synchronous: str = "FULL"):
        """Open (and with ``create``, initialize) the store at ``path``.

        Raises StoreUnavailable when the file is missing (``create=False``), cannot be created, is not an
        SQLite database, or is an SQLite database that is not an audit store (or a newer store version).
        """
        self.path = str(path)
        self.retry_deadline_s = retry_deadline_s
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        p = Path(self.path)
        if not create and not p.is_file():
            what = "is not a file" if p.exists() else "does not exist"
            raise StoreUnavailable(f"audit store {self.path} {what} (record a decision first, or pass --db / "
                                   "set FINETUNE_POLICY_AUDIT_DB)")
        if create:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(f"cannot create the directory for audit store {self.path}: {exc}") from None
        uri = p.absolute().as_uri() + ("?mode=rwc" if create else "?mode=rw")
        try:
            self._conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open audit store {self.path}: {exc}") from None
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            if create:
                self._retry(lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone())
            self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            self._init_schema(create)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreUnavailable(f"audit store {self.path} is not a readable SQLite database: {exc}") from None
        except AuditError:
            self._conn.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------------------------

    def __enter__(self) -> SqliteAuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
            self._conn = None  # type: ignore[assignment]

    def _retry(self, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_deadline_s
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside one BEGIN IMMEDIATE transaction, retrying while the database is busy."""
        conn = self._conn

        def attempt() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        try:
            return self._retry(attempt)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise AuditError(f"audit store {self.path} stayed locked for {self.retry_deadline_s:.0f} s: {exc}") \
                    from None
            raise StoreUnavailable(f"audit store {self.path}: {exc}") from None

    def _init_schema(self, create: bool) -> None:
        have = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"meta", "records", "policy_snapshots"} <= have:
            if not create:
                raise StoreUnavailable(f"{self.path} is an SQLite database but not a finetune-policy audit store "
                                       "(no records table)")

            def init(conn: sqlite3.Connection) -> None:
                for statement in _DDL.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('store_version', ?)", (STORE_VERSION,))
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('head_seq', '0')")
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('head_hash', ?)", (GENESIS_HASH,))
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)", (utc_now_iso(),))

            self._write(init)
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()
        if row is None:
            raise StoreUnavailable(f"audit store {self.path} has no store_version: not a finetune-policy audit store")
        if row[0] != STORE_VERSION:
            raise StoreUnavailable(f"audit store {self.path} has store version {row[0]}; this finetune-policy reads "
                                   f"version {STORE_VERSION}")

    @staticmethod
    def _row_to_record(row: tuple) -> dict:
        body = json.loads(row[-3])
        body["prev_hash"] = row[-2]
        body["record_hash"] = row[-1]
        return body

    def _decode(self, row: tuple) -> dict:
        try:
            record = self._row_to_record(row)
        except (ValueError, TypeError) as exc:
            raise StoreUnavailable(f"record seq {row[0]} in audit store {self.path} is unreadable ({exc}); "
                                   "run `decide audit verify`") from None
        return record

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"audit store {self.path}: {exc}") from None

    # -- AuditStore -------------------------------------------------------------------------------------------

    def append(self, record: dict) -> str:
        """Append a record envelope (``records.build_record``), assigning seq, prev_hash and record_hash in one
        BEGIN IMMEDIATE transaction; return the record id.

        Raises InvalidRecord (already chained, fails the schema, duplicate id, its policy snapshot not stored
        yet), AuditError (still locked after
        the retry budget) or StoreUnavailable (I/O or database errors).
        """
        if any(k in record for k in ("seq", "prev_hash", "record_hash")):
            raise InvalidRecord("append takes an envelope without seq/prev_hash/record_hash; the store chains it")
        errors = schema_errors(record)
        if errors:
            raise InvalidRecord("the record does not match schemas/decision-record.schema.json: " + "; ".join(errors[:5]))
        base = dict(record)

        sha = base["policy"]["sha256"]

        def insert(conn: sqlite3.Connection) -> str:
            if conn.execute("SELECT 1 FROM policy_snapshots WHERE sha256 = ?", (sha,)).fetchone() is None:
                raise InvalidRecord(f"policy snapshot {sha} is not in the store: put_policy_snapshot it first, so "
                                    "the record can be replayed")
            row = conn.execute("SELECT seq, record_hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS_HASH)
            body = dict(base, seq=seq)
            text = canonical_json(body)
            record_hash = hash_canonical_text(text, prev)
            cols = index_columns(body)
            conn.execute(f"INSERT INTO records ({_COLUMNS}) VALUES ({', '.join('?' * (len(INDEX_COLUMNS) + 4))})",
                         (seq, *[cols[c] for c in INDEX_COLUMNS], text, prev, record_hash))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'head_seq'", (str(seq),))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'head_hash'", (record_hash,))
            return str(body["id"])

        try:
            return self._write(insert)
        except sqlite3.IntegrityError as exc:
            raise InvalidRecord(f"record {record.get('id')} is already in the audit store ({exc})") from None

    def get(self, record_id: str) -> dict:
        """Return the full record with this exact id. Raises RecordNotFound."""
        rows = self._query(f"SELECT {_COLUMNS} FROM records WHERE id = ?", (record_id,))
        if not rows:
            raise RecordNotFound(f"no record with id {record_id} in audit store {self.path}")
        return self._decode(rows[0])

    def resolve_id(self, prefix: str) -> str:
        """Return the id equal to ``prefix`` or the only one starting with it (case-insensitive).

        Raises RecordNotFound when none or several records match.
        """
        key = prefix.strip().upper()
        if not key or not key.isalnum():
            raise RecordNotFound(f"{prefix!r} is not a record id (26 characters, 0-9 A-Z)")
        rows = self._query("SELECT id FROM records WHERE id >= ? AND id < ? ORDER BY id LIMIT 6",
                           (key, key + "\x7f"))
        ids = [r[0] for r in rows]
        if key in ids:
            return key
        if not ids:
            raise RecordNotFound(f"no record with id {prefix} in audit store {self.path}")
        if len(ids) > 1:
            more = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            raise RecordNotFound(f"id prefix {prefix} is ambiguous: {more}")
        return ids[0]

    def list(self, filters: RecordFilter | None = None) -> list[dict]:
        """Return matching full records in seq order; with ``filters.limit``, the newest ``limit`` of them."""
        f = filters or RecordFilter()
        where: list[str] = []
        params: list[Any] = []
        if f.since is not None:
            where.append("recorded_at >= ?")
            params.append(utc_now_iso(f.since))
        if f.policy is not None:
            where.append("policy_name = ?")
            params.append(f.policy)
        if f.method is not None:
            if f.method == "infeasible":
                where.append("method IS NULL")
            else:
                where.append("method = ?")
                params.append(f.method)
        sql = f"SELECT {_COLUMNS} FROM records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if f.limit is not None:
            sql += " ORDER BY seq DESC LIMIT ?"
            params.append(int(f.limit))
            rows = list(reversed(self._query(sql, tuple(params))))
        else:
            rows = self._query(sql + " ORDER BY seq", tuple(params))
        return [self._decode(r) for r in rows]

    def iter_all(self) -> Iterator[dict]:
        """Yield every record in seq order (one consistent snapshot of the store)."""
        try:
            cursor = self._conn.execute(f"SELECT {_COLUMNS} FROM records ORDER BY seq")
            for row in cursor:
                yield self._decode(row)
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"audit store {self.path}: {exc}") from None

    def count(self) -> int:
        """Return the number of records."""
        return int(self._query("SELECT COUNT(*) FROM records")[0][0])

    def head(self) -> tuple[int, str]:
        """Return (seq, record_hash) of the last record, or (0, GENESIS_HASH) for an empty store."""
        rows = self._query("SELECT seq, record_hash FROM records ORDER BY seq DESC LIMIT 1")
        return (int(rows[0][0]), rows[0][1]) if rows else (0, GENESIS_HASH)

    def put_policy_snapshot(self, sha256: str, snapshot: dict) -> bool:
        """Store ``snapshot`` under ``sha256`` unless present; return True if it was new.

        Raises InvalidRecord when ``snapshot`` does not hash to ``sha256``.
        """
        actual = snapshot_hash(snapshot)
        if actual != sha256:
            raise InvalidRecord(f"the policy snapshot hashes to {actual}, not {sha256}")
        if self._query("SELECT 1 FROM policy_snapshots WHERE sha256 = ?", (sha256,)):
            return False
        text = canonical_json({"root": snapshot["root"], "files": snapshot["files"]})

        def insert(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("INSERT OR IGNORE INTO policy_snapshots(sha256, snapshot, stored_at) VALUES (?, ?, ?)",
                               (sha256, text, utc_now_iso()))
            return cur.rowcount == 1

        return self._write(insert)

    def get_policy_snapshot(self, sha256: str) -> dict:
        """Return the snapshot ``{"root", "files"}`` stored under ``sha256``.

        Raises RecordNotFound when absent, StoreUnavailable when the stored text is not JSON.
        """
        rows = self._query("SELECT snapshot FROM policy_snapshots WHERE sha256 = ?", (sha256,))
        if not rows:
            raise RecordNotFound(f"no policy snapshot {sha256} in audit store {self.path}")
        try:
            return json.loads(rows[0][0])
        except json.JSONDecodeError as exc:
            raise StoreUnavailable(f"policy snapshot {sha256} in {self.path} is not JSON: {exc}") from None

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyReport:
        """Check every record (contiguous seq, body vs index columns, schema, link, hash), the head kept in
        ``meta``, the append-only triggers, every policy snapshot's hash, and that every record's snapshot is
        stored. ``anchor`` (seq, record_hash) noted earlier must still be in the chain.

        Returns a VerifyReport whose ``problems`` list the failures in chain order. Raises StoreUnavailable
        only when SQLite itself cannot read the file.
        """
        verifier = ChainVerifier(source=self.path, anchor=anchor)
        conn = self._conn
        try:
            conn.execute("BEGIN")  # one read snapshot while writers go on
            try:
                quick = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
                if quick != ["ok"]:
                    verifier.problem("sqlite-corruption", "; ".join(quick[:3]))
                referenced: dict[str, tuple[int, str]] = {}
                for row in conn.execute(f"SELECT {_COLUMNS} FROM records ORDER BY seq"):
                    seq = row[0]
                    columns = dict(zip(INDEX_COLUMNS, row[1:1 + len(INDEX_COLUMNS)], strict=True))
                    try:
                        record = self._row_to_record(row)
                        if not isinstance(record, dict):
                            raise ValueError("the body is not a JSON object")
                    except (ValueError, TypeError) as exc:
                        verifier.feed(seq, None, stored_hash=row[-1], error=f"body is not a JSON object: {exc}")
                        continue
                    verifier.feed(seq, record, columns=columns)
                    if isinstance(columns["policy_sha256"], str):
                        referenced.setdefault(columns["policy_sha256"], (seq, str(columns["id"])))
                self._verify_meta(conn, verifier)
                self._verify_snapshots(conn, verifier, referenced)
            finally:
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"audit store {self.path} cannot be read: {exc}") from None
        return verifier.finish()

    @staticmethod
    def _verify_meta(conn: sqlite3.Connection, verifier: ChainVerifier) -> None:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        head_seq, head_hash = verifier.report.head_seq, verifier.report.head_hash or GENESIS_HASH
        if meta.get("head_seq") != str(head_seq) or meta.get("head_hash") != head_hash:
            verifier.problem("head-mismatch", f"the store's head is seq {meta.get('head_seq')} "
                                              f"({str(meta.get('head_hash'))[:16]}...) but the chain ends at seq "
                                              f"{head_seq} ({head_hash[:16]}...): records were removed from the end "
                                              "or the head was edited")
        triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        missing = [t for t in GUARD_TRIGGERS if t not in triggers]
        if missing:
            verifier.problem("guard-removed", "append-only trigger(s) dropped: " + ", ".join(missing))

    @staticmethod
    def _verify_snapshots(conn: sqlite3.Connection, verifier: ChainVerifier,
                          referenced: dict[str, tuple[int, str]]) -> None:
        stored: set[str] = set()
        for sha, text in conn.execute("SELECT sha256, snapshot FROM policy_snapshots ORDER BY sha256"):
            verifier.report.snapshots_checked += 1
            stored.add(sha)
            try:
                actual = snapshot_hash(json.loads(text))
            except (ValueError, TypeError, InvalidRecord) as exc:
                verifier.problem("snapshot-unreadable", f"not a policy snapshot: {exc}", snapshot=sha)
                continue
            if actual != sha:
                verifier.problem("snapshot-hash-mismatch", f"content hashes to {actual[:16]}...: the stored policy "
                                                           "files were edited", snapshot=sha)
        for sha, (seq, rid) in sorted(referenced.items(), key=lambda kv: kv[1][0]):
            if sha not in stored:
                verifier.problem("snapshot-missing", f"policy snapshot {sha[:16]}... used by this record is not "
                                                     "stored: it was deleted", seq=seq, record_id=rid)

    def stats(self) -> dict[str, Any]:
        """Return counts and the head: records, snapshots, head_seq, head_hash, path."""
        seq, head = self.head()
        return {"path": self.path, "records": self.count(), "snapshots":
                int(self._query("SELECT COUNT(*) FROM policy_snapshots")[0][0]), "head_seq": seq, "head_hash": head}
