"""The PostgreSQL audit store (psycopg 3): the same chain, records and checks as SQLite, for several workers
and hosts appending to one chain.

Layout: every table lives in the schema ``finetune_audit`` of the database named by the URL (the same tables
as the SQLite store; bodies are ``bytea``). The store is created only by a writer with ``create=True`` and only
in a database that has no tables of its own (a database made for the audit trail): a database holding another
application's tables is refused, and so is a ``finetune_audit`` schema without the store marker.

Appending takes the row locks on the head (``SELECT ... FROM meta WHERE key IN ('head_seq', ...) ... FOR UPDATE``,
``head_seq`` first) inside the transaction that inserts the records, moves the head and stores the signature
(the writes sent as one pipeline: four round trips per commit, however many records), so appenders on any number of
connections, processes and hosts serialize on it: no two records get the same seq (the primary key would refuse
it anyway) and none is lost. Readers open read-only (``default_transaction_read_only``) and verify inside one
REPEATABLE READ transaction, so they need only SELECT privileges and see one consistent chain while writers go on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from .chain import (
    READABLE_VERSIONS,
    STORE_KIND,
    STORE_VERSION,
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
from .location import StoreLocation
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

SCHEMA = "finetune_audit"
_TX_RETRIES = 5  # a transaction PostgreSQL rolled back (deadlock, serialization) is run again
T = TypeVar("T")
GUARDED = ("records", "policy_snapshots", "dictionaries", "signatures", "keys")
GUARD_TRIGGERS = tuple(f"{t}_append_only" for t in GUARDED) + tuple(f"{t}_no_truncate" for t in GUARDED)

_DDL = f"""
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE {SCHEMA}.records (
    seq bigint PRIMARY KEY, id text NOT NULL UNIQUE, recorded_at text NOT NULL, policy_name text,
    policy_sha256 text NOT NULL, method text, feasible integer, body bytea NOT NULL, prev_hash text NOT NULL,
    record_hash text NOT NULL, codec text, dict_id integer);
CREATE INDEX records_recorded_at ON {SCHEMA}.records(recorded_at);
CREATE INDEX records_policy_name ON {SCHEMA}.records(policy_name);
CREATE INDEX records_method ON {SCHEMA}.records(method);
CREATE TABLE {SCHEMA}.policy_snapshots (sha256 text PRIMARY KEY, snapshot text NOT NULL, stored_at text NOT NULL);
CREATE TABLE {SCHEMA}.dictionaries (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, sha256 text NOT NULL UNIQUE, policy_sha256 text NOT NULL,
    data bytea NOT NULL, stored_at text NOT NULL);
CREATE INDEX dictionaries_policy ON {SCHEMA}.dictionaries(policy_sha256);
CREATE TABLE {SCHEMA}.signatures (
    seq bigint NOT NULL, key_id text NOT NULL, record_hash text NOT NULL, signed_at text NOT NULL,
    signature bytea NOT NULL, PRIMARY KEY (seq, key_id));
CREATE TABLE {SCHEMA}.keys (key_id text PRIMARY KEY, public_key text NOT NULL, added_at text NOT NULL);
CREATE FUNCTION {SCHEMA}.append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit % are append-only', TG_TABLE_NAME; END $$
"""
_COLUMNS = "seq, " + ", ".join(INDEX_COLUMNS) + ", body, codec, dict_id, prev_hash, record_hash"


def _guards() -> list[str]:
    out = []
    for t in GUARDED:
        out.append(f"CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {SCHEMA}.{t} "
                   f"FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.append_only()")
        out.append(f"CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {SCHEMA}.{t} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.append_only()")
    return out


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreUnavailable("a postgresql:// audit store needs psycopg 3: pip install 'finetune-policy[postgres]' "
                               "(or psycopg[binary])") from None
    return psycopg


class PostgresAuditStore:
    """An ``AuditStore`` in a PostgreSQL database (schema ``finetune_audit``). Context manager or ``close()``.

    ``read_only=True`` for readers (the store must exist; every transaction is read-only). A writer needs the
    store to exist unless ``create=True``, which creates it in an empty database.
    """

    def __init__(self, url: str, *, create: bool = False, read_only: bool = False, connect_timeout_s: int = 10):
        """Connect and check the store. Raises StoreUnavailable (cannot connect / missing, for readers),
        StoreNotWritable (for writers), NotAnAuditStore (another application's database or schema)."""
        psycopg = _psycopg()
        self.location = StoreLocation("postgresql", url=url)
        self.path = self.location.display()
        self.read_only = read_only
        self.created = False
        self.version = STORE_VERSION
        self._snapshots_known: set[str] = set()
        self._dicts_by_policy: dict[str, Dictionary] = {}
        self._dicts_by_id: dict[int, bytes] = {}
        self._keys_known: set[str] = set()
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._conn = self._connect()
        err = StoreUnavailable if read_only else StoreNotWritable
        try:
            self._store_id = self._check_store(create)
        except psycopg.Error as exc:
            self._conn.close()
            raise err(f"audit store {self.path}: {str(exc).strip()}") from None
        except AuditError:
            self._conn.close()
            raise

    def _connect(self) -> Any:
        psycopg = _psycopg()
        err = StoreUnavailable if self.read_only else StoreNotWritable
        try:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._connect_timeout_s)
            if self.read_only:
                conn.execute("SET default_transaction_read_only = on")
        except psycopg.Error as exc:
            raise err(f"cannot connect to audit store {self.path}: {str(exc).strip()}") from None
        return conn

    def _reconnect_if_broken(self) -> None:
        """Replace a connection the server closed (restart, failover, idle timeout) by a new one to the same
        store; raises StoreNotWritable when the server is still unreachable or now holds another store."""
        if self._conn is None or not self._conn.closed:
            return
        self._conn = self._connect()
        meta = dict(self._conn.execute(f"SELECT key, value FROM {SCHEMA}.meta WHERE key = 'store_id'").fetchall())
        if meta.get("store_id") != self._store_id:
            raise StoreNotWritable(f"audit store {self.path} is another store since the reconnection; refusing to "
                                   "write into it. Restart the writer")

    # -- plumbing ---------------------------------------------------------------------------------------------

    def __enter__(self) -> PostgresAuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
            self._conn = None

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        psycopg = _psycopg()
        if self._conn is None:
            raise StoreUnavailable(f"audit store {self.path} is closed")
        try:
            return self._conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"audit store {self.path}: {str(exc).strip()}") from None

    def _write(self, fn: Callable[[Any], T]) -> T:
        psycopg = _psycopg()
        if self.read_only:
            raise StoreNotWritable(f"audit store {self.path} is open read-only")
        if self._conn is None:
            raise StoreNotWritable(f"audit store {self.path} is closed")
        try:
            self._reconnect_if_broken()
            for attempt in range(_TX_RETRIES):
                try:
                    with self._conn.transaction():
                        return fn(self._conn)
                except psycopg.errors.TransactionRollback:  # deadlock or serialization failure: run it again
                    if attempt == _TX_RETRIES - 1:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        except psycopg.OperationalError as exc:
            if self._conn is not None and self._conn.closed:  # the server went away: next call reconnects
                raise StoreNotWritable(f"lost the connection to audit store {self.path}: {str(exc).strip()}") \
                    from None
            raise StoreNotWritable(f"audit store {self.path} cannot be written: {str(exc).strip()}") from None
        except psycopg.errors.UniqueViolation as exc:
            raise InvalidRecord(f"already in the audit store: {str(exc).strip()}") from None
        except psycopg.errors.UndefinedTable:
            raise StoreNotWritable(f"the audit tables in {self.path} are gone (dropped while this writer had them "
                                   "open); refusing to re-create them") from None
        except psycopg.Error as exc:
            raise StoreNotWritable(f"audit store {self.path} cannot be written: {str(exc).strip()}") from None

    def _check_store(self, create: bool) -> str:
        """Return the store id; create the store in an empty database when ``create``."""
        conn = self._conn
        has_schema = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)).fetchone()
        if has_schema is None:
            if self.read_only or not create:
                err = StoreUnavailable if self.read_only else StoreNotWritable
                raise err(f"audit store {self.path} does not exist (no {SCHEMA} schema in that database; the first "
                          "writer with create=True makes it)")
            return self._create()
        try:
            meta = dict(conn.execute(f"SELECT key, value FROM {SCHEMA}.meta WHERE key IN "
                                     "('store_kind', 'store_version', 'store_id')").fetchall())
        except _psycopg().errors.UndefinedTable:
            meta = {}
        if meta.get("store_kind") != STORE_KIND:
            raise NotAnAuditStore(f"{self.path} has a {SCHEMA} schema without the audit-store marker: not a "
                                  "finetune-policy audit store; refusing to read or write it")
        if meta.get("store_version") not in READABLE_VERSIONS:
            raise NotAnAuditStore(f"audit store {self.path} has store version {meta.get('store_version')}; this "
                                  f"finetune-policy reads versions {', '.join(READABLE_VERSIONS)}")
        return str(meta.get("store_id"))

    def _create(self) -> str:
        def create(conn: Any) -> str:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (SCHEMA,))
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)).fetchone() is not None:
                return ""  # another writer created it while we waited for the lock
            others = conn.execute("SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname NOT IN "
                                  "('pg_catalog', 'information_schema') ORDER BY 1 LIMIT 5").fetchall()
            if others:
                raise NotAnAuditStore(f"database {self.path} already holds other tables ("
                                      f"{', '.join(r[0] for r in others)}): refusing to add the audit store to "
                                      "another application's database; create a dedicated one (createdb)")
            for statement in [s for s in _DDL.split(";\n") if s.strip()] + _guards():
                conn.execute(statement)
            store_id = str(uuid.uuid4())
            for key, value in (("store_kind", STORE_KIND), ("store_version", STORE_VERSION), ("head_seq", "0"),
                               ("head_hash", GENESIS_HASH), ("created_at", utc_now_iso()), ("store_id", store_id)):
                conn.execute(f"INSERT INTO {SCHEMA}.meta(key, value) VALUES (%s, %s)", (key, value))
            return store_id

        store_id = self._write(create)
        self.created = bool(store_id)
        return store_id or self._check_store(create=False)

    def _dictionary(self, dict_id: int) -> bytes | None:
        if dict_id not in self._dicts_by_id:
            rows = self._query(f"SELECT data FROM {SCHEMA}.dictionaries WHERE id = %s", (dict_id,))
            if not rows:
                return None
            self._dicts_by_id[dict_id] = bytes(rows[0][0])
        return self._dicts_by_id[dict_id]

    def _decode(self, row: tuple) -> dict:
        seq, codec, dict_id = row[0], row[-4], row[-3]
        try:
            body = decode(codec, bytes(row[-5]), self._dictionary(dict_id) if dict_id is not None else None)
            record = strict_loads(body)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (CodecError, DuplicateKey, ValueError) as exc:
            raise StoreUnavailable(f"record seq {seq} in audit store {self.path} is unreadable ({exc}); run "
                                   "`decide audit verify`") from None
        record["prev_hash"] = row[-2]
        record["record_hash"] = row[-1]
        return record

    # -- writing ----------------------------------------------------------------------------------------------

    def append(self, record: dict) -> str:
        """Append a record envelope (``records.build_record``) unsigned; return its id (see SqliteAuditStore)."""
        return self.append_batch([PreparedRecord.from_envelope(record)], None)[0]

    def append_batch(self, batch: list[PreparedRecord], key: SigningKey | None) -> list[str]:
        """Append prepared records in one transaction under the head row lock and, with ``key``, sign the new
        head; return their ids. Raises InvalidRecord, StoreNotWritable."""
        if not batch:
            return []
        used: dict[str, Dictionary] = {}

        def insert(conn: Any) -> list[str]:
            # Lock the head, and read it, in one round trip. The head_seq row is locked first (writers queue on
            # it, and a writer of an earlier version, which locks only that row, cannot deadlock with this one);
            # every row read is locked, so each comes back in its newest committed version (a plain read in the
            # same statement would use the snapshot taken before the lock wait: a stale head_hash, a fork).
            meta = dict(conn.execute(f"SELECT key, value FROM {SCHEMA}.meta WHERE key IN "
                                     "('head_seq', 'head_hash', 'store_id') ORDER BY key <> 'head_seq', key "
                                     "FOR UPDATE").fetchall())
            if meta.get("store_id") != self._store_id:
                raise StoreNotWritable(f"audit store {self.path} was replaced by another store while this writer had "
                                       "it open; refusing to write into it. Restart the writer")
            for sha in {r.policy_sha256 for r in batch} - self._snapshots_known:
                if conn.execute(f"SELECT 1 FROM {SCHEMA}.policy_snapshots WHERE sha256 = %s", (sha,)).fetchone() \
                        is None:
                    raise InvalidRecord(f"policy snapshot {sha} is not in the store: put_policy_snapshot it first, "
                                        "so the record can be replayed")
            if key is None and conn.execute(f"SELECT 1 FROM {SCHEMA}.signatures LIMIT 1").fetchone() is not None:
                raise StoreNotWritable(f"audit store {self.path} has signed chain heads: appending without the "
                                       "signing key would leave records no one can vouch for")
            used.clear()
            rows = chain_batch(batch, int(meta["head_seq"]), meta["head_hash"],
                               lambda rec, body: self._dictionary_for(conn, rec, body, used))
            last = rows[-1]
            sig = sign_head(key, last.seq, last.record_hash) if key is not None else None
            with conn.pipeline(), conn.cursor() as cur:  # the writes need no answer: one round trip for all
                cur.executemany(f"INSERT INTO {SCHEMA}.records ({_COLUMNS}) VALUES "
                                f"({', '.join(['%s'] * (len(INDEX_COLUMNS) + 6))})",
                                [(r.seq, *[r.columns[c] for c in INDEX_COLUMNS], r.body, r.codec, r.dict_id,
                                  r.prev_hash, r.record_hash) for r in rows])
                cur.execute(f"UPDATE {SCHEMA}.meta SET value = CASE key WHEN 'head_seq' THEN %s ELSE %s END "
                            "WHERE key IN ('head_seq', 'head_hash')", (str(last.seq), last.record_hash))
                if key is not None and sig is not None:
                    if key.key_id not in self._keys_known:
                        cur.execute(f"INSERT INTO {SCHEMA}.keys(key_id, public_key, added_at) VALUES (%s, %s, %s) "
                                    "ON CONFLICT DO NOTHING", (key.key_id, key.public.hex, utc_now_iso()))
                    cur.execute(f"INSERT INTO {SCHEMA}.signatures(seq, key_id, record_hash, signed_at, signature) "
                                "VALUES (%s, %s, %s, %s, %s)", (sig.seq, sig.key_id, sig.record_hash, sig.signed_at,
                                                                sig.signature))
            return [str(r.columns["id"]) for r in rows]

        ids = self._write(insert)
        self._snapshots_known.update(r.policy_sha256 for r in batch)
        self._dicts_by_policy.update(used)
        if key is not None:
            self._keys_known.add(key.key_id)
        return ids

    def _dictionary_for(self, conn: Any, rec: PreparedRecord, body: bytes, used: dict[str, Dictionary]) -> Dictionary:
        sha = rec.policy_sha256
        known = self._dicts_by_policy.get(sha) or used.get(sha)
        if known is not None:
            return known
        row = conn.execute(f"SELECT id, sha256, data FROM {SCHEMA}.dictionaries WHERE policy_sha256 = %s "
                           "ORDER BY id LIMIT 1", (sha,)).fetchone()
        if row is not None:
            found = Dictionary(int(row[0]), row[1], bytes(row[2]))
        else:
            found = new_dictionary(body)
            found.id = int(conn.execute(f"INSERT INTO {SCHEMA}.dictionaries(sha256, policy_sha256, data, stored_at) "
                                        "VALUES (%s, %s, %s, %s) RETURNING id",
                                        (found.sha256, sha, found.data, utc_now_iso())).fetchone()[0])
        used[sha] = found
        return found

    def put_policy_snapshot(self, sha256: str, snapshot: dict) -> bool:
        """Store ``snapshot`` under ``sha256`` unless present; return True if it was new. Raises InvalidRecord
        when it does not hash to ``sha256``; StoreNotWritable."""
        if sha256 in self._snapshots_known:
            return False
        actual = snapshot_hash(snapshot)
        if actual != sha256:
            raise InvalidRecord(f"the policy snapshot hashes to {actual}, not {sha256}")
        text = canonical_json({"root": snapshot["root"], "files": snapshot["files"]})
        new = self._write(lambda conn: conn.execute(
            f"INSERT INTO {SCHEMA}.policy_snapshots(sha256, snapshot, stored_at) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING", (sha256, text, utc_now_iso())).rowcount == 1)
        self._snapshots_known.add(sha256)
        return bool(new)

    def check_writable(self) -> None:
        """Raise StoreNotWritable unless the head row can be locked for writing now (connection alive, tables
        present, same store, privileges granted); writes nothing."""
        def probe(conn: Any) -> None:
            # SKIP LOCKED: a writer holding the head lock means the store works, not that it is unwritable
            conn.execute(f"SELECT value FROM {SCHEMA}.meta WHERE key = 'head_seq' FOR UPDATE SKIP LOCKED").fetchone()
            meta = dict(conn.execute(f"SELECT key, value FROM {SCHEMA}.meta WHERE key IN ('head_seq', 'store_id')")
                        .fetchall())
            if meta.get("store_id") != self._store_id:
                raise StoreNotWritable(f"audit store {self.path} was replaced while this writer had it open")

        try:
            self._write(probe)
        except InvalidRecord as exc:  # pragma: no cover - a probe inserts nothing
            raise StoreNotWritable(str(exc)) from None
        except StoreNotWritable as exc:
            if "could not obtain lock" in str(exc):
                return  # another writer holds the head right now: writable, just busy
            raise

    # -- reading ----------------------------------------------------------------------------------------------

    def get(self, record_id: str) -> dict:
        """Return the full record with this exact id. Raises RecordNotFound."""
        rows = self._query(f"SELECT {_COLUMNS} FROM {SCHEMA}.records WHERE id = %s", (record_id,))
        if not rows:
            raise RecordNotFound(f"no record with id {record_id} in audit store {self.path}")
        return self._decode(rows[0])

    def resolve_id(self, prefix: str) -> str:
        """Return the id equal to ``prefix`` or the only one starting with it. Raises RecordNotFound."""
        key = prefix.strip().upper()
        if not key or not key.isalnum():
            raise RecordNotFound(f"{prefix!r} is not a record id (26 characters, 0-9 A-Z)")
        rows = self._query(f"SELECT id FROM {SCHEMA}.records WHERE id >= %s AND id < %s ORDER BY id LIMIT 6",
                           (key, key + "\x7f"))
        ids = [r[0] for r in rows]
        if key in ids:
            return key
        if not ids:
            raise RecordNotFound(f"no record with id {prefix} in audit store {self.path}")
        if len(ids) > 1:
            raise RecordNotFound(f"id prefix {prefix} is ambiguous: {', '.join(ids[:5])}")
        return ids[0]

    def list(self, filters: RecordFilter | None = None) -> list[dict]:
        """Return matching full records in seq order; with ``filters.limit``, the newest ``limit`` of them."""
        f = filters or RecordFilter()
        where: list[str] = []
        params: list[Any] = []
        if f.since is not None:
            where.append("recorded_at >= %s")
            params.append(utc_now_iso(f.since))
        if f.policy is not None:
            where.append("policy_name = %s")
            params.append(f.policy)
        if f.method is not None:
            if f.method == "infeasible":
                where.append("method IS NULL")
            else:
                where.append("method = %s")
                params.append(f.method)
        sql = f"SELECT {_COLUMNS} FROM {SCHEMA}.records" + (" WHERE " + " AND ".join(where) if where else "")
        if f.limit is not None:
            rows = list(reversed(self._query(sql + " ORDER BY seq DESC LIMIT %s", (*params, int(f.limit)))))
        else:
            rows = self._query(sql + " ORDER BY seq", tuple(params))
        return [self._decode(r) for r in rows]

    def iter_all(self) -> Iterator[dict]:
        """Yield every record in seq order, from one snapshot (a server-side cursor in one transaction)."""
        psycopg = _psycopg()
        try:
            with self._conn.transaction():
                self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                with self._conn.cursor(name="audit_iter") as cur:
                    cur.execute(f"SELECT {_COLUMNS} FROM {SCHEMA}.records ORDER BY seq")
                    for row in cur:
                        yield self._decode(row)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"audit store {self.path}: {str(exc).strip()}") from None

    def count(self) -> int:
        """Return the number of records."""
        return int(self._query(f"SELECT COUNT(*) FROM {SCHEMA}.records")[0][0])

    def head(self) -> tuple[int, str]:
        """Return (seq, record_hash) of the last record, or (0, GENESIS_HASH) for an empty store."""
        rows = self._query(f"SELECT seq, record_hash FROM {SCHEMA}.records ORDER BY seq DESC LIMIT 1")
        return (int(rows[0][0]), rows[0][1]) if rows else (0, GENESIS_HASH)

    def get_policy_snapshot(self, sha256: str) -> dict:
        """Return the snapshot stored under ``sha256``. Raises RecordNotFound, StoreUnavailable."""
        rows = self._query(f"SELECT snapshot FROM {SCHEMA}.policy_snapshots WHERE sha256 = %s", (sha256,))
        if not rows:
            raise RecordNotFound(f"no policy snapshot {sha256} in audit store {self.path}")
        try:
            return dict(strict_loads(rows[0][0]))
        except (ValueError, TypeError) as exc:
            raise StoreUnavailable(f"policy snapshot {sha256} in {self.path} is not JSON: {exc}") from None

    def iter_signatures(self) -> Iterator[SignatureRow]:
        """Yield the stored head signatures in seq order."""
        for r in self._query(f"SELECT seq, record_hash, key_id, signed_at, signature FROM {SCHEMA}.signatures "
                             "ORDER BY seq"):
            yield SignatureRow(int(r[0]), r[1], r[2], r[3], bytes(r[4]))

    def stored_public_keys(self) -> dict[str, PublicKey]:
        """Return the public keys kept in the store (unproven; see SqliteAuditStore.stored_public_keys)."""
        out = {}
        for key_id, hex_key in self._query(f"SELECT key_id, public_key FROM {SCHEMA}.keys"):
            try:
                out[key_id] = PublicKey(key_id, bytes.fromhex(hex_key))
            except ValueError:
                continue
        return out

    def verify(self, anchor: tuple[int, str] | None = None, public_keys: Sequence[PublicKey] | None = None, *,
               all_signatures: bool = False) -> VerifyReport:
        """The checks of ``SqliteAuditStore.verify`` (the guards are the append-only and no-truncate triggers,
        which must exist and be enabled), inside one REPEATABLE READ, READ ONLY transaction."""
        psycopg = _psycopg()
        verifier = ChainVerifier(source=self.path, anchor=anchor)
        conn = self._conn
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                dicts = check_dictionaries(verifier, conn.execute(f"SELECT id, sha256, data FROM {SCHEMA}.dictionaries"))
                sigs = [SignatureRow(int(r[0]), r[1], r[2], r[3], bytes(r[4])) for r in conn.execute(
                    f"SELECT seq, record_hash, key_id, signed_at, signature FROM {SCHEMA}.signatures")]
                keys = {k.key_id: k for k in public_keys} if public_keys else self.stored_public_keys()
                verifier.expect_signatures(sigs, keys, proven=bool(public_keys), all_signatures=all_signatures)
                with conn.cursor(name="audit_verify") as cur:
                    cur.itersize = 2000
                    cur.execute(f"SELECT {_COLUMNS} FROM {SCHEMA}.records ORDER BY seq")
                    referenced = verify_walk(verifier, ((*r[:-5], bytes(r[-5]), *r[-4:]) for r in cur), dicts)
                meta = dict(conn.execute(f"SELECT key, value FROM {SCHEMA}.meta").fetchall())
                head_problem(verifier, meta.get("head_seq"), meta.get("head_hash"))
                enabled = {r[0] for r in conn.execute(
                    "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON "
                    "n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal AND t.tgenabled <> 'D'",
                    (SCHEMA,))}
                guard_problem(verifier, [t for t in GUARD_TRIGGERS if t not in enabled])
                check_snapshots(verifier, conn.execute(f"SELECT sha256, snapshot FROM {SCHEMA}.policy_snapshots "
                                                       "ORDER BY sha256"), referenced)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"audit store {self.path} cannot be read: {str(exc).strip()}") from None
        return verifier.finish()

    def stats(self) -> dict[str, Any]:
        """Return counts and the head: records, snapshots, head_seq, head_hash, path."""
        seq, head = self.head()
        return {"path": self.path, "store_version": self.version, "records": self.count(),
                "snapshots": int(self._query(f"SELECT COUNT(*) FROM {SCHEMA}.policy_snapshots")[0][0]),
                "head_seq": seq, "head_hash": head}
