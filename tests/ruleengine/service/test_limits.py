"""Connections cannot be held: header and body deadlines, header size cap, idle connections, bursts."""

from __future__ import annotations

import json
import socket
import threading
import time

from service_helpers import FACTS, strict_json


def _recv_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        out += chunk
    return out


def test_a_connection_that_never_asks_is_closed(serve_app, monkeypatch):
    monkeypatch.setenv("FINETUNE_POLICY_HEADER_TIMEOUT", "0.5")
    served = serve_app()
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        started = time.monotonic()
        assert _recv_all(sock) == b""  # closed by the server, without an answer
        assert time.monotonic() - started < 9


def test_slow_headers_get_408_and_the_connection_closes(serve_app, monkeypatch):
    monkeypatch.setenv("FINETUNE_POLICY_HEADER_TIMEOUT", "0.5")
    served = serve_app()
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/decide HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        data = _recv_all(sock)
    assert data.startswith(b"HTTP/1.1 408") and b"header-timeout" in data
    strict_json(data.split(b"\r\n\r\n", 1)[1])


def test_headers_over_64_kib_get_431(server):
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(40):
                sock.sendall(b"X-Filler: " + b"a" * 4000 + b"\r\n")
        except OSError:
            pass
        data = _recv_all(sock)
    assert data.startswith(b"HTTP/1.1 431") and b"headers-too-large" in data


def test_a_slow_body_gets_408(serve_app):
    served = serve_app(body_timeout=0.5)
    body = json.dumps(FACTS).encode()
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/decide HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])  # the rest never comes
        data = _recv_all(sock)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    payload = strict_json(data.split(b"\r\n\r\n", 1)[1])
    assert payload["error"]["code"] == "body-timeout"


def test_a_burst_of_200_connections_is_served_without_resets(server):
    """The stdlib server's backlog of 5 reset bursts of 40-100 connections; all 200 are answered here."""
    body = json.dumps(FACTS).encode()
    request = (b"POST /v1/decide HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    barrier = threading.Barrier(200)
    results: list[object] = [None] * 200

    def one(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            with socket.create_connection((server.host, server.port), timeout=60) as sock:
                sock.sendall(request)
                results[i] = _recv_all(sock)
        except Exception as exc:  # noqa: BLE001 - counted below
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    errors = [r for r in results if not (isinstance(r, bytes) and r.startswith(b"HTTP/1.1 200"))]
    assert errors == []
