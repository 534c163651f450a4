"""Service settings: from `decide serve` flags or environment variables, the same for every worker.

A worker process (under `decide serve --workers N`, `uvicorn --factory ... --workers N` or gunicorn)
builds its app from the environment alone, so every setting has a variable:

    FINETUNE_POLICY_PATH            policy file or bundle directory (default: the bundled default policy)
    FINETUNE_POLICY_AUDIT_DB        audit store: a path or postgresql://... (default: the user's data dir)
    FINETUNE_POLICY_AUDIT_KEY       Ed25519 key signing the chain heads (default: unsigned)
    FINETUNE_POLICY_NO_AUDIT        1 = do not record decisions
    FINETUNE_POLICY_TOKEN           bearer token(s) clients must send, comma-separated (rotation)
    FINETUNE_POLICY_TOKEN_FILE      file with one token per line (instead of / besides the variable)
    FINETUNE_POLICY_STATE_DIR       folder the workers share: metrics and the published policy (several
                                    workers need one; default: a private temporary folder)
    FINETUNE_POLICY_MAX_BODY        largest request body in bytes (default 1 MiB)
    FINETUNE_POLICY_BODY_TIMEOUT    seconds a client may take to send a body (default 10)
    FINETUNE_POLICY_HEADER_TIMEOUT  seconds to send the request line and headers, and for a new connection
                                    to start its first request (default 10; `decide serve`'s protocol)
    FINETUNE_POLICY_DECIDE_THREADS  0 = decide on the event loop (default), N = in a pool of N threads
    FINETUNE_POLICY_ACCESS_LOG      0 = no JSON access log (default 1)
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from ..diagnostics import Diagnostic, DiagnosticError, Location

MAX_BODY = 1024 * 1024


class SettingsError(DiagnosticError):
    """A setting is invalid (exit 2), e.g. a non-numeric limit or an unreadable token file."""

    exit_code = 2


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to serve (see the module docstring for the variables)."""

    policy: str | None = None
    audit: bool = True
    audit_db: str | None = None
    audit_key: str | None = None
    tokens: tuple[str, ...] = field(default=(), repr=False)
    state_dir: str | None = None
    max_body: int = MAX_BODY
    body_timeout: float = 10.0
    header_timeout: float = 10.0
    decide_threads: int = 0
    access_log: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Return the settings the environment gives. Raises SettingsError naming the variable."""
        env = os.environ if environ is None else environ
        tokens = [t.strip() for t in env.get("FINETUNE_POLICY_TOKEN", "").split(",") if t.strip()]
        token_file = env.get("FINETUNE_POLICY_TOKEN_FILE")
        if token_file:
            tokens.extend(read_token_file(token_file))
        return cls(
            policy=env.get("FINETUNE_POLICY_PATH") or None,
            audit=not _flag(env, "FINETUNE_POLICY_NO_AUDIT", False),
            audit_db=env.get("FINETUNE_POLICY_AUDIT_DB") or None,
            audit_key=env.get("FINETUNE_POLICY_AUDIT_KEY") or None,
            tokens=tuple(tokens),
            state_dir=env.get("FINETUNE_POLICY_STATE_DIR") or None,
            max_body=int(_number(env, "FINETUNE_POLICY_MAX_BODY", MAX_BODY, int, 1024, 64 * 1024 * 1024)),
            body_timeout=_number(env, "FINETUNE_POLICY_BODY_TIMEOUT", 10.0, float, 0.1, 3600.0),
            header_timeout=_number(env, "FINETUNE_POLICY_HEADER_TIMEOUT", 10.0, float, 0.1, 3600.0),
            decide_threads=int(_number(env, "FINETUNE_POLICY_DECIDE_THREADS", 0, int, 0, 256)),
            access_log=_flag(env, "FINETUNE_POLICY_ACCESS_LOG", True),
        )

    def to_env(self) -> dict[str, str]:
        """Return the variables that give these settings to a worker process (the inverse of ``from_env``)."""
        out = {
            "FINETUNE_POLICY_NO_AUDIT": "0" if self.audit else "1",
            "FINETUNE_POLICY_MAX_BODY": str(self.max_body),
            "FINETUNE_POLICY_BODY_TIMEOUT": repr(self.body_timeout),
            "FINETUNE_POLICY_HEADER_TIMEOUT": repr(self.header_timeout),
            "FINETUNE_POLICY_DECIDE_THREADS": str(self.decide_threads),
            "FINETUNE_POLICY_ACCESS_LOG": "1" if self.access_log else "0",
            "FINETUNE_POLICY_TOKEN": ",".join(self.tokens),
            "FINETUNE_POLICY_TOKEN_FILE": "",
        }
        for name, value in (("FINETUNE_POLICY_PATH", self.policy), ("FINETUNE_POLICY_AUDIT_DB", self.audit_db),
                            ("FINETUNE_POLICY_AUDIT_KEY", self.audit_key),
                            ("FINETUNE_POLICY_STATE_DIR", self.state_dir)):
            out[name] = value or ""
        return out

    def with_(self, **changes: object) -> Settings:
        """Return a copy with ``changes`` applied (unknown names raise TypeError)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def read_token_file(path: str) -> list[str]:
    """Return the tokens in ``path`` (one per line, blank lines and ``#`` comments skipped). Raises SettingsError."""
    from ..safeio import read_regular_file

    try:
        text = read_regular_file(path, 64 * 1024).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError([Diagnostic("serve-bad-token-file", f"cannot read the token file: "
                                        f"{getattr(exc, 'strerror', None) or exc}", Location(path),
                                        "give a readable UTF-8 file with one token per line")]) from None
    tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise SettingsError([Diagnostic("serve-bad-token-file", "the token file holds no token", Location(path),
                                        "write one token per line, e.g. from `openssl rand -hex 32`")])
    return tokens


def is_loopback(host: str) -> bool:
    """Return True when ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _number(env: Mapping[str, str], name: str, default: float, kind: type, low: float, high: float) -> float | int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError([Diagnostic("serve-bad-setting", f"{name}={raw!r} is not a number", Location(name),
                                        f"give a number from {low:g} to {high:g}")]) from None
    if not low <= value <= high:
        raise SettingsError([Diagnostic("serve-bad-setting", f"{name}={raw!r} is out of range", Location(name),
                                        f"give a number from {low:g} to {high:g}")])
    return value
