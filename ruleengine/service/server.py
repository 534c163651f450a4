"""Running the service: uvicorn with the limits a shared service needs (`decide serve` calls ``serve``).

- listen backlog 2048 (the stdlib server's 5 reset bursts of connections), TCP_NODELAY (asyncio's default);
- keep-alive connections idle for 5 s close; request line + headers within the header timeout, at most
  64 KiB (``protocol.TimedHttpToolsProtocol``); bodies within the body timeout, at most ``max_body``;
- ``workers`` processes share the socket; they share a state folder (a temporary one per run, removed
  at exit) for the Prometheus samples and the published policy;
- SIGHUP reloads the policy: the supervisor compiles it and, if valid, publishes it for the workers
  (a policy that does not compile is logged and never replaces the one in service); with one worker
  the worker itself does this. SIGINT / SIGTERM stop gracefully (requests in flight are answered).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from typing import Any

from .settings import Settings

log = logging.getLogger("ruleengine.service")

BACKLOG = 2048
KEEP_ALIVE_S = 5
GRACEFUL_S = 15


def uvicorn_log_config() -> dict:
    """Return uvicorn's logging configuration: its own messages as JSON lines on stderr, no access log of its own."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": "ruleengine.service.accesslog.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                    "uvicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                    "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False}},
    }


def uvicorn_config(app: Any, settings: Settings, host: str, port: int, workers: int, **extra: Any) -> Any:
    """Return the ``uvicorn.Config`` `decide serve` runs (``app``: an ASGI app, or the factory's import string)."""
    import uvicorn

    from .protocol import TimedHttpToolsProtocol

    return uvicorn.Config(
        app, factory=isinstance(app, str), host=host, port=port, workers=workers, backlog=BACKLOG,
        http=TimedHttpToolsProtocol, loop="auto", lifespan="on", access_log=False, log_config=uvicorn_log_config(),
        timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=GRACEFUL_S, h11_max_incomplete_event_size=64 * 1024,
        server_header=False, date_header=True, **extra)


def publish_from_path(settings: Settings) -> bool:
    """Compile the configured policy; if valid, publish it in the state folder. Return whether it was published.

    Logs every diagnostic of a policy that does not compile (the published policy then stays).
    """
    from .. import api
    from ..policy import PolicyError
    from .core import publish_policy

    assert settings.state_dir
    try:
        engine = api.open_policy(settings.policy)
    except PolicyError as exc:
        for d in exc.diagnostics[:50]:
            log.error("policy reload refused: %s", d.render())
        return False
    publish_policy(settings.state_dir, engine.policy)
    log.info("policy %s %s (sha256 %s) published to the workers", engine.policy.name, engine.policy.version,
             engine.policy.sha256[:12])
    return True


def bind(host: str, port: int) -> socket.socket:
    """Return a TCP socket bound to host:port (SO_REUSEADDR, inheritable by workers); raises OSError.

    uvicorn's own ``bind_socket`` exits the process on failure; the CLI wants a located error instead.
    The socket listens (with ``BACKLOG``) before it is returned, so a client that connects as soon as
    the address is announced waits in the backlog instead of being refused while uvicorn starts.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, host: str, port: int, workers: int = 1,
          on_bound: Callable[[str, int], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM. ``on_bound(host, port)`` is called once the socket listens.

    With several workers, the settings reach them through the environment (``Settings.to_env``).
    Raises what ``create_app`` raises (PolicyError, AuditWriteError) before listening, OSError when the
    address cannot be bound.
    """
    own_state = settings.state_dir is None
    state_dir = settings.state_dir or tempfile.mkdtemp(prefix="finetune-policy-run-")
    settings = settings.with_(state_dir=state_dir)
    try:
        if workers <= 1:
            _serve_one(settings, host, port, on_bound)
        else:
            _serve_many(settings, host, port, workers, on_bound)
    finally:
        if own_state:
            shutil.rmtree(state_dir, ignore_errors=True)


def _serve_one(settings: Settings, host: str, port: int, on_bound: Callable[[str, int], None] | None) -> None:
    import uvicorn

    from .app import create_app

    app = create_app(settings)  # the policy and the audit store fail here, before the socket is bound
    config = uvicorn_config(app, settings, host, port, 1)
    server = uvicorn.Server(config)
    sock = bind(host, port)
    if on_bound is not None:
        name = sock.getsockname()
        on_bound(str(name[0]), int(name[1]))
    server.run(sockets=[sock])


def _serve_many(settings: Settings, host: str, port: int, workers: int,
                on_bound: Callable[[str, int], None] | None) -> None:
    from uvicorn.supervisors import Multiprocess

    from .. import api

    # fail before forking: a bad policy exits 3, an unusable audit store 7, in the parent, once
    engine = api.open_policy(settings.policy)
    if settings.audit:
        api.audit_writer(settings.audit_db, key_path=settings.audit_key).close()
    from .core import publish_policy

    publish_policy(str(settings.state_dir), engine.policy)
    os.environ.update(settings.to_env())  # the spawned workers build their app from these
    config = uvicorn_config("ruleengine.service.app:create_app", settings, host, port, workers)
    sock = bind(host, port)
    if on_bound is not None:
        name = sock.getsockname()
        on_bound(str(name[0]), int(name[1]))

    class Supervisor(Multiprocess):
        """uvicorn's supervisor, but SIGHUP reloads the policy (published to the workers) instead of restarting."""

        def handle_hup(self) -> None:
            publish_from_path(settings)

    Supervisor(config, sockets=[sock]).run()
