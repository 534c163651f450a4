"""Decision records: the envelope around a decision, canonical JSON, the hash chain and its verification.

A record (``schemas/decision-record.schema.json``, ``record_version`` 1) is::

    {"record_version": 1, "seq": 7, "id": "<decision_id>", "recorded_at": "2025-01-02T03:04:05.123456Z",
     "caller": "alice@host", "versions": {"finetune_policy": "0.1.0", "durable_rules": "2.0.28", "python": "3.11.7"},
     "policy": {"name": "default", "version": "1.0.0", "sha256": "<64 hex>"},
     "decision": { ... Decision.to_dict(), whole ... },
     "prev_hash": "<64 hex>", "record_hash": "<64 hex>"}

The *body* is the record without ``prev_hash`` and ``record_hash``;
``record_hash = sha256(canonical_json(body).encode("utf-8") + prev_hash.encode("ascii"))`` as lowercase hex, and
``prev_hash`` of the first record (seq 1) is ``GENESIS_HASH`` (64 zeros). Canonical JSON is
``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)``.

Verification hashes the body bytes exactly as stored (``hash_body_bytes``), never a re-serialisation of what
was parsed, and parses them with ``strict_loads``, which refuses duplicate keys (a body that would read one way
to this code and another way to SQL's JSON functions).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import platform
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from typing import IO, Any

from .canonical import canonical_json
from .store import InvalidRecord, Problem, VerifyReport

RECORD_VERSION = 1
GENESIS_HASH = "0" * 64
CHAIN_FIELDS = ("prev_hash", "record_hash")
SCHEMA_NAME = "decision-record.schema.json"
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_PROBLEMS = 100


def json_safe_copy(value: Any) -> Any:
    """Return a deep copy of ``value`` as it reads back from JSON (tuples become lists, keys strings).

    Raises InvalidRecord when ``value`` cannot be encoded as standard JSON (e.g. NaN or an object).
    """
    try:
        return json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"the decision is not JSON-safe: {exc}") from None


def record_body(record: dict) -> dict:
    """Return the hashed part of ``record``: everything except ``prev_hash`` and ``record_hash``."""
    return {k: v for k, v in record.items() if k not in CHAIN_FIELDS}


def compute_record_hash(body: dict, prev_hash: str) -> str:
    """Return ``sha256(canonical_json(body) + prev_hash)`` as 64 lowercase hex digits.

    ``body`` may be a full record: the chain fields are dropped first. Raises InvalidRecord if the body is
    not JSON-safe.
    """
    return hash_canonical_text(canonical_json(record_body(body)), prev_hash)


def hash_canonical_text(body_text: str, prev_hash: str) -> str:
    """Return ``sha256(body_text + prev_hash)`` as hex, for a body already in canonical JSON text."""
    return hashlib.sha256(body_text.encode("utf-8") + prev_hash.encode("ascii")).hexdigest()


def hash_body_bytes(body: bytes, prev_hash: str) -> str:
    """Return ``sha256(body + prev_hash)`` as hex: the record hash of stored canonical body bytes."""
    return hashlib.sha256(bytes(body) + prev_hash.encode("ascii")).hexdigest()


class DuplicateKey(ValueError):
    """A JSON object has the same key twice."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise DuplicateKey(f"the key {dup!r} appears twice in one object")
    return out


def strict_loads(data: bytes | str) -> Any:
    """Parse JSON text that must be unambiguous: UTF-8, no duplicate keys, no NaN/Infinity.

    Raises DuplicateKey for a repeated key and ValueError (json.JSONDecodeError, UnicodeDecodeError) for
    anything that is not standard JSON.
    """
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray, memoryview)) else data

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not standard JSON")

    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=no_constant)


def snapshot_hash(snapshot: dict) -> str:
    """Return the content hash of a policy snapshot ``{"root", "files"}`` (``ruleengine.policy.snapshot_sha256``:
    sha256 over the canonical JSON of ``{"root": ..., "files": {...}}``). Raises InvalidRecord if the
    snapshot lacks ``root`` or ``files``."""
    from ..policy.model import snapshot_sha256

    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("files"), dict) or "root" not in snapshot:
        raise InvalidRecord('a policy snapshot must be {"root": name, "files": {name: text}}')
    return snapshot_sha256(snapshot)


def utc_now_iso(now: datetime | None = None) -> str:
    """Return ``now`` (default: the current time) as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@lru_cache(maxsize=1)
def caller_identity() -> str:
    """Return ``user@host`` for the current process (``unknown`` for a part that cannot be determined); looked up
    once per process (a passwd lookup per record cost as much as signing it)."""
    try:
        user = getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (containers)
        user = "unknown"
    try:
        host = socket.gethostname() or "unknown"
    except OSError:
        host = "unknown"
    return f"{user}@{host}"


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=1)
def runtime_versions() -> dict[str, str]:
    """Return the versions that can change a decision: finetune-policy, durable_rules and Python."""
    return {
        "finetune_policy": _dist_version("finetune-policy"),
        "durable_rules": _dist_version("durable_rules"),
        "python": platform.python_version(),
    }


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    from ..paths import load_schema

    schema = load_schema(SCHEMA_NAME)
    return jsonschema.Draft202012Validator(schema)


@lru_cache(maxsize=1)
def _fast_validator() -> Any:
    """jsonschema-rs's compiled validator of the record schema (Draft 2020-12, microseconds per record).

    tests/ruleengine/audit/test_records.py checks it agrees with jsonschema on valid and broken records.
    """
    import jsonschema_rs

    from ..paths import load_schema

    return jsonschema_rs.validator_for(load_schema(SCHEMA_NAME))


def record_is_valid(record: dict) -> bool:
    """Return True when ``record`` (a full record, chain fields included) matches the record schema.

    ``schema_errors`` says why not.
    """
    try:
        return bool(_fast_validator().is_valid(record))
    except (ValueError, TypeError, OverflowError):  # a value jsonschema-rs cannot take: ask jsonschema
        return bool(_validator().is_valid(record))


def schema_errors(record: dict) -> list[str]:
    """Return one message per violation of ``schemas/decision-record.schema.json`` (empty when valid).

    A record without chain fields (an envelope before ``append``) is validated as if they were present.
    """
    probe = dict(record)
    probe.setdefault("seq", 1)
    probe.setdefault("prev_hash", GENESIS_HASH)
    probe.setdefault("record_hash", GENESIS_HASH)
    if record_is_valid(probe):
        return []
    out = []
    for err in sorted(_validator().iter_errors(probe), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "<record>"
        out.append(f"{where}: {err.message}")
    return out


def build_record(decision: dict, policy_sha256: str, *, now: datetime | None = None, caller: str | None = None,
                 versions: dict[str, str] | None = None) -> dict:
    """Return a record envelope (no seq, prev_hash or record_hash yet) around a ``Decision.to_dict()``.

    The record id is the decision's ``decision_id``; policy name and version come from ``decision["policy"]``.
    Raises InvalidRecord if the decision is not JSON-safe, has no ULID ``decision_id`` or names a different
    policy sha256. The full schema check happens in ``AuditStore.append``.
    """
    if not isinstance(decision, dict):
        raise InvalidRecord(f"a decision must be a dict (Decision.to_dict()), not {type(decision).__name__}")
    data = json_safe_copy(decision)
    decision_id = data.get("decision_id")
    if not isinstance(decision_id, str) or not ULID_RE.match(decision_id):
        raise InvalidRecord(f"decision_id must be a 26-character ULID, got {decision_id!r}")
    if not isinstance(policy_sha256, str) or not HASH_RE.match(policy_sha256):
        raise InvalidRecord(f"policy_sha256 must be 64 lowercase hex digits, got {policy_sha256!r}")
    pol = data.get("policy") if isinstance(data.get("policy"), dict) else {}
    if pol.get("sha256") not in (None, policy_sha256):
        raise InvalidRecord(f"the decision was made with policy {pol.get('sha256')} but the snapshot given is "
                            f"{policy_sha256}")
    record = {
        "record_version": RECORD_VERSION,
        "id": decision_id,
        "recorded_at": utc_now_iso(now),
        "caller": caller if caller is not None else caller_identity(),
        "versions": dict(versions) if versions is not None else dict(runtime_versions()),
        "policy": {"name": pol.get("name"), "version": pol.get("version"), "sha256": policy_sha256},
        "decision": data,
    }
    if not isinstance(record["caller"], str) or not record["caller"]:
        raise InvalidRecord("caller must be a non-empty string (user@host)")
    return record  # the full schema is checked once, by AuditStore.append


def _plain_keys(value: Any) -> bool:
    """Return True when every object key in ``value`` is a str (so sort_keys order is the canonical order)."""
    t = type(value)
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                return False
            tv = type(v)
            if (tv is dict or tv is list or tv is tuple) and not _plain_keys(v):
                return False
        return True
    if t is list or t is tuple:
        for v in value:
            tv = type(v)
            if (tv is dict or tv is list or tv is tuple) and not _plain_keys(v):
                return False
    return True


@lru_cache(maxsize=64)
def _head_text(caller: Any) -> str:
    """The body text before the decision: ``{"caller":...,"decision":`` (the same caller for every record of
    a process, so made once)."""
    return canonical_json({"caller": caller})[:-1] + ',"decision":'


@lru_cache(maxsize=64)
def _tail_text(versions: tuple) -> str:
    """The body text after ``"seq":N``: ``,"versions":{...}}`` (made once per set of versions)."""
    return "," + canonical_json({"versions": dict(versions)})[1:]


class PreparedRecord:
    """A record ready to be chained: the envelope, the canonical JSON of its decision, its index columns.

    ``body_bytes(seq)`` returns the canonical body for the seq the store assigns, assembled around the
    decision text serialised once (the keys of a body sort as caller, decision, id, policy, record_version,
    recorded_at, seq, versions). Built by ``prepare_record`` (from a decision) or ``from_envelope`` (from
    ``build_record``'s envelope). Pickles as its texts, without the decision dict (``decide batch`` prepares
    records in its worker processes and sends them to the one that appends); ``envelope`` then parses the
    decision back from ``decision_text`` when asked.
    """

    __slots__ = ("_envelope", "decision_text", "columns", "id", "policy_sha256", "_head", "_middle", "_tail")

    def __init__(self, envelope: dict, decision_text: str):
        self._envelope = envelope
        self.decision_text = decision_text
        small = {k: v for k, v in envelope.items() if k not in ("decision", "caller", "versions")}
        self._head = _head_text(envelope["caller"])
        self._middle = "," + canonical_json(small)[1:-1] + ',"seq":'
        versions = envelope["versions"]
        self._tail = _tail_text(tuple(versions.items())) if type(versions) is dict else \
            "," + canonical_json({"versions": versions})[1:]
        self.columns = index_columns(envelope)
        self.id = str(envelope["id"])  # the record id (the decision's ULID)
        self.policy_sha256 = str(envelope["policy"]["sha256"])  # the sha256 of the record's policy snapshot

    @property
    def envelope(self) -> dict:
        """Return the envelope (no seq or chain fields), its decision as recorded."""
        if "decision" not in self._envelope:
            self._envelope = {**self._envelope, "decision": json.loads(self.decision_text)}
        return self._envelope

    def __reduce__(self) -> tuple:
        light = {k: v for k, v in self._envelope.items() if k != "decision"}
        return _restore_prepared, (light, self.decision_text, self.columns, self._head, self._middle, self._tail)

    def body_bytes(self, seq: int) -> bytes:
        """Return the canonical JSON body (UTF-8) of this record at position ``seq``."""
        return (self._head + self.decision_text + self._middle + str(int(seq)) + self._tail).encode("utf-8")

    @classmethod
    def from_envelope(cls, record: dict) -> PreparedRecord:
        """Prepare an envelope from ``build_record`` (no seq/prev_hash/record_hash).

        Raises InvalidRecord when the record is already chained, not JSON-safe, or fails the schema.
        """
        if any(k in record for k in ("seq", *CHAIN_FIELDS)):
            raise InvalidRecord("append takes an envelope without seq/prev_hash/record_hash; the store chains it")
        errors = schema_errors(record)
        if errors:
            raise InvalidRecord("the record does not match schemas/decision-record.schema.json: "
                                + "; ".join(errors[:5]))
        _decision, text = canonical_decision(record["decision"])
        return cls(dict(record), text)


def _restore_prepared(light: dict, decision_text: str, columns: dict, head: str, middle: str,
                      tail: str) -> PreparedRecord:
    """Rebuild a pickled PreparedRecord from its texts (no re-serialisation)."""
    rec = PreparedRecord.__new__(PreparedRecord)
    rec._envelope = light
    rec.decision_text = decision_text
    rec.columns = columns
    rec.id = str(light["id"])
    rec.policy_sha256 = str(light["policy"]["sha256"])
    rec._head, rec._middle, rec._tail = head, middle, tail
    return rec


# An object key that was not a str in Python: json writes an int or float key as "<number>" and True, False, None
# as "true", "false", "null". In canonical text a key starts right after an unescaped quote (a quote inside a string
# is written \"), so every such key matches; a str key that merely looks like one ("7b", "null") is a false
# alarm that costs one walk (``_plain_keys``), never a wrong answer.
_NON_STR_KEY = re.compile(r'"(?:[-0-9][^"]*|true|false|null)":')


# canonical_json's settings without the cycle check (a cycle ends in RecursionError, then canonical_json, which
# checks, says so): ~6 % faster on a decision
_FAST_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                                 check_circular=False)


def canonical_decision(decision: dict) -> tuple[dict, str]:
    """Return ``(decision, its canonical JSON text)``; the decision is a JSON copy when it had non-str keys.

    Serialises once and scans the text for keys that were not strings (~35 µs for a 26 KB decision, against
    ~120 µs for walking every value first): ``sort_keys`` orders int keys as numbers, so such a text would not
    be the canonical JSON of what it parses to; only then is the decision walked and, if needed, copied as it
    reads back from JSON. Raises InvalidRecord when it is not JSON-safe.
    """
    try:
        text = _FAST_ENCODER.encode(decision)
    except (TypeError, ValueError, RecursionError):  # mixed key types, not JSON-safe, a cycle: decided below
        text = None
    if text is None or _NON_STR_KEY.search(text) is not None:
        try:
            plain = _plain_keys(decision)
        except RecursionError:
            raise InvalidRecord("the decision is not JSON-safe: it contains itself or nests too deep") from None
        if not plain:  # non-str keys would sort differently once they are strings: copy first
            decision = json_safe_copy(decision)
        text = canonical_json(decision)
    return decision, text


def prepare_record(decision: dict, policy_sha256: str, *, now: datetime | None = None, caller: str | None = None,
                   versions: dict[str, str] | None = None) -> PreparedRecord:
    """Return the PreparedRecord of a ``Decision.to_dict()``: serialised once, schema-checked, not copied.

    The fast path of ``AuditWriter.append`` (``build_record`` + ``PreparedRecord.from_envelope`` give the same
    bytes through a deep copy). Raises InvalidRecord like ``build_record``, or when the record fails the schema.
    """
    if not isinstance(decision, dict):
        raise InvalidRecord(f"a decision must be a dict (Decision.to_dict()), not {type(decision).__name__}")
    decision, text = canonical_decision(decision)
    decision_id = decision.get("decision_id")
    if not isinstance(decision_id, str) or not ULID_RE.match(decision_id):
        raise InvalidRecord(f"decision_id must be a 26-character ULID, got {decision_id!r}")
    if not isinstance(policy_sha256, str) or not HASH_RE.match(policy_sha256):
        raise InvalidRecord(f"policy_sha256 must be 64 lowercase hex digits, got {policy_sha256!r}")
    raw_pol = decision.get("policy")
    pol: dict = raw_pol if isinstance(raw_pol, dict) else {}
    if pol.get("sha256") not in (None, policy_sha256):
        raise InvalidRecord(f"the decision was made with policy {pol.get('sha256')} but the snapshot given is "
                            f"{policy_sha256}")
    envelope = {
        "record_version": RECORD_VERSION,
        "id": decision_id,
        "recorded_at": utc_now_iso(now),
        "caller": caller if caller is not None else caller_identity(),
        "versions": dict(versions) if versions is not None else dict(runtime_versions()),
        "policy": {"name": pol.get("name"), "version": pol.get("version"), "sha256": policy_sha256},
        "decision": decision,
    }
    if not isinstance(envelope["caller"], str) or not envelope["caller"]:
        raise InvalidRecord("caller must be a non-empty string (user@host)")
    probe = dict(envelope, seq=1, prev_hash=GENESIS_HASH, record_hash=GENESIS_HASH)
    if not record_is_valid(probe):
        # a tuple where the schema wants an array is still JSON-safe: judge the copy as it reads back
        probe["decision"] = json.loads(text)
        if not record_is_valid(probe):
            raise InvalidRecord("the record does not match schemas/decision-record.schema.json: "
                                + "; ".join(schema_errors(probe)[:5]))
    return PreparedRecord(envelope, text)


def verdict_of(record: dict) -> dict | None:
    """Return the decision's verdict dict, or None when the decision was infeasible."""
    verdict = (record.get("decision") or {}).get("verdict")
    return verdict if isinstance(verdict, dict) else None


def method_of(record: dict) -> str | None:
    """Return the chosen method of the record's decision, or None when infeasible."""
    verdict = verdict_of(record)
    return verdict.get("method") if verdict else None


def summarize(record: dict) -> dict[str, Any]:
    """Return the fields shown by ``decide audit list``: seq, id, time, caller, policy, method, rank, feasible."""
    decision = record.get("decision") or {}
    verdict = verdict_of(record)
    policy = record.get("policy") or {}
    return {
        "seq": record.get("seq"),
        "id": record.get("id"),
        "recorded_at": record.get("recorded_at"),
        "caller": record.get("caller"),
        "policy": {"name": policy.get("name"), "version": policy.get("version"), "sha256": policy.get("sha256")},
        "feasible": decision.get("feasible"),
        "method": verdict.get("method") if verdict else None,
        "rank": verdict.get("rank") if verdict else None,
        "chosen_rule": decision.get("chosen_rule"),
        "use_case": ((decision.get("facts") or {}).get("given") or {}).get("task", {}).get("use_case")
        if isinstance(((decision.get("facts") or {}).get("given") or {}).get("task"), dict) else None,
        "record_hash": record.get("record_hash"),
    }


@dataclass(frozen=True)
class SignatureRow:
    """One stored signature of a chain head: ``key_id`` signed ``head_statement(seq, record_hash, ...)``."""

    seq: int
    record_hash: str
    key_id: str
    signed_at: str
    signature: bytes


class ChainVerifier:
    """Checks records fed in chain order; collects problems into a VerifyReport.

    For every record: seq contiguity (gaps = deleted records, going back = reordered or duplicated), the hash of
    the body bytes exactly as stored, the link ``prev_hash`` to the previous record's stored ``record_hash``,
    the body's own seq, duplicate keys, the schema, and index columns against the body. Because each link
    compares with the previous record's *stored* hash, an edited record whose hash was recomputed is still
    caught by the next link. Signed heads (``expect_signatures``) are checked against the chain as it goes.
    """

    def __init__(self, source: str, anchor: tuple[int, str] | None = None, max_problems: int = MAX_PROBLEMS,
                 check_schema: bool = True):
        self.report = VerifyReport(source=source)
        self.anchor = anchor
        self.max_problems = max_problems
        self.check_schema = check_schema
        self._prev_hash: str | None = GENESIS_HASH
        self._prev_seq = 0
        self._ids: set[str] = set()
        self._anchor_seen = False
        self._signatures: dict[int, list[SignatureRow]] = {}
        self._signed_hash_ok: set[tuple[int, str]] = set()  # (seq, key_id) whose signed hash matched the chain
        self._trusted: dict[str, Any] = {}
        self._proven = False
        self._all_signatures = False

    def problem(self, kind: str, message: str, seq: int | None = None, record_id: str | None = None,
                snapshot: str | None = None) -> None:
        """Add one problem (kept up to ``max_problems``; further ones set ``report.truncated``)."""
        if len(self.report.problems) >= self.max_problems:
            self.report.truncated = True
            return
        self.report.problems.append(Problem(kind, message, seq, record_id, snapshot))

    # -- records ------------------------------------------------------------------------------------------------

    def _check_seq(self, seq: Any, rid: str | None) -> int:
        if not isinstance(seq, int) or isinstance(seq, bool):
            self.problem("bad-seq", f"seq is {seq!r}, not an integer", None, rid)
            seq = self._prev_seq + 1
        expected = self._prev_seq + 1
        if seq > expected:
            missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
            self.problem("seq-gap", f"{missing} missing before this record: records were deleted", seq, rid)
        elif seq < expected:
            self.problem("seq-order", f"seq {seq} comes after seq {self._prev_seq}: records were reordered or "
                                      "duplicated", seq, rid)
        return int(seq)

    def feed_stored(self, seq: int, body: bytes | None, prev_hash: Any, record_hash: Any, *,
                    error: str | None = None, columns: dict[str, Any] | None = None,
                    record_id: str | None = None) -> dict | None:
        """Check the next record of a store: ``body`` is the canonical body exactly as stored (decoded by its
        codec), or None with ``error`` saying why it could not be decoded. Returns the parsed record (chain
        fields added) or None when it cannot be parsed."""
        self.report.records_checked += 1
        seq = self._check_seq(seq, record_id)
        stored = record_hash if isinstance(record_hash, str) else None
        if body is None:
            self.problem("unreadable", error or "the record cannot be decoded", seq, record_id)
            self._link(seq, prev_hash, record_id)
            self._advance(seq, stored if stored and HASH_RE.match(stored) else None)
            return None
        if isinstance(prev_hash, str) and prev_hash.isascii():
            actual = hash_body_bytes(body, prev_hash)
            if actual != stored:
                self.problem("hash-mismatch", f"content hashes to {actual[:16]}... but record_hash is "
                                              f"{str(stored)[:16]}...: the record was edited after it was written",
                             seq, record_id)
        try:
            record = strict_loads(body)
            if not isinstance(record, dict):
                raise ValueError("the body is not a JSON object")
        except DuplicateKey as exc:
            self.problem("duplicate-key", f"{exc}: the record reads differently to different JSON readers",
                         seq, record_id)
            record = None
        except ValueError as exc:
            self.problem("unreadable", f"the body is not a JSON object: {exc}", seq, record_id)
            record = None
        if record is None:
            self._link(seq, prev_hash, record_id)
            self._advance(seq, stored)
            return None
        record["prev_hash"] = prev_hash
        record["record_hash"] = record_hash
        self._check_record(seq, record, columns, prev_hash)
        self._advance(seq, stored)
        return record

    def feed(self, seq: int | None, record: dict | None, *, error: str | None = None) -> None:
        """Check the next record of a JSONL export: ``record`` is the parsed line (chain fields included), or
        None with ``error``. The body bytes hashed are its canonical JSON (the line was checked canonical)."""
        rid = record.get("id") if isinstance(record, dict) and isinstance(record.get("id"), str) else None
        if record is None:
            self.report.records_checked += 1
            seq = self._check_seq(seq if seq is not None else self._prev_seq + 1, rid)
            self.problem("unreadable", error or "the record cannot be parsed", seq, rid)
            self._advance(seq, None)
            return
        prev = record.get("prev_hash")
        try:
            body = canonical_json(record_body(record)).encode("utf-8")
        except InvalidRecord as exc:
            self.report.records_checked += 1
            seq = self._check_seq(seq, rid)
            self.problem("unreadable", str(exc), seq, rid)
            self._advance(seq, None)
            return
        self.feed_stored(seq, body, prev, record.get("record_hash"), record_id=rid)  # type: ignore[arg-type]

    def _link(self, seq: int, prev: Any, rid: str | None) -> None:
        if self._prev_hash is not None and prev != self._prev_hash:
            before = "the genesis value" if self._prev_seq == 0 else f"the record_hash of seq {self._prev_seq}"
            self.problem("broken-link", f"prev_hash {str(prev)[:16]}... does not match {before} "
                                        f"({self._prev_hash[:16]}...): the previous record was altered, removed or "
                                        "moved", seq, rid)

    def _check_record(self, seq: int, record: dict, columns: dict[str, Any] | None, prev_hash: Any) -> None:
        rid = record.get("id") if isinstance(record.get("id"), str) else None
        if rid is not None:
            if rid in self._ids:
                self.problem("duplicate-id", f"id {rid} appears twice in the chain", seq, rid)
            self._ids.add(rid)
        body_seq = record.get("seq")
        if body_seq != seq:
            self.problem("seq-mismatch", f"the record says seq {body_seq} but is stored at seq {seq}: records were "
                                         "moved or renumbered", seq, rid)
        self._link(seq, prev_hash, rid)
        for name, value in (columns or {}).items():
            expected_value = _column_value(record, name)
            if value != expected_value:
                self.problem("column-mismatch", f"index column {name} is {value!r} but the record body says "
                                                f"{expected_value!r}: the row was edited", seq, rid)
        if self.check_schema and not record_is_valid(record):
            for msg in schema_errors(record)[:1]:
                self.problem("schema", msg, seq, rid)

    def _advance(self, seq: int, stored_hash: str | None) -> None:
        if self.anchor is not None and seq == self.anchor[0]:
            self._anchor_seen = True
            if stored_hash != self.anchor[1]:
                self.problem("anchor-mismatch", f"the anchor says seq {seq} has hash {self.anchor[1][:16]}... but "
                                                f"the chain has {str(stored_hash)[:16]}...: the chain was rewritten",
                             seq)
        for sig in self._signatures.get(seq, ()):
            if stored_hash == sig.record_hash:
                self._signed_hash_ok.add((seq, sig.key_id))
            elif sig.key_id in self._trusted:
                self.problem("signed-hash-mismatch", f"key {sig.key_id} signed record_hash "
                                                     f"{sig.record_hash[:16]}... for this seq but the chain has "
                                                     f"{str(stored_hash)[:16]}...: the chain up to here was "
                                                     "rewritten", seq)
        self._prev_seq = max(seq, self._prev_seq)
        self._prev_hash = stored_hash
        self.report.head_seq = seq
        self.report.head_hash = stored_hash or ""

    # -- signatures ---------------------------------------------------------------------------------------------

    def expect_signatures(self, rows: Iterable[SignatureRow], keys: dict[str, Any], *, proven: bool,
                          all_signatures: bool = False) -> None:
        """Give the stored head signatures before the records are fed.

        ``keys`` maps key ids to ``signing.PublicKey``: the auditor's ``--public-key``s when ``proven`` is True,
        else the public keys kept in the store itself (which an attacker with write access could replace:
        such a check catches careless edits, not a forger). ``all_signatures`` checks every signature
        cryptographically; otherwise only from the newest back to the first valid one (which vouches for the
        whole chain below it) while every signature's hash is still compared with the chain.
        """
        for row in rows:
            self._signatures.setdefault(int(row.seq), []).append(row)
        self._trusted = dict(keys)
        self._proven = proven
        self._all_signatures = all_signatures

    def _finish_signatures(self) -> None:
        rows = sorted((r for rs in self._signatures.values() for r in rs), key=lambda r: -r.seq)
        info: dict[str, Any] = {"count": len(rows), "proven": self._proven, "keys": sorted(self._trusted),
                                "covered_seq": 0, "checked": 0, "other_keys": 0}
        covered = 0
        head = self.report.head_seq
        for row in rows:
            key = self._trusted.get(row.key_id)
            if key is None:
                info["other_keys"] += 1
                if not self._proven:
                    self.problem("signature-key-missing", f"signed by key {row.key_id}, whose public key is not "
                                                          "in the store", row.seq)
                continue
            if covered and not self._all_signatures:
                continue
            info["checked"] += 1
            statement = _head_statement(row.seq, row.record_hash, row.key_id, row.signed_at)
            if not key.verify(statement, row.signature):
                self.problem("bad-signature", f"the signature by key {row.key_id} of seq {row.seq} does not verify: "
                                              "it was forged or altered", row.seq)
                continue
            if row.seq > head:
                self.problem("signed-head-missing", f"key {row.key_id} signed the chain up to seq {row.seq} but it "
                                                    f"ends at seq {head}: records were removed from the end",
                             row.seq)
                continue
            if (row.seq, row.key_id) in self._signed_hash_ok:
                covered = max(covered, row.seq)
        info["covered_seq"] = covered
        if head > covered and (self._proven or rows):
            whom = "a trusted key (--public-key)" if self._proven else "any key"
            first = covered + 1
            span = f"seq {first}" if first == head else f"seq {first}..{head}"
            self.problem("unsigned-records", f"{span} carry no valid signature by {whom}: appended or rewritten by "
                                             "someone without the signing key", first)
        self.report.signatures = info

    def finish(self) -> VerifyReport:
        """Run the end-of-chain checks (the anchor was seen, signatures cover the chain) and return the report."""
        if self.anchor is not None and not self._anchor_seen:
            self.problem("anchor-missing", f"the anchor names seq {self.anchor[0]} but the chain ends at seq "
                                           f"{self._prev_seq}: records were removed from the end")
        self._finish_signatures()
        return self.report


def _head_statement(seq: int, record_hash: str, key_id: str, signed_at: str) -> bytes:
    from .signing import head_statement

    return head_statement(seq, record_hash, key_id, signed_at)


INDEX_COLUMNS = ("id", "recorded_at", "policy_name", "policy_sha256", "method", "feasible")


def _column_value(record: dict, name: str) -> Any:
    policy = record.get("policy") or {}
    if name == "id":
        return record.get("id")
    if name == "recorded_at":
        return record.get("recorded_at")
    if name == "policy_name":
        return policy.get("name")
    if name == "policy_sha256":
        return policy.get("sha256")
    if name == "method":
        return method_of(record)
    if name == "feasible":
        feasible = (record.get("decision") or {}).get("feasible")
        return None if feasible is None else int(bool(feasible))
    raise KeyError(name)


def index_columns(record: dict) -> dict[str, Any]:
    """Return the SQLite index column values derived from a record body (used on insert and by verify)."""
    return {name: _column_value(record, name) for name in INDEX_COLUMNS}


SIGNATURE_LINE = "head_signature"


def write_jsonl(records: Iterable[dict], out: IO[str], signatures: Iterable[SignatureRow] = ()) -> int:
    """Write each record as one canonical JSON line (chain fields included), then each head signature as a line
    ``{"head_signature": {"key_id", "record_hash", "seq", "signature" (hex), "signed_at"}}``; return the number
    of records written."""
    count = 0
    for record in records:
        out.write(canonical_json(record))
        out.write("\n")
        count += 1
    for sig in signatures:
        out.write(canonical_json({SIGNATURE_LINE: {"key_id": sig.key_id, "record_hash": sig.record_hash,
                                                   "seq": sig.seq, "signature": sig.signature.hex(),
                                                   "signed_at": sig.signed_at}}))
        out.write("\n")
    return count


def _signature_of(value: dict) -> SignatureRow | None:
    """Return the SignatureRow of a ``head_signature`` line, or None when the line is not one (or malformed)."""
    if set(value) != {SIGNATURE_LINE} or not isinstance(value[SIGNATURE_LINE], dict):
        return None
    sig = value[SIGNATURE_LINE]
    try:
        return SignatureRow(int(sig["seq"]), str(sig["record_hash"]), str(sig["key_id"]), str(sig["signed_at"]),
                            bytes.fromhex(str(sig["signature"])))
    except (KeyError, TypeError, ValueError):
        return None


def _iter_jsonl(fh: IO[str]) -> Iterator[tuple[int, dict | None, str | None, str | None]]:
    """Yield (line number, parsed object or None, parse error, problem kind for an ambiguous line)."""
    for lineno, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            value = strict_loads(line)
        except DuplicateKey as exc:
            yield lineno, None, f"line {lineno}: {exc}", "duplicate-key"
            continue
        except ValueError as exc:
            yield lineno, None, f"line {lineno}: invalid JSON: {getattr(exc, 'msg', exc)}", None
            continue
        if not isinstance(value, dict):
            yield lineno, None, f"line {lineno}: not a JSON object", None
            continue
        try:
            canonical = canonical_json(value) == line.rstrip("\r\n")
        except InvalidRecord:
            canonical = False
        yield lineno, value, None, None if canonical else "not-canonical"


def verify_jsonl(path: str, anchor: tuple[int, str] | None = None, public_keys: list[Any] | None = None, *,
                 all_signatures: bool = False) -> VerifyReport:
    """Verify an exported JSONL file (one record per line, from seq 1, then any head-signature lines): the same
    chain checks as the store, and with ``public_keys`` the signed heads exported with ``--signatures``.

    Each line must be the canonical JSON of its record (so the bytes hashed are exactly the line's, re-ordered
    around the chain fields); a line that is not is reported ``not-canonical``. Policy snapshots are not part
    of the export, so only records are checked. Returns a VerifyReport; raises OSError when the file cannot
    be read.
    """
    verifier = ChainVerifier(source=path, anchor=anchor)
    verifier.report.bytes_hashed = False
    if public_keys:
        with open(path, encoding="utf-8") as fh:
            sigs = [s for _n, v, _e, _k in _iter_jsonl(fh) if v is not None and (s := _signature_of(v))]
        verifier.expect_signatures(sigs, {k.key_id: k for k in public_keys}, proven=True,
                                   all_signatures=all_signatures)
    with open(path, encoding="utf-8") as fh:
        for lineno, record, error, kind in _iter_jsonl(fh):
            if record is not None and SIGNATURE_LINE in record and _signature_of(record) is not None:
                continue
            seq = record.get("seq") if record is not None else verifier._prev_seq + 1
            if kind == "duplicate-key":
                verifier.report.records_checked += 1
                seq = verifier._check_seq(seq, None)
                verifier.problem("duplicate-key", f"{error}: the record reads differently to different JSON "
                                                  "readers", seq)
                verifier._advance(seq, None)
                continue
            if kind == "not-canonical" and record is not None:
                verifier.problem("not-canonical", f"line {lineno} is not the canonical JSON of its record: it was "
                                                  "edited or re-encoded", seq if isinstance(seq, int) else None,
                                 record.get("id") if isinstance(record.get("id"), str) else None)
            verifier.feed(seq, record, error=error)
    return verifier.finish()
