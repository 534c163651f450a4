"""Signed chain heads: Ed25519 keys (``cryptography``), the signed statement, key files.

The writer holds the private key (a PKCS#8 PEM file, mode 0600, from ``decide audit keygen``) and signs the
chain head at every commit: the statement names ``seq`` and ``record_hash`` of the last record of the
transaction, and because every record_hash covers all the records before it, one valid signature vouches for
the whole chain up to that record. Auditors verify with the public key only.

The signed bytes are ``HEAD_DOMAIN`` followed by the canonical JSON of
``{"key_id", "record_hash", "seq", "signed_at"}`` (see docs/audit.md).
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from typing import Any

from .canonical import canonical_json
from .store import SigningKeyError

HEAD_DOMAIN = b"finetune-policy audit chain head v1\n"
ENV_KEY = "FINETUNE_POLICY_AUDIT_KEY"


def key_id_of(public_raw: bytes) -> str:
    """Return the key id: the first 16 hex digits of sha256 over the 32 raw public key bytes."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def head_statement(seq: int, record_hash: str, key_id: str, signed_at: str) -> bytes:
    """Return the exact bytes signed for the chain head ``seq``/``record_hash``."""
    body = {"key_id": key_id, "record_hash": record_hash, "seq": int(seq), "signed_at": signed_at}
    return HEAD_DOMAIN + canonical_json(body).encode("utf-8")


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - cryptography is a dependency
        raise SigningKeyError("signing needs the `cryptography` package (pip install cryptography)") from None
    return serialization, ed25519


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key trusted by a verifier."""

    key_id: str
    raw: bytes

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Return True when ``signature`` is this key's signature of ``message``."""
        _serialization, ed25519 = _crypto()
        from cryptography.exceptions import InvalidSignature

        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.raw).verify(bytes(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True

    @property
    def hex(self) -> str:
        """Return the 32 raw bytes as 64 hex digits."""
        return self.raw.hex()


class SigningKey:
    """An Ed25519 private key loaded from a PEM file; signs chain heads."""

    def __init__(self, private: Any, path: str | None = None):
        serialization, _ed25519 = _crypto()
        self._private = private
        self.path = path
        self.public = PublicKey("", b"")
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = PublicKey(key_id_of(raw), raw)

    @property
    def key_id(self) -> str:
        """Return the key id of the public half."""
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        return bytes(self._private.sign(message))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SigningKey:
        """Load a private key PEM (PKCS#8, unencrypted) from ``path``.

        Raises SigningKeyError when the file is missing, readable by group or others (POSIX), or not an
        Ed25519 private key.
        """
        p = os.fspath(path)
        try:
            st = os.stat(p)
        except OSError as exc:
            raise SigningKeyError(f"cannot read the audit signing key {p}: {exc.strerror}") from None
        if sys.platform != "win32" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SigningKeyError(f"the audit signing key {p} is accessible by other users (mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {p}`")
        serialization, ed25519 = _crypto()
        try:
            with open(p, "rb") as fh:
                key = serialization.load_pem_private_key(fh.read(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise SigningKeyError(f"{p} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise SigningKeyError(f"{p} holds a {type(key).__name__}, not an Ed25519 private key")
        return cls(key, p)

    @classmethod
    def generate(cls) -> SigningKey:
        """Return a new random key (not written anywhere)."""
        _serialization, ed25519 = _crypto()
        return cls(ed25519.Ed25519PrivateKey.generate())

    def write(self, private_path: str | os.PathLike, public_path: str | os.PathLike) -> None:
        """Write the private key (PKCS#8 PEM, created with mode 0600, never overwriting) and the public key
        (SubjectPublicKeyInfo PEM). Raises SigningKeyError when a file exists or cannot be written."""
        serialization, _ed25519 = _crypto()
        priv = self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
        pub = self._private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
        for target, data, mode in ((private_path, priv, 0o600), (public_path, pub, 0o644)):
            t = os.fspath(target)
            try:
                fd = os.open(t, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:
                raise SigningKeyError(f"{t} exists; refusing to overwrite a key file") from None
            except OSError as exc:
                raise SigningKeyError(f"cannot write {t}: {exc.strerror}") from None
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)


def load_public_key(path: str | os.PathLike) -> PublicKey:
    """Load a trusted public key: a PEM file (from ``keygen``), or a file holding ``ed25519:<64 hex>``.

    Raises SigningKeyError when the file cannot be read or holds no Ed25519 public key.
    """
    p = os.fspath(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the public key {p}: {exc.strerror}") from None
    text = data.decode("ascii", "replace").strip()
    if text.startswith("ed25519:"):
        try:
            raw = bytes.fromhex(text[len("ed25519:"):])
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise SigningKeyError(f"{p}: ed25519: must be followed by 64 hex digits")
        return PublicKey(key_id_of(raw), raw)
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{p} is not a PEM public key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SigningKeyError(f"{p} holds a {type(key).__name__}, not an Ed25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(key_id_of(raw), raw)


def default_key_path() -> str | None:
    """Return ``$FINETUNE_POLICY_AUDIT_KEY`` (``~`` expanded) or None when unset or empty."""
    env = os.environ.get(ENV_KEY)
    return os.path.expanduser(env) if env else None
