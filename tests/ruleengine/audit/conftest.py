"""Fixtures for the audit tests: hand-built decisions (see _factory.py), a policy snapshot, stores, an attacker."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ruleengine.audit import SqliteAuditStore, build_record, snapshot_hash

HERE = Path(__file__).resolve().parent


def _load_factory() -> ModuleType:
    name = "audit_test_factory"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "_factory.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


factory = _load_factory()


@pytest.fixture
def writer_script() -> Path:
    """The path of _writer.py, the appending subprocess used by the concurrency and kill -9 tests."""
    return HERE / "_writer.py"


@pytest.fixture
def make_decision():
    """Return the factory ``make_decision(method, rank, *, use_case, ...)`` of Decision.to_dict()-shaped dicts."""
    return factory.make_decision


@pytest.fixture
def plan() -> list[tuple]:
    """The (method, rank, use_case) rows the ``filled`` store is made of."""
    return list(factory.PLAN)


@pytest.fixture
def snapshot() -> dict:
    """A small policy snapshot {"root", "files"}."""
    return {"root": factory.SNAPSHOT["root"], "files": dict(factory.SNAPSHOT["files"])}


@pytest.fixture
def snap_sha(snapshot) -> str:
    """The sha256 of the ``snapshot`` fixture."""
    return snapshot_hash(snapshot)


@pytest.fixture
def db_path(tmp_path) -> str:
    """A fresh store path inside the test's tmp dir (parent directory not created yet)."""
    return str(tmp_path / "store" / "audit.sqlite3")


def _fill(path: str, snapshot: dict, n: int = len(factory.PLAN)) -> list[str]:
    sha = snapshot_hash(snapshot)
    ids = []
    with SqliteAuditStore(path, create=True) as store:
        store.put_policy_snapshot(sha, snapshot)
        for i in range(n):
            method, rank, use_case = factory.PLAN[i % len(factory.PLAN)]
            ids.append(store.append(build_record(factory.make_decision(method, rank, use_case=use_case), sha)))
    return ids


@pytest.fixture
def fill_store():
    """Return ``fill(path, snapshot, n=8)``: append n PLAN-made records, return their ids in order."""
    return _fill


@pytest.fixture
def filled(db_path, snapshot) -> tuple[str, list[str]]:
    """A store with one record per PLAN row (8 records: 7 feasible, 1 infeasible); returns (path, ids)."""
    return db_path, _fill(db_path, snapshot)


GUARDS = tuple(f"{t}_append_only_{op}" for t in ("records", "policy_snapshots", "dictionaries", "signatures", "keys")
               for op in ("update", "delete"))


class Attacker:
    """Edits a store with plain sqlite3, as someone with write access to the file but without the signing key:
    drops the append-only triggers first, can put them back afterwards, and reads/writes record bodies through
    their codec (so an edit is a real edit, not an undecodable blob)."""

    def __init__(self, path: str):
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        for name in GUARDS:
            self.conn.execute(f"DROP TRIGGER IF EXISTS {name}")

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one statement and return its rows."""
        return self.conn.execute(sql, params).fetchall()

    def _dictionary(self, dict_id):
        if dict_id is None:
            return None
        return bytes(self.execute("SELECT data FROM dictionaries WHERE id = ?", (dict_id,))[0][0])

    def body_bytes(self, seq: int) -> bytes:
        """Return the canonical body bytes of record ``seq``, decoded."""
        from ruleengine.audit.codec import decode

        stored, codec, dict_id = self.execute("SELECT body, codec, dict_id FROM records WHERE seq = ?", (seq,))[0]
        return decode(codec, stored, self._dictionary(dict_id))

    def body(self, seq: int) -> dict:
        """Return the body (record without chain fields) of record ``seq``."""
        import json

        return json.loads(self.body_bytes(seq))

    def write_body(self, seq: int, body: dict | bytes, *, rehash: bool = False, prev_hash: str | None = None) -> str:
        """Store ``body`` (a dict is canonicalised) as record ``seq``'s body with the row's codec; with ``rehash``
        also recompute its record_hash (and set prev_hash if given). Returns the record hash now stored."""
        from ruleengine.audit.codec import encode
        from ruleengine.audit.records import canonical_json, hash_body_bytes

        data = body if isinstance(body, bytes) else canonical_json(body).encode("utf-8")
        dict_id, prev, stored_hash = self.execute("SELECT dict_id, prev_hash, record_hash FROM records WHERE seq = ?",
                                                  (seq,))[0]
        _codec, blob = encode(data, self._dictionary(dict_id))
        prev = prev_hash or prev
        new_hash = hash_body_bytes(data, prev) if rehash else stored_hash
        self.execute("UPDATE records SET body = ?, prev_hash = ?, record_hash = ? WHERE seq = ?",
                     (blob, prev, new_hash, seq))
        return new_hash

    def restore_guards(self) -> None:
        """Re-create the triggers, as a careful attacker would."""
        from ruleengine.audit.sqlite_store import GUARDED, _guard_ddl

        for table in GUARDED:
            for ddl in _guard_ddl(table):
                self.conn.execute(ddl)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


@pytest.fixture
def attacker_class() -> type:
    """The Attacker class (for tests that open and close their own, e.g. under hypothesis)."""
    return Attacker


@pytest.fixture
def attacker():
    """Return ``open(path) -> Attacker``; connections are closed at teardown."""
    opened: list[Attacker] = []

    def open_(path: str) -> Attacker:
        a = Attacker(path)
        opened.append(a)
        return a

    yield open_
    for a in opened:
        a.close()


# --- PostgreSQL: a real server in a temporary directory, for the whole session ---------------------------------


def _pg_binary(name: str) -> str | None:
    """Return ``name`` from PATH, else from the newest /usr/lib/postgresql/*/bin (Debian's layout)."""
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    candidates.sort(key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return candidates[-1] if candidates else None


class PgServer:
    """A running PostgreSQL server: ``admin_url`` (superuser ``postgres``), ``new_database()`` per test."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.admin_url = f"postgresql://postgres@{host}:{port}/postgres"
        self._n = 0

    def url(self, dbname: str, user: str = "postgres") -> str:
        """Return the URL of database ``dbname`` as ``user``."""
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname}"

    def admin(self, sql: str, params: tuple = (), dbname: str = "postgres") -> list[tuple]:
        """Run one statement as the superuser (autocommit) and return its rows (empty when it returns none)."""
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def new_database(self) -> str:
        """Create an empty database and return its name."""
        self._n += 1
        name = f"audit_{os.getpid()}_{self._n}"
        self.admin(f"CREATE DATABASE {name}")
        return name


@pytest.fixture(scope="session")
def pg_server():
    """Start a PostgreSQL server (initdb + pg_ctl into a temporary directory, loopback only, a free port) for the
    session; stop and delete it at the end. Skips when the server binaries or psycopg are missing."""
    import shutil
    import socket
    import subprocess
    import tempfile

    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[postgres]'")
    base = tempfile.mkdtemp(prefix="audit-pg-")
    run_as: dict = {}
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as an unprivileged user
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        os.chown(base, account.pw_uid, account.pw_gid)
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, log = os.path.join(base, "data"), os.path.join(base, "server.log")
    made = subprocess.run([initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8",
                           "--locale=C"], capture_output=True, text=True, timeout=120, **run_as)
    if made.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"initdb failed: {made.stderr}")
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
    started = subprocess.run([pg_ctl, "-D", data, "-o", opts, "-w", "-t", "60", "-l", log, "start"],
                             capture_output=True, text=True, timeout=120, **run_as)
    if started.returncode != 0:
        with open(log, encoding="utf-8", errors="replace") as fh:
            server_log = fh.read()
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {started.stderr}\n{server_log}")
    try:
        yield PgServer("127.0.0.1", port)
    finally:
        subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True, timeout=120,
                       **run_as)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    return pg_server.url(pg_server.new_database())
