"""The decision API: everything the CLI, the HTTP service, the executors and the authoring tools use.

    engine = api.open_policy(path_or_None)        # compile once (None = the bundled default policy)
    decision = engine.decide(facts)               # -> Decision (verdict, candidate, estimates, trace)
    decision = engine.decide(facts, explain=True) # + counterfactuals
    table = engine.estimate(facts)                # memory / trainable / cost per method, no rules
    for item in engine.decide_many(lines): ...    # batches, one result per input, order kept
    api.record(decision, engine)                  # append to the audit trail

The pipeline under it runs one way: policy -> compile -> derive -> evaluate (typed trace events) ->
explain (filters over the trace) -> record; what-if searches (suggestions, counterfactuals) sit
above the evaluator. Every error is a ``DiagnosticError`` (or ``EngineDisagreement``) carrying its
exit code (ruleengine/exitcodes.py); nothing here prints or exits.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from . import pipeline
from .decision import Decision, new_decision_id
from .diagnostics import Diagnostic, DiagnosticError, Location
from .evaluate import Evaluator, evaluator_for
from .exitcodes import ExitCode
from .facts import FactsInput
from .policy import Policy, load_policy

__all__ = ["AuditWriteError", "BatchItem", "PolicyEngine", "audit_writer", "decide", "engine_for", "load_policy",
           "open_policy", "prepare_record", "record", "record_many"]


class AuditWriteError(DiagnosticError):
    """The decision could not be appended to the audit store (exit 7)."""

    exit_code = ExitCode.AUDIT_WRITE


class PolicyEngine:
    """One compiled policy and its decision memo: decide, explain, estimate, batch.

    The memo keeps recent decisions keyed by the canonical given facts (the policy's content hash is
    part of the engine, so a new policy never sees old entries); a hit returns a new Decision (its
    own id, time and metrics) with the same content. Facts naming a model config *file* bypass the
    memo, since the file can change (an inline config is part of the key). Thread-safe.
    """

    def __init__(self, policy: Policy, *, memo_size: int = 4096) -> None:
        self.policy = policy
        self.evaluator: Evaluator = evaluator_for(policy)
        self.sha256 = self.evaluator.sha256
        self.memo_size = memo_size
        self._memo: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.memo_hits = self.memo_misses = 0

    # --- deciding -----------------------------------------------------------------------------

    def decide(self, given: dict | FactsInput, *, origin: str = "", explain: bool = False,
               model_config: dict | None = None) -> Decision:
        """Return the Decision for ``given`` facts (a dict or a located ``FactsInput``).

        ``origin`` is the directory relative paths in the facts (``model.config``) are read from;
        ``model_config`` gives that config's content directly (replay); ``explain`` adds
        counterfactuals. Raises FactsError (exit 2) for invalid facts and EngineDisagreement (exit 4).
        """
        key = self._memo_key("d", given, explain, model_config)
        found = self._recall(key)
        if found is not None:
            return _fresh(found)
        decision = pipeline.decide(self.evaluator, given, origin=origin, explain_all=explain,
                                   model_config=model_config)
        self._remember(key, decision)
        return decision

    def summarize(self, given: dict | FactsInput, *, origin: str = "") -> dict:
        """Return the compact form of the decision for ``given`` (``pipeline.summary_of``), built lean.

        Uses the memo like :meth:`decide` (a hit gets a fresh decision id). Raises as :meth:`decide`.
        """
        key = self._memo_key("s", given, False, None)
        found = self._recall(key)
        if found is not None:
            return {**found, "decision_id": new_decision_id()}
        summary = pipeline.summarize(self.evaluator, given, origin=origin)
        self._remember(key, summary)
        return summary

    def estimate(self, given: dict | FactsInput, *, origin: str = "", breakdown: tuple[str, ...] = ()) -> dict:
        """Return memory, trainable parameters and cost per method (no rules).

        ``breakdown`` names methods whose estimate is also returned term by term. Raises FactsError,
        KeyError for an unknown method in ``breakdown``.
        """
        return pipeline.estimate(self.evaluator, given, origin=origin, breakdown=breakdown)

    def decide_many(self, items: Iterable[dict | FactsInput | DiagnosticError], *,
                    explain: bool = False) -> Iterator[BatchItem]:
        """Yield one BatchItem per input, in order: its Decision, or the error that input raised.

        An input may already be a DiagnosticError (a line that did not parse): it is passed through,
        so one bad line never stops a batch. EngineDisagreement still propagates (a bug).
        """
        for index, item in enumerate(items):
            if isinstance(item, DiagnosticError):
                yield BatchItem(index, None, item)
                continue
            try:
                yield BatchItem(index, self.decide(item, explain=explain), None)
            except DiagnosticError as exc:
                yield BatchItem(index, None, exc)

    def _recall(self, key: str | None) -> Any:
        """Return the memoised value for ``key`` (most recently used from now on), or None."""
        if key is None:
            return None
        with self._lock:
            found = self._memo.get(key)
            if found is not None:
                self._memo.move_to_end(key)
                self.memo_hits += 1
        return found

    def _remember(self, key: str | None, value: Any) -> None:
        """Memoise ``value`` under ``key``, dropping the least recently used entry beyond memo_size."""
        if key is None:
            return
        with self._lock:
            self.memo_misses += 1
            self._memo[key] = value
            if len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)

    def _memo_key(self, kind: str, given: dict | FactsInput, explain: bool,
                  model_config: dict | None) -> str | None:
        if self.memo_size <= 0:
            return None
        data = given.data if isinstance(given, FactsInput) else given
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, dict) and isinstance(model.get("config"), str) and model_config is None:
            return None  # a config file can change; an inline config is part of the key
        try:
            text = json.dumps([data, model_config], sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            return None
        return f"{kind}{int(explain)}{text}"


@dataclass(frozen=True)
class BatchItem:
    """One result of a batch: the input's position, and its decision or its error."""

    index: int
    decision: Decision | None
    error: DiagnosticError | None


def _fresh(decision: Decision) -> Decision:
    """Return a copy of a memoised decision with its own id, time and metrics (the content is shared)."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    metrics = {**decision.metrics, "memo": True, "total_ms": 0.0}
    return replace(decision, decision_id=new_decision_id(), created_at=now, metrics=metrics)


_ENGINES: dict[tuple[str, int], PolicyEngine] = {}
_ENGINES_LOCK = threading.Lock()


def open_policy(path: str | os.PathLike | None = None) -> PolicyEngine:
    """Return the engine of the policy at ``path`` (file or bundle directory; None = the bundled default).

    Compiled engines are reused while the policy's files are unchanged (keyed by path and
    modification time). Raises PolicyError (exit 3) with every diagnostic found.
    """
    from .paths import default_policy

    target = os.fspath(path) if path is not None else os.fspath(default_policy())
    stamp: int
    try:
        stamp = max((os.stat(os.path.join(root, f)).st_mtime_ns for root, _, files in os.walk(target) for f in files),
                    default=os.stat(target).st_mtime_ns) if os.path.isdir(target) else os.stat(target).st_mtime_ns
    except OSError:
        stamp = -1  # the loader reports the missing path
    key = (os.path.abspath(target), stamp)
    with _ENGINES_LOCK:
        found = _ENGINES.get(key)
    if found is not None:
        return found
    engine = PolicyEngine(load_policy(path))
    with _ENGINES_LOCK:
        return _ENGINES.setdefault(key, engine)


_BY_POLICY: OrderedDict[int, PolicyEngine] = OrderedDict()


def engine_for(policy: Policy) -> PolicyEngine:
    """Return the engine of an already compiled policy (e.g. a snapshot from the audit store), made once."""
    with _ENGINES_LOCK:
        found = _BY_POLICY.get(id(policy))
        if found is not None and found.policy is policy:
            return found
    engine = PolicyEngine(policy)
    with _ENGINES_LOCK:
        _BY_POLICY[id(policy)] = engine
        if len(_BY_POLICY) > 64:
            _BY_POLICY.popitem(last=False)
    return engine


def decide(policy: Policy, given: dict | FactsInput, *, origin: str = "", explain: bool = False,
           model_config: dict | None = None) -> Decision:
    """Return the Decision for ``given`` under a compiled ``policy`` (``engine_for(policy).decide``).

    Raises FactsError (exit 2) and EngineDisagreement (exit 4); see ``PolicyEngine.decide``.
    """
    return engine_for(policy).decide(given, origin=origin, explain=explain, model_config=model_config)


def audit_writer(audit_db: str | None = None, *, key_path: str | None = None) -> Any:
    """Return an open ``AuditWriter`` on ``audit_db`` (created when missing), signing with ``key_path``.

    For callers that record many decisions (a batch, a service): one writer, group commits. ``key_path``
    None means ``$FINETUNE_POLICY_AUDIT_KEY`` (unsigned when unset). Raises AuditWriteError (exit 7).
    """
    from .audit import AuditWriter

    try:
        return AuditWriter(audit_db, key_path=key_path, create=True)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the same answer for the caller
        raise AuditWriteError([Diagnostic(
            "audit-write-failed", f"the audit store cannot be opened for writing: {exc}",
            Location(audit_db or "$FINETUNE_POLICY_AUDIT_DB"),
            "fix the store location (--audit-db or FINETUNE_POLICY_AUDIT_DB), the key (--audit-key or "
            "FINETUNE_POLICY_AUDIT_KEY), or pass --no-audit")]) from None


def prepare_record(decision: Decision | dict, engine: Any) -> Any:
    """Return ``decision`` (made by ``engine``) ready for the audit store: serialised once, schema-checked
    (``audit.records.PreparedRecord``; it pickles as its texts, so a worker process can prepare it for the
    process that appends). Raises AuditWriteError (exit 7) when it cannot be recorded (not JSON-safe, no ULID).
    """
    from .audit.records import prepare_record as prepare

    try:
        return prepare(decision.to_dict() if isinstance(decision, Decision) else decision, engine.sha256)
    except Exception as exc:  # noqa: BLE001 - any failure to record is the same answer for the caller
        raise AuditWriteError([Diagnostic(
            "audit-write-failed", f"the decision cannot be recorded in the audit store: {exc}",
            Location(str((decision.decision_id if isinstance(decision, Decision) else
                          decision.get("decision_id") if isinstance(decision, dict) else None) or "<decision>")),
            "report it: a decision the engine made should always be recordable; or pass --no-audit")]) from None


def record_many(prepared: list, engine: Any, *, writer: Any) -> list[str]:
    """Append records from ``prepare_record`` (made by ``engine``) through the open ``writer`` in one
    transaction: one commit and one signed head for all of them. Returns their record ids in order, once
    committed. Raises AuditWriteError (exit 7); then none of them is recorded.
    """
    if not prepared:
        return []
    try:
        writer.ensure_snapshot(engine.policy)
        return [str(i) for i in writer.append_prepared(prepared)]
    except Exception as exc:  # noqa: BLE001 - any failure of the store is the same answer for the caller
        raise AuditWriteError([Diagnostic(
            "audit-write-failed", f"the decisions could not be recorded in the audit store: {exc}",
            Location(writer.location.display()),
            "fix the store location (--audit-db or FINETUNE_POLICY_AUDIT_DB), or pass --no-audit")]) from None


def record(decision: Decision | dict, engine: PolicyEngine, *, audit_db: str | None = None,
           key_path: str | None = None, writer: Any = None) -> str:
    """Append ``decision`` (made by ``engine``; a Decision or its ``to_dict()``) to the audit store.

    Returns the record id.
    ``writer`` is an open ``AuditWriter`` (see ``audit_writer``) to append through; without one, the store
    ``audit_db`` is opened for this record (default: ``$FINETUNE_POLICY_AUDIT_DB`` or the user's data
    directory) and the head signed with ``key_path`` (default ``$FINETUNE_POLICY_AUDIT_KEY``).
    Raises AuditWriteError (exit 7) naming the store and what to do when it cannot be written.
    """
    from .audit import record_decision

    try:
        data = decision.to_dict() if isinstance(decision, Decision) else decision
        if writer is not None:
            return str(writer.append(data, engine.policy))
        return str(record_decision(data, engine.policy.snapshot(), engine.sha256, db_path=audit_db,
                                   key_path=key_path))
    except Exception as exc:  # noqa: BLE001 - any failure of the store is the same answer for the caller
        raise AuditWriteError([Diagnostic(
            "audit-write-failed", f"the decision could not be recorded in the audit store: {exc}",
            Location(audit_db or "$FINETUNE_POLICY_AUDIT_DB"),
            "fix the store location (--audit-db or FINETUNE_POLICY_AUDIT_DB), or pass --no-audit")]) from None
