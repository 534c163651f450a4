"""Where an audit store lives: a file path or ``sqlite://`` URL (SQLite), or a ``postgresql://`` URL.

    /var/lib/finetune-policy/audit.sqlite3      a path: SQLite (``~`` is expanded)
    sqlite:///var/lib/finetune-policy/a.sqlite3 the same as a URL (three slashes, then the absolute path)
    sqlite://relative/a.sqlite3                  a path relative to the working directory
    postgresql://user@host:5432/audit           PostgreSQL (also ``postgres://``); any libpq URL parameters

Anything else with a ``scheme://`` prefix is refused rather than taken for a file name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .store import StoreUnavailable

ENV_DB = "FINETUNE_POLICY_AUDIT_DB"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class StoreLocation:
    """A parsed store location: ``kind`` is ``sqlite`` (with ``path``) or ``postgresql`` (with ``url``)."""

    kind: str
    path: str | None = None
    url: str | None = None

    def display(self) -> str:
        """Return the location for messages: the path, or the URL without its password."""
        if self.kind == "sqlite":
            return str(self.path)
        parts = urlsplit(str(self.url))
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_location(text: str | os.PathLike) -> StoreLocation:
    """Return the StoreLocation named by ``text`` (see the module docstring).

    Raises StoreUnavailable (exit 2) for an empty location or a URL scheme other than sqlite/postgresql.
    """
    raw = os.fspath(text)
    if not isinstance(raw, str) or not raw.strip():
        raise StoreUnavailable("the audit store location is empty (pass --db / --audit-db, or set "
                               "FINETUNE_POLICY_AUDIT_DB)")
    m = _SCHEME.match(raw)
    if m is None:
        return StoreLocation("sqlite", path=os.path.expanduser(raw))
    scheme = m.group(1).lower()
    if scheme in ("postgresql", "postgres"):
        return StoreLocation("postgresql", url=raw)
    if scheme == "sqlite":
        rest = raw[m.end():]
        if not rest or rest == "/":
            raise StoreUnavailable(f"{raw!r} names no file: use sqlite:///absolute/path.sqlite3")
        return StoreLocation("sqlite", path=os.path.expanduser(rest))
    raise StoreUnavailable(f"unsupported audit store URL {raw!r}: use a file path, sqlite:///path or "
                           "postgresql://user@host/dbname")


def default_db_path() -> str:
    """Return the audit store path used when none is given.

    ``$FINETUNE_POLICY_AUDIT_DB`` if set and non-empty (``~`` expanded), else
    ``~/.local/share/finetune-policy/audit.sqlite3``. Never raises.
    """
    env = os.environ.get(ENV_DB)
    if env:
        return os.path.expanduser(env)
    return os.path.join(Path.home(), ".local", "share", "finetune-policy", "audit.sqlite3")
