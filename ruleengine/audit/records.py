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
"""

from __future__ import annotations

import getpass
import hashlib
import json
import platform
import re
import socket
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from typing import IO, Any

from .store import InvalidRecord, Problem, VerifyReport

RECORD_VERSION = 1
GENESIS_HASH = "0" * 64
CHAIN_FIELDS = ("prev_hash", "record_hash")
SCHEMA_NAME = "decision-record.schema.json"
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_PROBLEMS = 100


def canonical_json(value: Any) -> str:
    """Return the canonical JSON text of ``value`` (sorted keys, no whitespace, UTF-8 text, no NaN/Infinity).

    Raises InvalidRecord if ``value`` is not JSON-safe (non-finite floats, non-string keys mixed with
    string keys, objects JSON cannot encode).
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"not canonical-JSON-safe: {exc}") from None


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


def caller_identity() -> str:
    """Return ``user@host`` for the current process (``unknown`` for a part that cannot be determined)."""
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


def schema_errors(record: dict) -> list[str]:
    """Return one message per violation of ``schemas/decision-record.schema.json`` (empty when valid).

    A record without chain fields (an envelope before ``append``) is validated as if they were present.
    """
    probe = dict(record)
    probe.setdefault("seq", 1)
    probe.setdefault("prev_hash", GENESIS_HASH)
    probe.setdefault("record_hash", GENESIS_HASH)
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


class ChainVerifier:
    """Checks records fed in chain order; collects problems into a VerifyReport.

    For every record: seq contiguity (gaps = deleted records, going back = reordered or duplicated),
    the body's own seq, the schema, index columns against the body, the link ``prev_hash`` to the previous
    record's stored ``record_hash``, and the recomputed ``record_hash``. Because each link compares with the
    previous record's *stored* hash, an edited record whose hash was recomputed is still caught by the next link.
    """

    def __init__(self, source: str, anchor: tuple[int, str] | None = None, max_problems: int = MAX_PROBLEMS):
        self.report = VerifyReport(source=source)
        self.anchor = anchor
        self.max_problems = max_problems
        self._prev_hash: str | None = GENESIS_HASH
        self._prev_seq = 0
        self._ids: set[str] = set()
        self._anchor_seen = False

    def problem(self, kind: str, message: str, seq: int | None = None, record_id: str | None = None,
                snapshot: str | None = None) -> None:
        """Add one problem (kept up to ``max_problems``; further ones set ``report.truncated``)."""
        if len(self.report.problems) >= self.max_problems:
            self.report.truncated = True
            return
        self.report.problems.append(Problem(kind, message, seq, record_id, snapshot))

    def feed(self, seq: int | None, record: dict | None, *, stored_hash: str | None = None, error: str | None = None,
             columns: dict[str, Any] | None = None) -> None:
        """Check the next record in chain order.

        ``seq`` is the position the store gives it (the SQLite column; the record's own field for JSONL);
        ``record`` the parsed full record, or None with ``error`` saying why it could not be parsed;
        ``stored_hash`` the record_hash kept beside an unparsable body (to continue the chain);
        ``columns`` index columns whose values must equal those derived from the body.
        """
        self.report.records_checked += 1
        rid = record.get("id") if isinstance(record, dict) and isinstance(record.get("id"), str) else None
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
        if record is None:
            self.problem("unreadable", error or "the record cannot be parsed", seq, rid)
            self._advance(seq, stored_hash if stored_hash and HASH_RE.match(stored_hash) else None)
            return
        if rid is not None:
            if rid in self._ids:
                self.problem("duplicate-id", f"id {rid} appears twice in the chain", seq, rid)
            self._ids.add(rid)
        body_seq = record.get("seq")
        if body_seq != seq:
            self.problem("seq-mismatch", f"the record says seq {body_seq} but is stored at seq {seq}: records were "
                                         "moved or renumbered", seq, rid)
        prev = record.get("prev_hash")
        stored = record.get("record_hash")
        if isinstance(prev, str) and prev.isascii():
            try:
                actual = compute_record_hash(record, prev)
            except InvalidRecord as exc:
                actual = None
                self.problem("unreadable", str(exc), seq, rid)
            if actual is not None and actual != stored:
                self.problem("hash-mismatch", f"content hashes to {actual[:16]}... but record_hash is "
                                              f"{str(stored)[:16]}...: the record was edited after it was written",
                             seq, rid)
        if self._prev_hash is not None and prev != self._prev_hash:
            before = "the genesis value" if self._prev_seq == 0 else f"the record_hash of seq {self._prev_seq}"
            self.problem("broken-link", f"prev_hash {str(prev)[:16]}... does not match {before} "
                                        f"({self._prev_hash[:16]}...): the previous record was altered, removed or "
                                        "moved", seq, rid)
        for name, value in (columns or {}).items():
            expected_value = _column_value(record, name)
            if value != expected_value:
                self.problem("column-mismatch", f"index column {name} is {value!r} but the record body says "
                                                f"{expected_value!r}: the row was edited", seq, rid)
        for msg in schema_errors(record):
            self.problem("schema", msg, seq, rid)
            break
        self._advance(seq, stored if isinstance(stored, str) else None)

    def _advance(self, seq: int, stored_hash: str | None) -> None:
        if self.anchor is not None and seq == self.anchor[0]:
            self._anchor_seen = True
            if stored_hash != self.anchor[1]:
                self.problem("anchor-mismatch", f"the anchor says seq {seq} has hash {self.anchor[1][:16]}... but "
                                                f"the chain has {str(stored_hash)[:16]}...: the chain was rewritten",
                             seq)
        self._prev_seq = max(seq, self._prev_seq)
        self._prev_hash = stored_hash
        self.report.head_seq = seq
        self.report.head_hash = stored_hash or ""

    def finish(self) -> VerifyReport:
        """Run the end-of-chain checks (the anchor was seen) and return the report."""
        if self.anchor is not None and not self._anchor_seen:
            self.problem("anchor-missing", f"the anchor names seq {self.anchor[0]} but the chain ends at seq "
                                           f"{self._prev_seq}: records were removed from the end")
        return self.report


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


def write_jsonl(records: Iterable[dict], out: IO[str]) -> int:
    """Write each record as one canonical JSON line (chain fields included); return the number written."""
    count = 0
    for record in records:
        out.write(canonical_json(record))
        out.write("\n")
        count += 1
    return count


def _iter_jsonl(fh: IO[str]) -> Iterator[tuple[int, dict | None, str | None]]:
    for lineno, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, None, f"line {lineno}: invalid JSON: {exc.msg}"
            continue
        if not isinstance(value, dict):
            yield lineno, None, f"line {lineno}: not a JSON object"
            continue
        yield lineno, value, None


def verify_jsonl(path: str, anchor: tuple[int, str] | None = None) -> VerifyReport:
    """Verify an exported JSONL file (one record per line, from seq 1): the same chain checks as the store.

    Policy snapshots are not part of the export, so only records are checked. Returns a VerifyReport;
    raises OSError when the file cannot be read.
    """
    verifier = ChainVerifier(source=path, anchor=anchor)
    with open(path, encoding="utf-8") as fh:
        for _lineno, record, error in _iter_jsonl(fh):
            seq = record.get("seq") if record is not None else None
            if record is None:
                seq = verifier._prev_seq + 1
            verifier.feed(seq, record, error=error)
    return verifier.finish()
