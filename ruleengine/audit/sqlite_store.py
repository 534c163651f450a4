"""The SQLite audit store: one file in WAL mode, a hash-chained ``records`` table, policy snapshots,
compression dictionaries and signed chain heads.

Opening: ``read_only=True`` opens with SQLite's ``mode=ro`` (falling back to ``immutable=1`` when the directory
is not writable and no write-ahead log exists, so an auditor with read permission only can verify a copy);
a writer opens ``mode=rw`` and creates the file only with ``create=True``. A database that is not an audit store
(other tables, no ``application_id``/``meta`` marker) is refused and never written to. A writer remembers the
file's device and inode and refuses to write once the file was deleted or replaced under it, so a running
service never starts a new chain at seq 1 in a re-created file.

Concurrency: every append is one ``BEGIN IMMEDIATE`` transaction (read the chain head, insert, move the head,
sign), so writers from any number of processes serialize on SQLite's write lock; ``busy_timeout`` waits for the
lock and a retry loop with jittered backoff covers the cases SQLite reports as busy anyway. A process killed
mid-append leaves its transaction uncommitted, which SQLite rolls back on the next open.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .chain import (
    READABLE_VERSIONS,
    SQLITE_APPLICATION_ID,
    STORE_KIND,
    STORE_VERSION,
    ChainedRow,
    Dictionary,
    chain_batch,
    check_dictionaries,
    check_snapshots,
    guard_problem,
    head_problem,
    new_dictionary,
    sign_head,
    verify_walk,
)
from .codec import CodecError, decode
from .records import (
    GENESIS_HASH,
    INDEX_COLUMNS,
    ChainVerifier,
    DuplicateKey,
    PreparedRecord,
    SignatureRow,
    canonical_json,
    snapshot_hash,
    strict_loads,
    utc_now_iso,
)
from .signing import PublicKey, SigningKey
from .store import (
    AuditError,
    InvalidRecord,
    NotAnAuditStore,
    RecordFilter,
    RecordNotFound,
    StoreNotWritable,
    StoreUnavailable,
    VerifyReport,
)

T = TypeVar("T")
PAGE_SIZE = 16384  # set when a store is created (see _initialize): ~12 % smaller files than 4 KB pages

_TABLES = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE records (
    seq           INTEGER PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    recorded_at   TEXT NOT NULL,
    policy_name   TEXT,
    policy_sha256 TEXT NOT NULL,
    method        TEXT,
    feasible      INTEGER,
    body          BLOB NOT NULL,
    prev_hash     TEXT NOT NULL,
    record_hash   TEXT NOT NULL,
    codec         TEXT,
    dict_id       INTEGER
);
CREATE INDEX records_recorded_at ON records(recorded_at);
CREATE INDEX records_policy_name ON records(policy_name);
CREATE INDEX records_method ON records(method);
CREATE TABLE policy_snapshots (
    sha256    TEXT PRIMARY KEY,
    snapshot  TEXT NOT NULL,
    stored_at TEXT NOT NULL
)"""
# added by store version 2 (also when a version 1 store is upgraded)
_V2_TABLES = """
CREATE TABLE dictionaries (
    id            INTEGER PRIMARY KEY,
    sha256        TEXT NOT NULL UNIQUE,
    policy_sha256 TEXT NOT NULL,
    data          BLOB NOT NULL,
    stored_at     TEXT NOT NULL
);
CREATE INDEX dictionaries_policy ON dictionaries(policy_sha256);
CREATE TABLE signatures (
    seq         INTEGER NOT NULL,
    key_id      TEXT NOT NULL,
    record_hash TEXT NOT NULL,
    signed_at   TEXT NOT NULL,
    signature   BLOB NOT NULL,
    PRIMARY KEY (seq, key_id)
);
CREATE TABLE keys (
    key_id     TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    added_at   TEXT NOT NULL
)"""
GUARDED = ("records", "policy_snapshots", "dictionaries", "signatures", "keys")
GUARD_TRIGGERS = tuple(f"{t}_append_only_{op}" for t in GUARDED for op in ("update", "delete"))
V1_GUARD_TRIGGERS = ("records_append_only_update", "records_append_only_delete",
                     "snapshots_append_only_update", "snapshots_append_only_delete")


def _guard_ddl(table: str) -> list[str]:
    return [f"CREATE TRIGGER IF NOT EXISTS {table}_append_only_{op} BEFORE {op.upper()} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, 'audit {table} are append-only'); END" for op in ("update", "delete")]


_COLUMNS = "seq, " + ", ".join(INDEX_COLUMNS) + ", body, codec, dict_id, prev_hash, record_hash"
_V1_COLUMNS = "seq, " + ", ".join(INDEX_COLUMNS) + ", body, NULL, NULL, prev_hash, record_hash"


def _is_busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class SqliteAuditStore:
    """An ``AuditStore`` in one SQLite file (WAL mode). Use as a context manager or call ``close()``.

    ``read_only=True``: the file must exist and be an audit store; nothing is ever written (verify, list, show,
    export, replay). Otherwise a writer: the file must exist unless ``create=True``; a version 1 store is
    upgraded to version 2 in place (new tables and columns; old records keep verifying unchanged).
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = False, read_only: bool = False,
                 busy_timeout_s: float = 30.0, retry_deadline_s: float = 120.0, synchronous: str = "FULL"):
        """Open the store at ``path``.

        Raises StoreUnavailable (missing for a reader, unreadable, not SQLite), NotAnAuditStore (another
        application's database, or a newer store version) or StoreNotWritable (a writer that may not create
        the missing file, or cannot open it for writing).
        """
        self.path = str(path)
        self.read_only = read_only
        self.created = False
        self.retry_deadline_s = retry_deadline_s
        self._busy_timeout_s = busy_timeout_s
        self._snapshots_known: set[str] = set()
        self._dicts_by_policy: dict[str, Dictionary] = {}
        self._dicts_by_id: dict[int, bytes] = {}
        self._keys_known: set[str] = set()
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        p = Path(self.path)
        exists = p.exists()
        if exists and not p.is_file():
            raise StoreUnavailable(f"audit store {self.path} is not a file")
        if not exists and (read_only or not create):
            err = StoreUnavailable if read_only else StoreNotWritable
            raise err(f"audit store {self.path} does not exist (record a decision first, which creates it; or pass "
                      "--db / set FINETUNE_POLICY_AUDIT_DB)")
        if create and not exists:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreNotWritable(f"cannot create the directory for audit store {self.path}: {exc}") from None
        self._conn = self._connect(p, busy_timeout_s, create and not exists)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self.version = self._check_store(create)
            if not read_only:
                self._retry(lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone())
                self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
                if self.version == "1":
                    self._upgrade_v1()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if not read_only and "readonly" in str(exc).lower().replace(" ", ""):
                raise StoreNotWritable(f"audit store {self.path} is read-only here: {exc}") from None
            raise StoreUnavailable(f"audit store {self.path} is not a readable SQLite database: {exc}") from None
        except AuditError:
            self._conn.close()
            raise
        self._identity = _identity(self.path)

    def _connect(self, p: Path, busy_timeout_s: float, creating: bool) -> sqlite3.Connection:
        uri = p.absolute().as_uri()
        mode = "ro" if self.read_only else ("rwc" if creating else "rw")
        try:
            conn = sqlite3.connect(f"{uri}?mode={mode}", uri=True, timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            err = StoreUnavailable if self.read_only else StoreNotWritable
            raise err(f"cannot open audit store {self.path}: {exc}") from None
        if not self.read_only:
            return conn
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            if "readonly" not in str(exc).lower().replace(" ", "") and "unable to open" not in str(exc).lower():
                raise StoreUnavailable(f"audit store {self.path} is not a readable SQLite database: {exc}") from None
            # WAL mode needs the -shm file; without write permission to the directory it cannot be created.
            # With no -wal file the database file is complete, so reading it as immutable is exact.
            if os.path.exists(self.path + "-wal"):
                raise StoreUnavailable(f"cannot read audit store {self.path}: {exc} (a writer's log exists; ask "
                                       "for read access to its directory, or verify a copy)") from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreUnavailable(f"audit store {self.path} is not a readable SQLite database: {exc}") from None
        try:
            return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open audit store {self.path}: {exc}") from None

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

    def check_file(self) -> None:
        """Raise StoreNotWritable when the file was deleted or replaced since this store opened it."""
        now = _identity(self.path)
        if now is None:
            raise StoreNotWritable(f"audit store {self.path} was deleted while this writer had it open; refusing "
                                   "to re-create it (a new file would start a new chain at seq 1). Restore the "
                                   "file or restart the writer")
        if now != self._identity:
            raise StoreNotWritable(f"audit store {self.path} was replaced by another file while this writer had it "
                                   "open; refusing to write into either. Restart the writer")

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside one BEGIN IMMEDIATE transaction, retrying while the database is busy."""
        if self.read_only:
            raise StoreNotWritable(f"audit store {self.path} is open read-only")
        conn = self._conn
        if conn is None:
            raise StoreNotWritable(f"audit store {self.path} is closed")
        self.check_file()

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
            result = self._retry(attempt)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise AuditError(f"audit store {self.path} stayed locked for {self.retry_deadline_s:.0f} s: {exc}") \
                    from None
            raise StoreNotWritable(f"audit store {self.path} cannot be written: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise StoreNotWritable(f"audit store {self.path} cannot be written: {exc}") from None
        self.check_file()  # deleted during the transaction: the commit went into an unlinked file
        return result

    def _check_store(self, create: bool) -> str:
        """Return the store version of the open database, initializing an empty one when ``create``."""
        conn = self._conn
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if not tables:
            if app_id not in (0, SQLITE_APPLICATION_ID):
                raise NotAnAuditStore(f"{self.path} is another application's SQLite database (application_id "
                                      f"{app_id:#x}); refusing to use it as an audit store")
            if self.read_only or not create:
                raise NotAnAuditStore(f"{self.path} is an empty SQLite database, not an audit store")
            if self._initialize():
                self.created = True
                return STORE_VERSION
            return self._check_store(create=False)  # another writer initialized it first: judge what it made
        is_v1 = {"meta", "records", "policy_snapshots"} <= tables and app_id == 0
        if app_id != SQLITE_APPLICATION_ID and not is_v1:
            some = ", ".join(sorted(tables)[:5])
            raise NotAnAuditStore(f"{self.path} is an SQLite database with other tables ({some}) and no audit-store "
                                  "marker: not a finetune-policy audit store; refusing to read or write it")
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('store_version', 'store_kind')"))
        except sqlite3.OperationalError:
            meta = {}
        version = meta.get("store_version")
        if version is None:
            raise NotAnAuditStore(f"audit store {self.path} has no store_version: not a finetune-policy audit store")
        if version not in READABLE_VERSIONS:
            raise NotAnAuditStore(f"audit store {self.path} has store version {version}; this finetune-policy reads "
                                  f"versions {', '.join(READABLE_VERSIONS)}")
        return str(version)

    def _initialize(self) -> bool:
        """Create the tables in an empty database; return False when another writer did it first."""
        def init(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]:
                return False
            conn.execute(f"PRAGMA application_id = {SQLITE_APPLICATION_ID}")
            for statement in (_TABLES + ";" + _V2_TABLES).split(";"):
                if statement.strip():
                    conn.execute(statement)
            for table in GUARDED:
                for ddl in _guard_ddl(table):
                    conn.execute(ddl)
            for key, value in (("store_kind", STORE_KIND), ("store_version", STORE_VERSION), ("head_seq", "0"),
                               ("head_hash", GENESIS_HASH), ("created_at", utc_now_iso()),
                               ("store_id", str(uuid.uuid4()))):
                conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (key, value))
            return True

        self._identity = _identity(self.path)
        # a compressed record is ~2.5 KB: with 4 KB pages only one fits a page and a third of the file is slack
        self._conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        return self._write(init)

    def _upgrade_v1(self) -> None:
        """Upgrade a version 1 store in place: codec/dict_id columns, dictionaries, signatures and keys tables,
        the new guards, the application id. Old rows keep ``codec`` NULL (plain canonical JSON)."""
        def upgrade(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()[0] != "1":
                return  # another writer upgraded it meanwhile
            conn.execute("ALTER TABLE records ADD COLUMN codec TEXT")
            conn.execute("ALTER TABLE records ADD COLUMN dict_id INTEGER")
            for statement in _V2_TABLES.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for name in V1_GUARD_TRIGGERS:
                conn.execute(f"DROP TRIGGER IF EXISTS {name}")
            for table in GUARDED:
                for ddl in _guard_ddl(table):
                    conn.execute(ddl)
            conn.execute(f"PRAGMA application_id = {SQLITE_APPLICATION_ID}")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'store_version'", (STORE_VERSION,))
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('store_kind', ?)", (STORE_KIND,))
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('store_id', ?)", (str(uuid.uuid4()),))

        self._identity = _identity(self.path)
        self._write(upgrade)
        self.version = STORE_VERSION

    @property
    def _columns(self) -> str:
        return _V1_COLUMNS if self.version == "1" else _COLUMNS

    def _dictionary(self, dict_id: int) -> bytes | None:
        if dict_id not in self._dicts_by_id:
            rows = self._query("SELECT data FROM dictionaries WHERE id = ?", (dict_id,))
            if not rows:
                return None
            self._dicts_by_id[dict_id] = bytes(rows[0][0])
        return self._dicts_by_id[dict_id]

    def _decode(self, row: tuple) -> dict:
        seq, codec, dict_id = row[0], row[-4], row[-3]
        try:
            body = decode(codec, row[-5], self._dictionary(dict_id) if dict_id is not None else None)
            record = strict_loads(body)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (CodecError, DuplicateKey, ValueError) as exc:
            raise StoreUnavailable(f"record seq {seq} in audit store {self.path} is unreadable ({exc}); run "
                                   "`decide audit verify`") from None
        record["prev_hash"] = row[-2]
        record["record_hash"] = row[-1]
        return record

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self._conn is None:
            raise StoreUnavailable(f"audit store {self.path} is closed")
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"audit store {self.path}: {exc}") from None

    # -- writing ----------------------------------------------------------------------------------------------

    def append(self, record: dict) -> str:
        """Append a record envelope (``records.build_record``), assigning seq, prev_hash and record_hash in one
        BEGIN IMMEDIATE transaction; return the record id. Unsigned: use ``AuditWriter`` to sign heads.

        Raises InvalidRecord (already chained, fails the schema, duplicate id, its policy snapshot not stored
        yet), AuditError (still locked after the retry budget) or StoreNotWritable.
        """
        return self.append_batch([PreparedRecord.from_envelope(record)], None)[0]

    def append_batch(self, batch: list[PreparedRecord], key: SigningKey | None) -> list[str]:
        """Append prepared records in one transaction and, with ``key``, sign the new head; return their ids.

        Raises InvalidRecord (a duplicate id, a policy snapshot not stored), StoreNotWritable, AuditError (busy).
        """
        if not batch:
            return []
        used: dict[str, Dictionary] = {}

        def insert(conn: sqlite3.Connection) -> list[str]:
            for sha in {r.policy_sha256 for r in batch} - self._snapshots_known:
                if conn.execute("SELECT 1 FROM policy_snapshots WHERE sha256 = ?", (sha,)).fetchone() is None:
                    raise InvalidRecord(f"policy snapshot {sha} is not in the store: put_policy_snapshot it first, "
                                        "so the record can be replayed")
            if key is None and conn.execute("SELECT 1 FROM signatures LIMIT 1").fetchone() is not None:
                raise StoreNotWritable(f"audit store {self.path} has signed chain heads: appending without the "
                                       "signing key would leave records no one can vouch for (give --audit-key or "
                                       "set FINETUNE_POLICY_AUDIT_KEY)")
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('head_seq', 'head_hash')"))
            head_seq, head_hash = int(meta["head_seq"]), meta["head_hash"]
            used.clear()
            rows = chain_batch(batch, head_seq, head_hash,
                               lambda rec, body: self._dictionary_for(conn, rec, body, used))
            conn.executemany(
                f"INSERT INTO records ({_COLUMNS}) VALUES ({', '.join('?' * (len(INDEX_COLUMNS) + 6))})",
                [_row_params(r) for r in rows])
            last = rows[-1]
            conn.execute("UPDATE meta SET value = CASE key WHEN 'head_seq' THEN ? ELSE ? END "
                         "WHERE key IN ('head_seq', 'head_hash')", (str(last.seq), last.record_hash))
            if key is not None:
                if key.key_id not in self._keys_known:
                    conn.execute("INSERT OR IGNORE INTO keys(key_id, public_key, added_at) VALUES (?, ?, ?)",
                                 (key.key_id, key.public.hex, utc_now_iso()))
                sig = sign_head(key, last.seq, last.record_hash)
                conn.execute("INSERT INTO signatures(seq, key_id, record_hash, signed_at, signature) "
                             "VALUES (?, ?, ?, ?, ?)", (sig.seq, sig.key_id, sig.record_hash, sig.signed_at,
                                                        sig.signature))
            return [str(r.columns["id"]) for r in rows]

        try:
            ids = self._write(insert)
        except sqlite3.IntegrityError as exc:
            raise InvalidRecord(f"a record of this batch ({batch[0].id}...) is already in the audit store ({exc})") \
                from None
        self._snapshots_known.update(r.policy_sha256 for r in batch)
        self._dicts_by_policy.update(used)  # only once committed: a rolled-back insert is redone next time
        if key is not None:
            self._keys_known.add(key.key_id)
        return ids

    def _dictionary_for(self, conn: sqlite3.Connection, rec: PreparedRecord, body: bytes,
                        used: dict[str, Dictionary]) -> Dictionary:
        sha = rec.policy_sha256
        known = self._dicts_by_policy.get(sha) or used.get(sha)
        if known is not None:
            return known
        row = conn.execute("SELECT id, sha256, data FROM dictionaries WHERE policy_sha256 = ? ORDER BY id LIMIT 1",
                           (sha,)).fetchone()
        if row is not None:
            found = Dictionary(int(row[0]), row[1], bytes(row[2]))
        else:
            found = new_dictionary(body)
            cur = conn.execute("INSERT INTO dictionaries(sha256, policy_sha256, data, stored_at) VALUES (?, ?, ?, ?)",
                               (found.sha256, sha, found.data, utc_now_iso()))
            found.id = int(cur.lastrowid or 0)
        used[sha] = found
        return found

    def put_policy_snapshot(self, sha256: str, snapshot: dict) -> bool:
        """Store ``snapshot`` under ``sha256`` unless present; return True if it was new.

        Raises InvalidRecord when ``snapshot`` does not hash to ``sha256``; StoreNotWritable.
        """
        if sha256 in self._snapshots_known:
            return False
        actual = snapshot_hash(snapshot)
        if actual != sha256:
            raise InvalidRecord(f"the policy snapshot hashes to {actual}, not {sha256}")
        if self._query("SELECT 1 FROM policy_snapshots WHERE sha256 = ?", (sha256,)):
            self._snapshots_known.add(sha256)
            return False
        text = canonical_json({"root": snapshot["root"], "files": snapshot["files"]})

        def insert(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("INSERT OR IGNORE INTO policy_snapshots(sha256, snapshot, stored_at) VALUES (?, ?, ?)",
                               (sha256, text, utc_now_iso()))
            return cur.rowcount == 1

        new = self._write(insert)
        self._snapshots_known.add(sha256)
        return new

    def check_writable(self) -> None:
        """Raise StoreNotWritable unless a write transaction can be started now (the file is still the one
        opened, SQLite grants the write lock); writes nothing."""
        if self.read_only:
            raise StoreNotWritable(f"audit store {self.path} is open read-only")
        self.check_file()
        if not os.access(self.path, os.W_OK):
            raise StoreNotWritable(f"audit store {self.path} is not writable by this process")
        conn = self._conn
        conn.execute("PRAGMA busy_timeout = 0")  # a probe answers now: a lock held by a writer means "busy", not down
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.DatabaseError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not _is_busy(exc):
                raise StoreNotWritable(f"audit store {self.path} cannot be written: {exc}") from None
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")

    # -- reading ----------------------------------------------------------------------------------------------

    def get(self, record_id: str) -> dict:
        """Return the full record with this exact id. Raises RecordNotFound."""
        rows = self._query(f"SELECT {self._columns} FROM records WHERE id = ?", (record_id,))
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
        sql = f"SELECT {self._columns} FROM records"
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
            cursor = self._conn.execute(f"SELECT {self._columns} FROM records ORDER BY seq")
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

    def get_policy_snapshot(self, sha256: str) -> dict:
        """Return the snapshot ``{"root", "files"}`` stored under ``sha256``.

        Raises RecordNotFound when absent, StoreUnavailable when the stored text is not JSON.
        """
        rows = self._query("SELECT snapshot FROM policy_snapshots WHERE sha256 = ?", (sha256,))
        if not rows:
            raise RecordNotFound(f"no policy snapshot {sha256} in audit store {self.path}")
        try:
            return dict(strict_loads(rows[0][0]))
        except (ValueError, TypeError) as exc:
            raise StoreUnavailable(f"policy snapshot {sha256} in {self.path} is not JSON: {exc}") from None

    def iter_signatures(self) -> Iterator[SignatureRow]:
        """Yield the stored head signatures in seq order (none for a version 1 store)."""
        if self.version == "1":
            return
        for r in self._query("SELECT seq, record_hash, key_id, signed_at, signature FROM signatures ORDER BY seq"):
            yield SignatureRow(int(r[0]), r[1], r[2], r[3], bytes(r[4]))

    def stored_public_keys(self) -> dict[str, PublicKey]:
        """Return the public keys the store keeps beside its signatures (unproven: anyone with write access to
        the store could replace them; an auditor passes their own with ``--public-key``)."""
        if self.version == "1":
            return {}
        out = {}
        for key_id, hex_key in self._query("SELECT key_id, public_key FROM keys"):
            try:
                out[key_id] = PublicKey(key_id, bytes.fromhex(hex_key))
            except ValueError:
                continue
        return out

    def verify(self, anchor: tuple[int, str] | None = None, public_keys: Sequence[PublicKey] | None = None, *,
               all_signatures: bool = False) -> VerifyReport:
        """Check every record (contiguous seq, the hash of the stored bytes, links, duplicate keys, schema, index
        columns), the head kept in ``meta``, the append-only triggers, every policy snapshot and compression
        dictionary, and the signed chain heads: with ``public_keys`` (the auditor's), every record must be
        covered by a valid signature of one of them. ``anchor`` (seq, record_hash) noted earlier must still be
        in the chain.

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
                v2 = self.version != "1"
                dicts = check_dictionaries(verifier, conn.execute("SELECT id, sha256, data FROM dictionaries")) \
                    if v2 else {}
                sigs = [SignatureRow(int(r[0]), r[1], r[2], r[3], bytes(r[4])) for r in conn.execute(
                    "SELECT seq, record_hash, key_id, signed_at, signature FROM signatures")] if v2 else []
                keys = {k.key_id: k for k in public_keys} if public_keys else self.stored_public_keys()
                verifier.expect_signatures(sigs, keys, proven=bool(public_keys), all_signatures=all_signatures)
                referenced = verify_walk(verifier, conn.execute(f"SELECT {self._columns} FROM records ORDER BY seq"),
                                         dicts)
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                head_problem(verifier, meta.get("head_seq"), meta.get("head_hash"))
                triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
                guard_problem(verifier, [t for t in (GUARD_TRIGGERS if v2 else V1_GUARD_TRIGGERS)
                                         if t not in triggers])
                check_snapshots(verifier, conn.execute("SELECT sha256, snapshot FROM policy_snapshots ORDER BY sha256"),
                                referenced)
            finally:
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"audit store {self.path} cannot be read: {exc}") from None
        return verifier.finish()

    def stats(self) -> dict[str, Any]:
        """Return counts and the head: records, snapshots, head_seq, head_hash, path, store_version."""
        seq, head = self.head()
        return {"path": self.path, "store_version": self.version, "records": self.count(),
                "snapshots": int(self._query("SELECT COUNT(*) FROM policy_snapshots")[0][0]), "head_seq": seq,
                "head_hash": head}


def _row_params(r: ChainedRow) -> tuple:
    return (r.seq, *[r.columns[c] for c in INDEX_COLUMNS], r.body, r.codec, r.dict_id, r.prev_hash, r.record_hash)
