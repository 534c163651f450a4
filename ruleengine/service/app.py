"""The ASGI app of the decision service (FastAPI): ``create_app(settings) -> FastAPI``.

Run it with any ASGI server, one worker or several:

    decide serve --workers 4                                              # uvicorn, tuned (see server.py)
    uvicorn --factory ruleengine.service.app:create_app --workers 4         # settings from FINETUNE_POLICY_*
    gunicorn -w 4 -k ruleengine.service.server.Worker 'ruleengine.service.app:create_app()'

Endpoints (JSON in, strict JSON out; see docs/service.md and ``/docs``):

    GET  /healthz             alive, and the policy in service
    GET  /readyz              200 when decisions can be recorded; 503 (fail closed) when the audit store cannot
    GET  /metrics             Prometheus exposition, all workers
    GET  /v1/policy           the policy's identity, use cases, GPU catalog, rules
    POST /v1/decide           facts -> decision (``?explain=1`` adds counterfactuals), recorded before it is answered
    POST /v1/explain          the same as /v1/decide?explain=1
    POST /v1/estimate         facts -> memory, trainable parameters and cost per method
    POST /v1/policy/reload    compile the configured policy again; a policy that does not compile never replaces
                              the one in service (422 with its diagnostics)

With tokens configured every endpoint but /healthz, /readyz, /docs and /openapi.json needs
``Authorization: Bearer <token>``; without tokens, requests arriving on a non-loopback address are
refused (403): a service reachable from other machines is never open.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..diagnostics import Diagnostic, Location
from .accesslog import ACCESS, configure
from .core import DecisionService, ServiceError, parse_facts
from .metrics import Metrics, metrics_for
from .settings import Settings, is_loopback

log = logging.getLogger("ruleengine.service")

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/v1/policy", "/v1/decide", "/v1/explain", "/v1/estimate",
                    "/v1/policy/reload", "/docs", "/openapi.json"})
JSON_TYPE = "application/json"


def dumps(payload: Any) -> bytes:
    """Return ``payload`` as strict JSON bytes (ASCII, no NaN/Infinity); raises ValueError for what JSON cannot hold."""
    return json.dumps(payload, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Return a strict-JSON response; a payload JSON cannot hold becomes a 500 ``internal`` (still JSON)."""
    try:
        body = dumps(payload)
    except (TypeError, ValueError) as exc:
        log.error("a response could not be encoded as strict JSON: %s", exc)
        status, body = 500, dumps({"error": {"code": "internal", "message": "the answer could not be encoded "
                                             "as JSON"}, "diagnostics": []})
    return Response(body, status_code=status, media_type=JSON_TYPE, headers=headers)


def error_response(exc: ServiceError) -> Response:
    """Return the JSON error response of ``exc`` (its status, headers and diagnostics)."""
    response = json_response(exc.payload(), exc.status, exc.headers)
    response.headers["x-error-code"] = exc.code
    return response


class _State:
    """Per-app state the handlers share: the service, metrics and the decide/append executors."""

    def __init__(self, settings: Settings, service: DecisionService, metrics: Metrics):
        self.settings, self.service, self.metrics = settings, service, metrics
        self.decide_pool = (ThreadPoolExecutor(settings.decide_threads, thread_name_prefix="decide")
                            if settings.decide_threads > 0 else None)
        # appends wait on the database (group commit): enough threads that a commit in flight never starves
        self.append_pool = ThreadPoolExecutor(64, thread_name_prefix="audit-append")

    def close(self) -> None:
        if self.decide_pool is not None:
            self.decide_pool.shutdown(wait=True)
        self.append_pool.shutdown(wait=True)
        self.service.close()


def create_app(settings: Settings | None = None, *, service: DecisionService | None = None) -> FastAPI:
    """Return the decision service's FastAPI app for ``settings`` (default: ``Settings.from_env()``).

    Compiles the policy and opens the audit writer now, so a bad policy (PolicyError, exit 3) or an
    unusable audit store (AuditWriteError, exit 7) fails here, before any request is accepted.
    ``service`` gives a ready DecisionService instead (tests).
    """
    settings = settings or Settings.from_env()
    configure()
    service = service or DecisionService(settings)
    metrics = metrics_for(settings.state_dir)
    state = _State(settings, service, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _install_sighup(state)
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, state.close)

    app = FastAPI(title="finetune-policy decision service", version=_version(),
                  description="Decide how to fine-tune an LLM from a versioned policy; every decision is audited. "
                  "Errors are `{\"error\": {code, message}, \"diagnostics\": [...]}` (at most 50, then "
                  "`more_diagnostics`). See docs/service.md.", lifespan=lifespan, redoc_url=None)
    app.state.service = service
    app.state.settings = settings
    _routes(app, state)
    _errors(app)
    _install_openapi(app)
    app.add_middleware(_Edge, state=state)
    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("finetune-policy")
    except Exception:  # noqa: BLE001 - not installed (a source checkout)
        return "0"


def _install_sighup(state: _State) -> None:
    """SIGHUP in this process: reload the policy (as POST /v1/policy/reload) instead of dying."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        loop.run_in_executor(None, _reload_logged, state)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)


def _reload_logged(state: _State) -> None:
    try:
        result = state.service.reload()
    except ServiceError as exc:
        state.metrics.reloads.labels("invalid").inc()
        for d in exc.diagnostics[:50]:
            log.error("policy: %s", d.render())
        return
    state.metrics.reloads.labels("reloaded" if result["changed"] else "unchanged").inc()
    log.info("SIGHUP: policy %s %s (sha256 %s) in service", result["policy"]["name"], result["policy"]["version"],
             result["policy"]["sha256"][:12])


# --- request bodies ----------------------------------------------------------------------------------

async def read_body(request: Request, settings: Settings) -> bytes:
    """Return the request body: JSON only, at most ``max_body`` bytes, sent within ``body_timeout`` seconds.

    Raises ServiceError 415 (not JSON), 400 (bad Content-Length), 413 (too large: refused from the header
    alone when it says so) or 408 (too slow); 413 and 408 close the connection.
    """
    ctype = request.headers.get("content-type", JSON_TYPE)
    if "json" not in ctype.lower():
        raise ServiceError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type",
                           f"send Content-Type: application/json, not {ctype[:100]}")
    length = request.headers.get("content-length")
    limit = settings.max_body
    close = {"connection": "close"}
    if length is not None:
        if not length.strip().isdigit():
            raise ServiceError(HTTPStatus.BAD_REQUEST, "bad-length", "Content-Length is not a number", headers=close)
        if int(length) > limit:
            raise ServiceError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body-too-large",
                               f"the body is {int(length)} bytes; the limit is {limit}", headers=close)
    chunks: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServiceError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body-too-large",
                                   f"the body is over the limit of {limit} bytes", headers=close)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout=settings.body_timeout)
    except TimeoutError:
        raise ServiceError(HTTPStatus.REQUEST_TIMEOUT, "body-timeout",
                           f"the body did not arrive within {settings.body_timeout:g} s", headers=close) from None
    return b"".join(chunks)


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "")


# --- routes ---------------------------------------------------------------------------------------------

def _body_doc(component: str = "Facts") -> dict:
    return {"requestBody": {"required": True, "content": {
        JSON_TYPE: {"schema": {"$ref": f"#/components/schemas/{component}"}}}}}


def _answers(ok: str, *codes: int) -> dict:
    out: dict[int | str, Any] = {200: {"description": ok, "content": {JSON_TYPE: {}}}}
    for code in codes:
        out[code] = {"description": HTTPStatus(code).phrase,
                     "content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return out


def _routes(app: FastAPI, state: _State) -> None:
    service = state.service
    metrics = state.metrics
    settings = state.settings

    async def synced() -> None:
        if service.needs_sync():
            await asyncio.get_running_loop().run_in_executor(None, service.sync)

    async def decide_facts(request: Request, explain: bool) -> Response:
        body = await read_body(request, settings)
        facts = parse_facts(body)
        await synced()
        started = time.perf_counter()
        if state.decide_pool is None:
            engine, data = service.decide(facts, explain)
        else:
            engine, data = await asyncio.get_running_loop().run_in_executor(
                state.decide_pool, service.decide, facts, explain)
        metrics.decision_seconds.observe(time.perf_counter() - started)
        verdict = data.get("verdict") or {}
        metrics.decisions.labels(verdict.get("method") if data.get("feasible") else "infeasible",
                                 data.get("chosen_rule") or "").inc()
        request.scope.setdefault("state", {})["decision_id"] = data.get("decision_id")
        if service.audit_writer is None:
            return json_response(data)
        appended = time.perf_counter()
        record_id, text = await asyncio.get_running_loop().run_in_executor(
            state.append_pool, service.record, engine, data)
        metrics.audit_seconds.observe(time.perf_counter() - appended)
        # the recorded canonical text (strict JSON: no NaN, sorted keys), with the record id in front
        body = ('{"audit_record":' + json.dumps(record_id) + "," + text[1:]).encode("utf-8")
        return Response(body, media_type=JSON_TYPE)

    @app.get("/healthz", summary="Liveness and the policy in service", responses=_answers("alive"))
    async def healthz() -> Response:
        return json_response({"status": "ok", "policy": service.identity(), "pid": os.getpid()})

    @app.get("/readyz", summary="Readiness: the policy is loaded and the audit store writable (fail closed)",
             responses=_answers("ready", 503))
    async def readyz() -> Response:
        await synced()
        body = await asyncio.get_running_loop().run_in_executor(None, service.ready)
        return json_response(body)

    @app.get("/metrics", summary="Prometheus metrics of all workers", responses={200: {
        "description": "Prometheus text exposition", "content": {"text/plain": {}}}})
    async def metrics_endpoint() -> Response:
        body, ctype = await asyncio.get_running_loop().run_in_executor(None, metrics.render)
        return Response(body, media_type=ctype)

    @app.get("/v1/policy", summary="The policy in service: identity, use cases, GPU catalog, rules",
             responses=_answers("the policy"))
    async def policy_info() -> Response:
        await synced()
        return json_response(service.policy_info())

    @app.post("/v1/decide", summary="Decide for the facts; recorded in the audit store before it is answered",
              openapi_extra=_body_doc(), responses=_answers("the decision (also when infeasible)", 400, 401, 403,
                                                             408, 413, 415, 503))
    async def decide(request: Request, explain: str | None = None) -> Response:
        return await decide_facts(request, _flag(explain))

    @app.post("/v1/explain", summary="Decide with counterfactuals (= /v1/decide?explain=1)",
              openapi_extra=_body_doc(), responses=_answers("the decision with counterfactuals", 400, 401, 403,
                                                             408, 413, 415, 503))
    async def explain(request: Request) -> Response:
        return await decide_facts(request, True)

    @app.post("/v1/estimate", summary="Memory, trainable parameters and cost per method (no rules, not recorded)",
              openapi_extra=_body_doc("EstimateFacts"), responses=_answers("the estimates", 400, 401, 403, 408,
                                                                           413, 415))
    async def estimate(request: Request) -> Response:
        body = await read_body(request, settings)
        facts = parse_facts(body)
        await synced()
        if state.decide_pool is None:
            data = service.estimate(facts)
        else:
            data = await asyncio.get_running_loop().run_in_executor(state.decide_pool, service.estimate, facts)
        return json_response(data)

    @app.post("/v1/policy/reload", summary="Compile the configured policy again and serve it if it is valid",
              responses=_answers("reloaded (or unchanged)", 401, 403, 422))
    async def reload() -> Response:
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, service.reload)
        except ServiceError:
            metrics.reloads.labels("invalid").inc()
            raise
        metrics.reloads.labels("reloaded" if result["changed"] else "unchanged").inc()
        return json_response(result)


def _errors(app: FastAPI) -> None:
    async def service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        path = request.url.path
        if exc.status_code == 405 or (exc.status_code == 404 and path in ROUTES):
            return error_response(ServiceError(HTTPStatus.METHOD_NOT_ALLOWED, "method-not-allowed",
                                               f"{request.method} is not allowed on {path}",
                                               headers=dict(exc.headers or {})))
        if exc.status_code == 404:
            return error_response(ServiceError(HTTPStatus.NOT_FOUND, "not-found", "no such endpoint; see "
                                               "/docs: GET /healthz, /readyz, /metrics, /v1/policy; POST "
                                               "/v1/decide, /v1/explain, /v1/estimate, /v1/policy/reload"))
        return error_response(ServiceError(exc.status_code, "http-error", str(exc.detail)[:200]))

    async def validation_error(request: Request, exc: Exception) -> Response:
        from fastapi.exceptions import RequestValidationError

        assert isinstance(exc, RequestValidationError)
        diags = [Diagnostic("http-bad-parameter", str(e.get("msg", ""))[:200], Location("<query>"),
                            path=".".join(str(p) for p in e.get("loc", ()))) for e in exc.errors()[:50]]
        return error_response(ServiceError(HTTPStatus.BAD_REQUEST, "bad-parameter", "a parameter is invalid", diags))

    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


# --- the edge: request id, auth, metrics, access log, last-resort errors --------------------------------

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class _Edge:
    """Pure ASGI middleware around every request (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: Callable, state: _State):
        self.app, self.state = app, state
        self.tokens = [t.encode("utf-8") for t in state.settings.tokens]
        self.access_log = state.settings.access_log

    def _auth(self, scope: dict) -> ServiceError | None:
        path = scope.get("path", "")
        if path in OPEN_PATHS:
            return None
        if not self.tokens:
            server = scope.get("server")
            if server is not None and server[0] and not is_loopback(str(server[0])):
                return ServiceError(HTTPStatus.FORBIDDEN, "token-required",
                                    "this service has no bearer token configured, so it answers on loopback "
                                    "addresses only; set FINETUNE_POLICY_TOKEN(_FILE) or --token-file")
            return None
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and any(hmac.compare_digest(token.strip(), t) for t in self.tokens):
            return None
        return ServiceError(HTTPStatus.UNAUTHORIZED, "unauthorized",
                            "send Authorization: Bearer <token>" if not given else "the bearer token is not valid",
                            headers={"www-authenticate": 'Bearer realm="finetune-policy"'})

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})
        seen: dict[str, Any] = {"status": 500, "bytes": 0, "started": False, "code": None}

        async def send_wrapped(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["started"] = True
                headers = list(message.get("headers", []))
                for name, value in headers:
                    if name == b"x-error-code":
                        seen["code"] = value.decode("latin-1")
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        refused = self._auth(scope)
        try:
            if refused is not None:
                await error_response(refused)(scope, receive, send_wrapped)
            else:
                await self.app(scope, receive, send_wrapped)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: always a JSON answer
            log.error("internal error on %s %s: %s", scope.get("method"), scope.get("path"), exc,
                      exc_info=True)
            if not seen["started"]:
                await error_response(ServiceError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal",
                                                  f"internal error ({type(exc).__name__}); see the server log"))(
                    scope, receive, send_wrapped)
        self._observe(scope, seen, started, request_id)

    def _observe(self, scope: dict, seen: dict, started: float, request_id: str) -> None:
        elapsed = time.perf_counter() - started
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        status = int(seen["status"])
        metrics = self.state.metrics
        metrics.requests.labels(scope.get("method", ""), route, str(status)).inc()
        metrics.request_seconds.labels(route).observe(elapsed)
        if status >= 400:
            metrics.errors.labels(seen["code"] or str(status)).inc()
        if self.access_log:
            client = scope.get("client")
            line: dict[str, Any] = {"method": scope.get("method"), "path": path, "status": status,
                                    "duration_ms": round(elapsed * 1e3, 3), "bytes": seen["bytes"],
                                    "client": f"{client[0]}:{client[1]}" if client else None,
                                    "request_id": request_id}
            decision_id = scope["state"].get("decision_id")
            if decision_id:
                line["decision_id"] = decision_id
            if seen["code"]:
                line["error"] = seen["code"]
            ACCESS.info(line)


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            text = value.decode("latin-1")[:128]
            return text if text.isprintable() else None
    return None


# --- OpenAPI from the project's JSON Schemas ---------------------------------------------------------------

def _component(schema: dict, name: str, out: dict) -> dict:
    """Return ``schema`` as an OpenAPI 3.1 component, its ``$defs`` hoisted as ``<name>_<def>`` into ``out``."""
    prefix = f"#/components/schemas/{name}_"

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (prefix + node[k].split("/")[-1] if k == "$ref" and str(node[k]).startswith("#/$defs/")
                        else rewrite(v)) for k, v in node.items() if k not in ("$schema", "$id", "$defs")}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    for key, sub in (schema.get("$defs") or {}).items():
        out[f"{name}_{key}"] = rewrite(sub)
    return rewrite(schema)


def openapi_components() -> dict:
    """Return the OpenAPI components: the facts schema as HTTP takes it, the decision schema, the error body."""
    import copy

    from ..paths import load_schema

    out: dict[str, Any] = {}
    facts = copy.deepcopy(load_schema("facts.schema.json"))
    config = facts["properties"]["model"]["properties"]["config"]
    inline = [form for form in config["oneOf"] if form.get("type") == "object"]
    facts["properties"]["model"]["properties"]["config"] = {**inline[0], "description": config["description"] +
                                                            " (over HTTP: the content of config.json, inline; "
                                                            "a path is refused)"}
    out["Facts"] = _component(facts, "Facts", out)
    out["EstimateFacts"] = {"$ref": "#/components/schemas/Facts", "description": "facts; data is optional"}
    out["Decision"] = _component(copy.deepcopy(load_schema("decision.schema.json")), "Decision", out)
    out["Diagnostic"] = {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "help": {"type": "string"},
        "severity": {"enum": ["error", "warning"]}, "path": {"type": "string"},
        "location": {"type": "object", "properties": {"file": {"type": "string"}, "line": {"type": "integer"},
                                                      "col": {"type": "integer"}}}}}
    out["Error"] = {"type": "object", "required": ["error", "diagnostics"], "properties": {
        "error": {"type": "object", "required": ["code", "message"],
                  "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
        "diagnostics": {"type": "array", "maxItems": 50, "items": {"$ref": "#/components/schemas/Diagnostic"}},
        "more_diagnostics": {"type": "integer", "description": "diagnostics not shown (beyond the first 50)"}}}
    return out


def _install_openapi(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(openapi_components())
            for path, code in (("/v1/decide", "200"), ("/v1/explain", "200")):
                schema["paths"][path]["post"]["responses"][code]["content"][JSON_TYPE] = {
                    "schema": {"$ref": "#/components/schemas/Decision"}}
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign, unused-ignore]
