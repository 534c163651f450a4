"""Replay: re-evaluate recorded decisions, with their stored policy snapshot or with a new policy, and diff.

Compared fields (``COMPARED``): ``feasible``, ``verdict`` (field by field), ``chosen_rule``, ``matched_rules``
and ``warnings``. Everything else in a decision (ids, timestamps, metrics, traces) legitimately changes between
runs and is not compared.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .records import canonical_json, runtime_versions, verdict_of
from .store import AuditStore, RecordFilter

COMPARED = ("feasible", "verdict", "chosen_rule", "matched_rules", "warnings")
_MISSING = object()


@dataclass(frozen=True)
class Difference:
    """One field that differs between the recorded decision and the replayed one.

    ``path`` is dotted (``verdict.rank``, ``verdict.training.epochs``, ``feasible``); for list fields
    (``matched_rules``, ``warnings``) ``old`` holds the removed items and ``new`` the added ones.
    """

    path: str
    old: Any
    new: Any
    kind: str = "changed"  # "changed" | "list"

    def render(self) -> str:
        """Return ``path: old -> new`` (or ``path: -removed +added`` for lists)."""
        if self.kind == "list":
            parts = [f"-{_short(v)}" for v in self.old] + [f"+{_short(v)}" for v in self.new]
            return f"{self.path}: " + " ".join(parts)
        return f"{self.path}: {_short(self.old)} -> {_short(self.new)}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict: path, kind, old, new (``<absent>`` for missing values)."""
        return {"path": self.path, "kind": self.kind, "old": _jsonable(self.old), "new": _jsonable(self.new)}


def _jsonable(value: Any) -> Any:
    return "<absent>" if value is _MISSING else value


def _short(value: Any) -> str:
    if value is _MISSING:
        return "<absent>"
    if isinstance(value, dict) and "code" in value:
        return str(value["code"]) + (f" (rule {value['rule']})" if value.get("rule") else "")
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _diff_value(path: str, old: Any, new: Any, out: list[Difference]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            _diff_value(f"{path}.{key}", old.get(key, _MISSING), new.get(key, _MISSING), out)
    elif old is _MISSING or new is _MISSING or canonical_json(old) != canonical_json(new):
        out.append(Difference(path, old, new))


def _diff_list(path: str, old: list, new: list, out: list[Difference]) -> None:
    old_keys = [canonical_json(v) for v in old]
    new_keys = [canonical_json(v) for v in new]
    removed = [v for v, k in zip(old, old_keys, strict=True) if k not in new_keys]
    added = [v for v, k in zip(new, new_keys, strict=True) if k not in old_keys]
    if removed or added:
        out.append(Difference(path, removed, added, kind="list"))
    elif old_keys != new_keys:
        out.append(Difference(path, old, new))  # same items, other order


def compare_decisions(old: dict, new: dict) -> list[Difference]:
    """Return the differences between two decision dicts over ``COMPARED`` (empty list = identical)."""
    out: list[Difference] = []
    for key in COMPARED:
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if key in ("matched_rules", "warnings") and isinstance(a, list) and isinstance(b, list):
            _diff_list(key, a, b, out)
        elif isinstance(a, dict) and isinstance(b, dict):
            _diff_value(key, a, b, out)
        elif a is _MISSING or b is _MISSING or canonical_json(a) != canonical_json(b):
            out.append(Difference(key, a, b))
    return out


def outcome(decision: dict | None) -> str:
    """Return the short outcome label of a decision: ``lora r16``, ``full_ft``, ``infeasible`` or ``-``."""
    if decision is None:
        return "-"
    verdict = verdict_of({"decision": decision})
    if verdict is None:
        return "infeasible"
    rank = verdict.get("rank")
    return f"{verdict.get('method')} r{rank}" if rank is not None else str(verdict.get("method"))


@dataclass
class ReplayResult:
    """The replay of one record: ``status`` is ``identical``, ``different`` or ``error``."""

    record_id: str
    seq: int | None
    status: str
    old: dict
    new: dict | None = None
    differences: list[Difference] = field(default_factory=list)
    error: str | None = None
    versions_then: dict = field(default_factory=dict)
    versions_now: dict = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        """Return True when the replayed decision matched on every compared field."""
        return self.status == "identical"

    @property
    def outcome_changed(self) -> bool:
        """Return True when feasibility or any verdict field changed (or the replay failed)."""
        return self.status == "error" or any(d.path == "feasible" or d.path.startswith("verdict")
                                             for d in self.differences)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe summary: id, seq, status, old/new outcome, differences, error, versions."""
        return {"id": self.record_id, "seq": self.seq, "status": self.status, "old": outcome(self.old),
                "new": outcome(self.new) if self.new is not None else None,
                "differences": [d.to_dict() for d in self.differences], "error": self.error,
                "versions_then": self.versions_then, "versions_now": self.versions_now}


def _facts_given(record: dict) -> dict:
    facts = (record.get("decision") or {}).get("facts") or {}
    given = facts.get("given")
    return given if isinstance(given, dict) else {}


def snapshot_policy(store: AuditStore, sha256: str) -> Any:
    """Return the compiled Policy of the snapshot stored under ``sha256``.

    Raises RecordNotFound when the snapshot is absent and ``ruleengine.policy.PolicyError`` when the snapshot
    no longer compiles.
    """
    from ..policy import load_policy_files

    snapshot = store.get_policy_snapshot(sha256)
    return load_policy_files(snapshot["files"], snapshot["root"], origin=f"<snapshot {sha256[:12]}>")


def replay_decision(record: dict, policy: Any) -> ReplayResult:
    """Re-run the record's given facts through ``policy`` with the current engine and compare.

    Returns a ReplayResult; facts or policy errors (``DiagnosticError``) become ``status="error"``; other
    exceptions (engine bugs) propagate.
    """
    from ..diagnostics import DiagnosticError
    from ..evaluate import evaluator_for
    from ..pipeline import decide

    old = record.get("decision") or {}
    base: dict[str, Any] = {"record_id": str(record.get("id")), "seq": record.get("seq"), "old": old,
            "versions_then": record.get("versions") or {}, "versions_now": dict(runtime_versions())}
    try:
        content = (((old.get("facts") or {}).get("normalized") or {}).get("model") or {}).get("config_content")
        new = decide(evaluator_for(policy), _facts_given(record), model_config=content).to_dict()
    except DiagnosticError as exc:
        return ReplayResult(status="error", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                            **base)
    diffs = compare_decisions(old, new)
    return ReplayResult(status="identical" if not diffs else "different", new=new, differences=diffs, **base)


def replay_record(store: AuditStore, record_id: str, policy: Any = None) -> ReplayResult:
    """Replay one record: with its own stored policy snapshot, or with ``policy`` (a compiled Policy) if given.

    Raises RecordNotFound for an unknown id or a missing snapshot; a snapshot that no longer compiles gives
    ``status="error"``.
    """
    from ..diagnostics import DiagnosticError

    record = store.get(record_id)
    if policy is None:
        try:
            policy = snapshot_policy(store, record["policy"]["sha256"])
        except DiagnosticError as exc:
            return ReplayResult(record_id=record["id"], seq=record.get("seq"), status="error",
                                old=record.get("decision") or {}, error=f"the stored policy no longer compiles: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                                versions_then=record.get("versions") or {}, versions_now=dict(runtime_versions()))
    return replay_decision(record, policy)


def replay_records(store: AuditStore, records: Iterable[dict], policy: Any = None) -> Iterator[ReplayResult]:
    """Yield a ReplayResult per record (own snapshot per record, or ``policy`` for all), in the given order.

    Snapshots are compiled once each. Raises RecordNotFound when a record's snapshot is missing.
    """
    from ..diagnostics import DiagnosticError

    compiled: dict[str, Any] = {}
    for record in records:
        pol = policy
        if pol is None:
            sha = record["policy"]["sha256"]
            if sha not in compiled:
                try:
                    compiled[sha] = snapshot_policy(store, sha)
                except DiagnosticError as exc:
                    compiled[sha] = exc
            pol = compiled[sha]
        if isinstance(pol, Exception):
            yield ReplayResult(record_id=record["id"], seq=record.get("seq"), status="error",
                               old=record.get("decision") or {},
                               error=f"the stored policy no longer compiles: {str(pol).splitlines()[0]}",
                               versions_then=record.get("versions") or {}, versions_now=dict(runtime_versions()))
            continue
        yield replay_decision(record, pol)


def replay_all(store: AuditStore, policy: Any = None, filters: RecordFilter | None = None) -> Iterator[ReplayResult]:
    """Yield a ReplayResult for every record matching ``filters`` (all by default), in seq order.

    See ``replay_records`` for ``policy`` and errors.
    """
    records = store.list(filters) if filters is not None else store.iter_all()
    yield from replay_records(store, records, policy)
