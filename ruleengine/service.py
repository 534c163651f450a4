"""The HTTP decision service (`decide serve`): the CLI's decisions over JSON, standard library only.

Endpoints (all JSON):
  GET  /healthz            liveness and the loaded policy (name, version, sha256)
  GET  /readyz             readiness: 200 when decisions can be recorded, 503 (with why) when the audit store
                           cannot be written (missing, deleted, replaced, read-only, unreachable): fail closed
  GET  /v1/policy          the policy's identity, use cases and GPU catalog
  POST /v1/decide          body: facts (as in a facts file); ?explain=1 adds counterfactuals
  POST /v1/explain         same as /v1/decide?explain=1
  POST /v1/estimate        body: facts; memory, trainable parameters and cost per method

Errors are ``{"error": {"code", "message"}, "diagnostics": [...]}`` with 400 (bad JSON or facts,
located by line/column or field path), 404, 405, 411, 413 (body over ``MAX_BODY``), 415, 500.
Every decision is recorded in the audit store unless the server runs with ``--no-audit``: one
``AuditWriter`` is opened at start-up (creating the store if missing, never again afterwards) and a decision is
answered only once its record is committed; when the store cannot be written the answer is 503
``audit-store-unavailable`` and no decision is handed out unrecorded.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from .diagnostics import Diagnostic, DiagnosticError, Location

MAX_BODY = 1024 * 1024


class ServiceError(Exception):
    """A request failure with its HTTP status, error code and diagnostics."""

    def __init__(self, status: HTTPStatus, code: str, message: str, diagnostics: list[Diagnostic] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.diagnostics = diagnostics or []


class DecisionService:
    """The request handling, independent of the HTTP server (testable alone)."""

    def __init__(self, engine: Any, *, audit: bool = True, audit_db: str | None = None,
                 audit_writer: Any = None):
        """Serve ``engine`` (an ``api.PolicyEngine``); open the audit writer (unless ``audit`` is False or one
        is given). Raises ``ruleengine.audit`` errors (StoreNotWritable, NotAnAuditStore, SigningKeyError)
        when the store or key cannot be used."""
        self.engine = engine
        self.policy = engine.policy
        self.audit = audit
        self.audit_db = audit_db
        self.audit_writer = audit_writer
        if audit and audit_writer is None:
            from .audit import AuditWriter

            self.audit_writer = AuditWriter(audit_db, create=True)

    def close(self) -> None:
        """Close the audit writer (waits for appends in flight)."""
        if self.audit_writer is not None:
            self.audit_writer.close()

    def identity(self) -> dict:
        """Return the loaded policy's name, version and hashes."""
        p = self.policy
        return {"name": p.name, "version": p.version, "sha256": p.sha256, "semantic_sha256": p.semantic_sha256}

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes | None) -> tuple[int, dict]:
        """Return (HTTP status, JSON body) for one request; raises ServiceError for client errors."""
        routes = {
            ("GET", "/healthz"): lambda: {"status": "ok", "policy": self.identity()},
            ("GET", "/readyz"): self._ready,
            ("GET", "/v1/policy"): self._policy_info,
            ("POST", "/v1/decide"): lambda: self._decide(body, explain=_flag(query, "explain")),
            ("POST", "/v1/explain"): lambda: self._decide(body, explain=True),
            ("POST", "/v1/estimate"): lambda: self._estimate(body),
        }
        action = routes.get((method, path))
        if action is None:
            if any(p == path for _, p in routes):
                raise ServiceError(HTTPStatus.METHOD_NOT_ALLOWED, "method-not-allowed",
                                   f"{method} is not allowed on {path}")
            raise ServiceError(HTTPStatus.NOT_FOUND, "not-found", f"no endpoint {path}; see GET /healthz, "
                               "POST /v1/decide, /v1/explain, /v1/estimate, GET /v1/policy")
        return HTTPStatus.OK, action()

    def _ready(self) -> dict:
        if self.audit_writer is not None:
            ok, why = self.audit_writer.healthy()
            if not ok:
                raise ServiceError(HTTPStatus.SERVICE_UNAVAILABLE, "audit-store-unavailable", why)
        return {"status": "ready", "audit": self.audit_writer is not None}

    def _policy_info(self) -> dict:
        p = self.policy
        return {**self.identity(), "use_cases": {k: v.get("label", k) for k, v in p.use_cases.items()},
                "gpus": p.gpus, "rules": [r.id for r in p.rules]}

    def _decide(self, body: bytes | None, explain: bool) -> dict:
        facts = parse_facts(body)
        decision = _client_errors(lambda: self.engine.decide(facts, explain=explain))
        data = decision.to_dict()
        if self.audit_writer is not None:
            from .audit import AuditError, InvalidRecord

            try:
                data["audit_record"] = self.audit_writer.append(data, self.policy)
            except InvalidRecord:
                raise
            except AuditError as exc:  # fail closed: no decision leaves unrecorded
                raise ServiceError(HTTPStatus.SERVICE_UNAVAILABLE, "audit-store-unavailable",
                                   f"the decision could not be recorded: {exc}") from None
        return data

    def _estimate(self, body: bytes | None) -> dict:
        facts_in = parse_facts(body)
        data = _client_errors(lambda: self.engine.estimate(facts_in))
        return {"policy": self.identity(), "architecture": data["architecture"], "usable_gb": data["usable_gb"],
                "estimates": data["estimates"]}


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return any(v.lower() in ("1", "true", "yes", "") for v in query.get(name, []))


def _client_errors(fn: Any) -> Any:
    try:
        return fn()
    except DiagnosticError as exc:
        raise ServiceError(HTTPStatus.BAD_REQUEST, "invalid-facts", "the facts are invalid; see diagnostics",
                           exc.diagnostics) from None


def parse_facts(body: bytes | None) -> Any:
    """Return the FactsInput of a JSON request body; raises ServiceError (400) naming line and column."""
    from .facts import FactsInput

    if not body:
        raise ServiceError(HTTPStatus.BAD_REQUEST, "empty-body", "the request body must be a JSON object of facts",
                           [Diagnostic("http-empty-body", "no facts in the request body", Location("<body>"),
                                       'send e.g. {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, '
                                       '"data": {"examples": "50k"}}')])
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ServiceError(HTTPStatus.BAD_REQUEST, "bad-encoding", "the body is not UTF-8",
                           [Diagnostic("http-not-utf8", "the body is not UTF-8", Location("<body>"),
                                       "send UTF-8 encoded JSON")]) from None
    except json.JSONDecodeError as exc:
        raise ServiceError(HTTPStatus.BAD_REQUEST, "bad-json", f"the body is not valid JSON: {exc.msg}",
                           [Diagnostic("http-bad-json", exc.msg, Location("<body>", exc.lineno, exc.colno),
                                       "fix the JSON at this position")]) from None
    if not isinstance(data, dict):
        raise ServiceError(HTTPStatus.BAD_REQUEST, "bad-facts", "the body must be a JSON object",
                           [Diagnostic("http-not-object", f"expected an object, got {type(data).__name__}",
                                       Location("<body>", 1, 1), "send {\"model\": ..., \"hardware\": ...}")])
    return FactsInput(data)


def make_handler(service: DecisionService) -> type[BaseHTTPRequestHandler]:
    """Return a request handler class bound to ``service``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "finetune-policy"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            if getattr(self.server, "verbose", False):
                super().log_message(format, *args)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self, method: str) -> None:
            url = urlparse(self.path)
            try:
                body = None
                if method == "POST":
                    body = self._read_body()
                status, payload = service.handle(method, url.path, parse_qs(url.query, keep_blank_values=True), body)
            except ServiceError as exc:
                status, payload = exc.status, {"error": {"code": exc.code, "message": exc.message},
                                               "diagnostics": [d.to_dict() for d in exc.diagnostics]}
            except Exception as exc:  # noqa: BLE001 - the server must answer, never die
                status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {
                    "error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}, "diagnostics": []}
            self._send(status, payload)

        def _read_body(self) -> bytes:
            ctype = self.headers.get("Content-Type", "application/json")
            if "json" not in ctype:
                raise ServiceError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type",
                                   f"send Content-Type: application/json, not {ctype}")
            length = self.headers.get("Content-Length")
            if length is None:
                raise ServiceError(HTTPStatus.LENGTH_REQUIRED, "length-required", "Content-Length is required")
            try:
                n = int(length)
            except ValueError:
                raise ServiceError(HTTPStatus.BAD_REQUEST, "bad-length", "Content-Length is not a number") from None
            if n > MAX_BODY:
                self.close_connection = True
                raise ServiceError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body-too-large",
                                   f"the body is {n} bytes; the limit is {MAX_BODY}")
            return self.rfile.read(n) if n > 0 else b""

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._dispatch("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._dispatch("DELETE")

    return Handler


def make_server(service: DecisionService, host: str = "127.0.0.1", port: int = 8080,
                verbose: bool = False) -> ThreadingHTTPServer:
    """Return a threading HTTP server for ``service`` bound to host:port (port 0 = any free port)."""
    server = ThreadingHTTPServer((host, port), make_handler(service))
    server.daemon_threads = True
    server.verbose = verbose  # type: ignore[attr-defined]
    return server
