"""What both backends share: appending a batch to the chain, and walking a store for ``verify``.

A backend supplies rows and runs SQL; this module decides seq numbers, hashes, codecs, dictionaries and
signatures (``chain_batch``) and turns stored rows back into checked records (``verify_walk``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .codec import CodecError, decode, encode
from .records import (
    INDEX_COLUMNS,
    ChainVerifier,
    InvalidRecord,
    PreparedRecord,
    SignatureRow,
    hash_body_bytes,
    snapshot_hash,
    strict_loads,
    utc_now_iso,
)
from .signing import SigningKey, head_statement

STORE_KIND = "finetune-policy-audit"
STORE_VERSION = "2"
READABLE_VERSIONS = ("1", "2")
SQLITE_APPLICATION_ID = 0x46545041  # "FTPA" in the SQLite header: marks the file as an audit store


@dataclass
class ChainedRow:
    """One record row to insert: position, index columns, stored body and chain hashes."""

    seq: int
    columns: dict[str, Any]
    codec: str
    body: bytes
    dict_id: int | None
    prev_hash: str
    record_hash: str


@dataclass
class Dictionary:
    """A compression dictionary: the canonical body of one record of a policy, kept once (``dictionaries``)."""

    id: int | None
    sha256: str
    data: bytes


def chain_batch(batch: list[PreparedRecord], head_seq: int, head_hash: str,
                dictionary_for: Callable[[PreparedRecord, bytes], Dictionary | None]) -> list[ChainedRow]:
    """Return the rows that append ``batch`` after the head ``(head_seq, head_hash)``.

    ``dictionary_for(record, body)`` returns the compression dictionary for the record's policy, creating
    it from ``body`` when the policy has none yet (None: store the body uncompressed).
    """
    rows = []
    seq, prev = head_seq, head_hash
    for rec in batch:
        seq += 1
        body = rec.body_bytes(seq)
        record_hash = hash_body_bytes(body, prev)
        dictionary = dictionary_for(rec, body)
        codec, stored = encode(body, dictionary.data if dictionary is not None else None)
        rows.append(ChainedRow(seq, rec.columns, codec, stored, dictionary.id if dictionary else None, prev,
                               record_hash))
        prev = record_hash
    return rows


def new_dictionary(body: bytes) -> Dictionary:
    """Return a Dictionary (not yet stored, ``id`` None) made of one record body."""
    return Dictionary(None, hashlib.sha256(body).hexdigest(), body)


def sign_head(key: SigningKey, seq: int, record_hash: str) -> SignatureRow:
    """Return the signature row of the chain head ``seq``/``record_hash`` signed now with ``key``."""
    signed_at = utc_now_iso()
    sig = key.sign(head_statement(seq, record_hash, key.key_id, signed_at))
    return SignatureRow(seq, record_hash, key.key_id, signed_at, sig)


def verify_walk(verifier: ChainVerifier, rows: Iterable[tuple], dictionaries: dict[int, bytes]) -> dict[str, tuple]:
    """Feed every stored record row to ``verifier``; return {policy sha256: (first seq, id)} of the snapshots
    the records use.

    A row is ``(seq, id, recorded_at, policy_name, policy_sha256, method, feasible, body, codec, dict_id,
    prev_hash, record_hash)``; ``dictionaries`` maps dictionary ids to their bytes.
    """
    referenced: dict[str, tuple] = {}
    n_cols = len(INDEX_COLUMNS)
    for row in rows:
        seq = row[0]
        columns = dict(zip(INDEX_COLUMNS, row[1:1 + n_cols], strict=True))
        stored, codec, dict_id, prev_hash, record_hash = row[1 + n_cols:]
        try:
            body = decode(codec, stored, dictionaries.get(dict_id) if dict_id is not None else None)
        except CodecError as exc:
            missing = dict_id is not None and dict_id not in dictionaries
            why = f"its compression dictionary {dict_id} was deleted" if missing else str(exc)
            verifier.feed_stored(seq, None, prev_hash, record_hash, error=why, record_id=columns["id"])
            continue
        verifier.feed_stored(seq, body, prev_hash, record_hash, columns=columns, record_id=columns["id"])
        if isinstance(columns["policy_sha256"], str):
            referenced.setdefault(columns["policy_sha256"], (seq, str(columns["id"])))
    return referenced


def check_snapshots(verifier: ChainVerifier, stored: Iterable[tuple[str, Any]], referenced: dict[str, tuple]) -> None:
    """Check every stored policy snapshot ``(sha256, canonical text)`` hashes to its key, and that every
    snapshot a record uses is stored."""
    have: set[str] = set()
    for sha, text in stored:
        verifier.report.snapshots_checked += 1
        have.add(sha)
        try:
            data = strict_loads(text if isinstance(text, str) else bytes(text))
            actual = snapshot_hash(data)
        except (ValueError, TypeError, InvalidRecord) as exc:
            verifier.problem("snapshot-unreadable", f"not a policy snapshot: {exc}", snapshot=sha)
            continue
        if actual != sha:
            verifier.problem("snapshot-hash-mismatch", f"content hashes to {actual[:16]}...: the stored policy "
                                                       "files were edited", snapshot=sha)
    for sha, (seq, rid) in sorted(referenced.items(), key=lambda kv: kv[1][0]):
        if sha not in have:
            verifier.problem("snapshot-missing", f"policy snapshot {sha[:16]}... used by this record is not "
                                                 "stored: it was deleted", seq=seq, record_id=rid)


def check_dictionaries(verifier: ChainVerifier, stored: Iterable[tuple[int, str, bytes]]) -> dict[int, bytes]:
    """Check each compression dictionary ``(id, sha256, data)`` hashes to its sha256; return {id: data}.

    An edited dictionary is reported here and, since zlib refuses a stream made with another dictionary,
    again at every record that uses it.
    """
    out: dict[int, bytes] = {}
    for dict_id, sha, data in stored:
        blob = bytes(data)
        if hashlib.sha256(blob).hexdigest() != sha:
            verifier.problem("dictionary-hash-mismatch", f"compression dictionary {dict_id} does not hash to its "
                                                         "sha256: it was edited")
        out[int(dict_id)] = blob
    return out


def guard_problem(verifier: ChainVerifier, missing: list[str]) -> None:
    """Report dropped append-only guards (triggers)."""
    if missing:
        verifier.problem("guard-removed", "append-only trigger(s) dropped: " + ", ".join(missing))


def head_problem(verifier: ChainVerifier, meta_seq: Any, meta_hash: Any) -> None:
    """Report a head kept in the store that is not the last record of the chain."""
    from .records import GENESIS_HASH

    head_seq, head_hash = verifier.report.head_seq, verifier.report.head_hash or GENESIS_HASH
    if str(meta_seq) != str(head_seq) or meta_hash != head_hash:
        verifier.problem("head-mismatch", f"the store's head is seq {meta_seq} ({str(meta_hash)[:16]}...) but the "
                                          f"chain ends at seq {head_seq} ({head_hash[:16]}...): records were removed "
                                          "from the end or the head was edited")


def now_iso() -> str:
    """Return the current UTC time as the records write it."""
    return utc_now_iso()
