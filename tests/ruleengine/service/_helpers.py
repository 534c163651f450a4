"""Helpers of the service tests (loaded by conftest.py as the module ``service_helpers``): a server in a thread."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass

FACTS = {"model": {"params": "13B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 1},
         "data": {"examples": "50k"}, "task": {"use_case": "domain_qa"}}


def strict_json(raw: bytes) -> object:
    """Parse a response body as strict JSON: NaN/Infinity refused, UTF-8 only."""
    def refuse(name: str) -> object:
        raise ValueError(f"{name} in a response body")

    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


@dataclass
class Served:
    """A running server: its base URL, host and port, the app's settings, and a request helper."""

    host: str
    port: int
    settings: object
    server: object
    app: object

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call(self, path: str, method: str = "GET", body: object = None, headers: dict | None = None,
             ctype: str = "application/json", timeout: float = 30) -> tuple[int, object, dict]:
        """Send one request on a new connection; return (status, parsed strict-JSON body or text, headers)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        hdrs = dict(headers or {})
        if data is not None:
            hdrs.setdefault("Content-Type", ctype)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            got = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        parsed = strict_json(raw) if got.get("content-type", "").startswith("application/json") else raw
        return resp.status, parsed, got


def start(settings, **service_kwargs) -> Served:
    """Start the app for ``settings`` under uvicorn (the `decide serve` configuration) in a daemon thread."""
    import uvicorn

    from ruleengine.service.app import create_app
    from ruleengine.service.server import bind, uvicorn_config

    app = create_app(settings, **service_kwargs)
    sock = bind("127.0.0.1", 0)
    config = uvicorn_config(app, settings, "127.0.0.1", 0, 1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert server.started, "the server did not start"
    host, port = sock.getsockname()[:2]
    served = Served(host, port, settings, server, app)
    served.thread = thread  # type: ignore[attr-defined]
    return served


def stop(served: Served) -> None:
    served.server.should_exit = True  # type: ignore[attr-defined]
    served.thread.join(timeout=30)  # type: ignore[attr-defined]
