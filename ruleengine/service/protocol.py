"""uvicorn's httptools protocol with the read limits it lacks: a header deadline and a header size cap.

Stock uvicorn holds a connection that never sends a request, or sends its headers a byte a minute,
forever (its keep-alive timer starts only after a first response). ``TimedHttpToolsProtocol``:

- a new connection must start a request, and every request must complete its request line and headers,
  within ``FINETUNE_POLICY_HEADER_TIMEOUT`` seconds (default 10): otherwise 408 and the connection closes
  (an idle new connection is closed without an answer);
- the request line and headers may take at most ``MAX_HEADER_BYTES`` (64 KiB): otherwise 431 and close.

Bodies have their own deadline in the app (``FINETUNE_POLICY_BODY_TIMEOUT``); idle keep-alive
connections close after uvicorn's ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024


def _header_timeout() -> float:
    try:
        value = float(os.environ.get("FINETUNE_POLICY_HEADER_TIMEOUT", "10"))
    except ValueError:
        return 10.0
    return value if 0 < value < 3600 else 10.0


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol + header deadline and header size cap (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._in_headers = True  # from connection start (or a message start) until its headers are complete
        self._header_bytes = 0
        self._header_timeout = _header_timeout()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self._header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override, unused-ignore]
        """Start the deadline for the first request's headers."""
        super().connection_made(transport)
        self._in_headers = True
        self._header_bytes = 0
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel the deadline."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse as usual; a request whose headers stay incomplete past the cap gets 431."""
        super().data_received(data)
        if self._in_headers and self.transport is not None and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._disarm()
                self._refuse(b"431 Request Header Fields Too Large", "the request line and headers are over 64 KiB")

    def on_message_begin(self) -> None:
        """A new request: its headers are due within the deadline (from the connection's start for the first)."""
        super().on_message_begin()
        self._in_headers = True
        if self._header_deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        """Headers in: the deadline is met."""
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """Between requests of a keep-alive connection, uvicorn's keep-alive timer applies."""
        self._in_headers = True
        self._header_bytes = 0
        super().on_response_complete()

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport is None or self.transport.is_closing() or not self._in_headers:
            return
        if self._header_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # idle: nothing was asked, nothing to answer
            return
        self._refuse(b"408 Request Timeout", "the request line and headers did not arrive in time")

    def _refuse(self, status: bytes, message: str) -> None:
        code = "headers-too-large" if status.startswith(b"431") else "header-timeout"
        body = json.dumps({"error": {"code": code, "message": message}, "diagnostics": []}).encode("ascii")
        self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(body)).encode("ascii") + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()
