"""The request handling of the decision service, independent of HTTP: a thin shell over ``ruleengine.api``.

One ``DecisionService`` per worker process holds the compiled policy (a ``PolicyEngine``) and one
``AuditWriter`` (group commit). Policy reloads are published in the state folder the workers share,
as the validated policy's snapshot, so every worker switches to exactly the policy that was checked
and a policy that does not compile never replaces the one in service.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from .. import api
from ..diagnostics import Diagnostic, DiagnosticError, Location, capped
from ..facts import FactsInput
from ..jsonsafe import loads
from .settings import Settings

log = logging.getLogger("ruleengine.service")

POLICY_FILE = "policy.json"  # the published policy (snapshot) in the state folder


class ServiceError(Exception):
    """A request failure: HTTP status, stable error code, message and located diagnostics."""

    def __init__(self, status: int, code: str, message: str, diagnostics: list[Diagnostic] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = int(status), code, message
        self.diagnostics = list(diagnostics or [])
        self.headers = dict(headers or {})

    def payload(self) -> dict:
        """Return the JSON error body: ``{"error": {code, message}, "diagnostics": [...]}`` (50 at most + count)."""
        shown, more = capped(self.diagnostics)
        out: dict[str, Any] = {"error": {"code": self.code, "message": self.message},
                               "diagnostics": [d.to_dict() for d in shown]}
        if more:
            out["more_diagnostics"] = more
        return out


@dataclass
class _Published:
    """What this worker last saw of the published policy file (to notice a change with one stat)."""

    stamp: tuple[int, int] | None = None
    sha256: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class DecisionService:
    """Decide, explain, estimate, record and reload for one worker; raises ServiceError for client errors.

    Raises at construction: PolicyError (exit 3) for a policy that does not compile, AuditWriteError
    (exit 7) when the audit store cannot be opened for writing.
    """

    def __init__(self, settings: Settings, *, engine: Any = None, audit_writer: Any = None):
        self.settings = settings
        self._own_state_dir = settings.state_dir is None
        self.state_dir = settings.state_dir or tempfile.mkdtemp(prefix="finetune-policy-state-")
        os.makedirs(self.state_dir, exist_ok=True)
        self._published = _Published()
        self._reload_lock = threading.Lock()
        self.engine = engine if engine is not None else self._initial_engine()
        self.audit_writer = audit_writer
        if settings.audit and audit_writer is None:
            self.audit_writer = api.audit_writer(settings.audit_db, key_path=settings.audit_key)

    # --- policy ------------------------------------------------------------------------------------

    def _initial_engine(self) -> Any:
        """The configured policy, published for the other workers; if it does not compile, the one they serve.

        A worker (re)started while the policy on disk is broken keeps serving the published, valid policy;
        with nothing published (the first start) the PolicyError propagates and the worker does not start.
        """
        from ..policy import PolicyError

        try:
            engine = api.open_policy(self.settings.policy)
        except PolicyError:
            found = self._read_published()
            if found is None:
                raise
            log.error("the policy at %s does not compile; serving the published policy %s (sha256 %s)",
                      self.settings.policy or "<bundled default>", found.policy.version, found.policy.sha256[:12])
            return found
        if _stamp(os.path.join(self.state_dir, POLICY_FILE)) is None or self._published_sha() != engine.policy.sha256:
            self.publish(engine)
        return engine

    def _published_sha(self) -> str | None:
        try:
            with open(os.path.join(self.state_dir, POLICY_FILE), encoding="utf-8") as fh:
                return str(json.load(fh).get("sha256"))
        except (OSError, ValueError, AttributeError):
            return None

    @property
    def policy(self) -> Any:
        """The policy in service."""
        return self.engine.policy

    def identity(self) -> dict:
        """Return the policy's name, version and hashes."""
        p = self.engine.policy
        return {"name": p.name, "version": p.version, "sha256": p.sha256, "semantic_sha256": p.semantic_sha256}

    def publish(self, engine: Any) -> None:
        """Make ``engine``'s policy the one every worker serves (see ``publish_policy``)."""
        stamp = publish_policy(self.state_dir, engine.policy)
        with self._published.lock:
            self._published.sha256 = engine.policy.sha256
            self._published.stamp = stamp

    def _read_published(self) -> Any:
        """Return the engine of the published policy, or None when none is published or it is unreadable."""
        from ..policy import load_policy_files

        path = os.path.join(self.state_dir, POLICY_FILE)
        stamp = _stamp(path)
        if stamp is None:
            return None
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            policy = load_policy_files(data["files"], data["root"], origin=data.get("origin") or "<published>")
        except (OSError, ValueError, KeyError, TypeError, DiagnosticError) as exc:
            log.error("the published policy %s cannot be used (%s); keeping the current one", path, exc)
            return None
        with self._published.lock:
            self._published.sha256 = policy.sha256
            self._published.stamp = stamp
        return api.engine_for(policy)

    def needs_sync(self) -> bool:
        """Return True when another worker (or SIGHUP) published a policy this worker does not serve yet (one stat)."""
        stamp = _stamp(os.path.join(self.state_dir, POLICY_FILE))
        return stamp is not None and stamp != self._published.stamp

    def sync(self) -> None:
        """Switch to the published policy if it changed (blocking: compiles it; call off the event loop)."""
        with self._reload_lock:
            if not self.needs_sync():
                return
            engine = self._read_published()
            if engine is not None and engine.policy.sha256 != self.engine.policy.sha256:
                log.info("policy %s %s (sha256 %s) now in service", engine.policy.name, engine.policy.version,
                         engine.policy.sha256[:12])
                self.engine = engine

    def reload(self) -> dict:
        """Compile the configured policy again; if valid, serve and publish it. Returns before/after identities.

        Raises ServiceError 422 ``policy-invalid`` (with every diagnostic) when it does not compile: the
        policy in service stays.
        """
        from ..policy import PolicyError

        with self._reload_lock:
            before = self.identity()
            try:
                engine = api.open_policy(self.settings.policy)
            except PolicyError as exc:
                log.error("policy reload refused: %d diagnostic(s); the policy in service stays", len(exc.diagnostics))
                raise ServiceError(HTTPStatus.UNPROCESSABLE_ENTITY, "policy-invalid",
                                   "the policy does not compile; the policy in service is unchanged",
                                   exc.diagnostics) from None
            self.engine = engine
            self.publish(engine)
            after = self.identity()
        return {"status": "reloaded", "changed": before["sha256"] != after["sha256"], "policy": after,
                "previous": before}

    # --- requests ----------------------------------------------------------------------------------

    def policy_info(self) -> dict:
        """Return the policy's identity, use cases, GPU catalog and rule ids."""
        p = self.engine.policy
        return {**self.identity(), "use_cases": {k: v.get("label", k) for k, v in p.use_cases.items()},
                "gpus": p.gpus, "rules": [r.id for r in p.rules]}

    def decide(self, facts: FactsInput, explain: bool) -> tuple[Any, dict]:
        """Return (engine, decision dict) for valid facts; raises ServiceError 400 with the facts' diagnostics."""
        engine = self.engine
        try:
            decision = engine.decide(facts, explain=explain)
        except DiagnosticError as exc:
            raise _bad_facts(exc) from None
        return engine, decision.to_dict()

    def record(self, engine: Any, data: dict) -> tuple[str, str]:
        """Append the decision to the audit store (blocking; group commit).

        Returns (record id, the decision's canonical JSON text as recorded), so the answer can be sent as the
        very text that was recorded, serialised once. Raises ServiceError 503 ``audit-store-unavailable``
        when it cannot be written: no decision leaves unrecorded.
        """
        from ..audit import AuditError
        from ..audit.records import prepare_record

        try:
            self.audit_writer.ensure_snapshot(engine.policy)
            prepared = prepare_record(data, engine.policy.sha256)
            [record_id] = self.audit_writer.append_prepared([prepared])
        except AuditError as exc:
            raise ServiceError(HTTPStatus.SERVICE_UNAVAILABLE, "audit-store-unavailable",
                               f"the decision could not be recorded: {exc}") from None
        return str(record_id), prepared.decision_text

    def estimate(self, facts: FactsInput) -> dict:
        """Return memory, trainable parameters and cost per method; raises ServiceError 400 for bad facts."""
        try:
            data = self.engine.estimate(facts)
        except DiagnosticError as exc:
            raise _bad_facts(exc) from None
        return {"policy": self.identity(), "architecture": data["architecture"], "usable_gb": data["usable_gb"],
                "gpu": data["gpu"], "estimates": data["estimates"]}

    def ready(self) -> dict:
        """Return the readiness body; raises ServiceError 503 when decisions cannot be recorded (fail closed)."""
        if self.audit_writer is not None:
            ok, why = self.audit_writer.healthy()
            if not ok:
                raise ServiceError(HTTPStatus.SERVICE_UNAVAILABLE, "audit-store-unavailable", why)
        return {"status": "ready", "audit": self.audit_writer is not None, "policy": self.identity()}

    def close(self) -> None:
        """Close the audit writer (waits for appends in flight) and remove a private state folder."""
        if self.audit_writer is not None:
            self.audit_writer.close()
        if self._own_state_dir:
            import shutil

            shutil.rmtree(self.state_dir, ignore_errors=True)


def publish_policy(state_dir: str, policy: Any) -> tuple[int, int] | None:
    """Write ``policy``'s snapshot as the one the workers sharing ``state_dir`` serve; return the file's stamp.

    Atomic (write a temporary file, then rename), so a worker reads the old or the new policy, never half.
    """
    path = os.path.join(state_dir, POLICY_FILE)
    body = json.dumps({"sha256": policy.sha256, "origin": policy.origin, **policy.snapshot()}, ensure_ascii=False)
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".policy-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return _stamp(path)


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_ino


def _bad_facts(exc: DiagnosticError) -> ServiceError:
    return ServiceError(HTTPStatus.BAD_REQUEST, "invalid-facts", "the facts are invalid; see diagnostics",
                        exc.diagnostics)


def parse_facts(body: bytes) -> FactsInput:
    """Return the facts of a JSON request body; raises ServiceError 400 located by line and column.

    The JSON is parsed strictly (no NaN/Infinity, no overflow to infinity, bounded nesting); over HTTP
    ``model.config`` must be an inline object, never a path on the server.
    """
    if not body:
        raise ServiceError(HTTPStatus.BAD_REQUEST, "empty-body", "the request body must be a JSON object of facts",
                           [Diagnostic("http-empty-body", "no facts in the request body", Location("<body>"),
                                       'send e.g. {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, '
                                       '"data": {"examples": "50k"}}')])
    try:
        data = loads(body, "<body>", "http")
    except DiagnosticError as exc:
        code = {"http-not-utf8": "bad-encoding"}.get(exc.diagnostics[0].code, "bad-json")
        raise ServiceError(HTTPStatus.BAD_REQUEST, code, f"the body is not valid JSON: {exc.diagnostics[0].message}",
                           exc.diagnostics) from None
    if not isinstance(data, dict):
        raise ServiceError(HTTPStatus.BAD_REQUEST, "bad-facts", "the body must be a JSON object",
                           [Diagnostic("http-not-object", f"expected an object, got {_json_type(data)}",
                                       Location("<body>", 1, 1), 'send {"model": ..., "hardware": ...}')])
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("config"), str):
        raise ServiceError(HTTPStatus.BAD_REQUEST, "config-path-refused",
                           "model.config must be the config.json's content (an object), not a path",
                           [Diagnostic("http-config-path", "the service never reads files named by a client",
                                       Location("<body>"), 'send "config": {"model_type": "llama", ...} (the '
                                       "content of config.json, at most 256 KiB)", path="model.config")])
    return FactsInput(data, _BodyLocator())


class _BodyLocator:
    """Locates fields of a JSON body by their path (JSON bodies keep no per-field positions)."""

    def loc(self, path: tuple, key: bool = False) -> Location:
        """Return the body as the place of every field (the diagnostic's ``path`` names the field)."""
        return Location("<body>")


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)
