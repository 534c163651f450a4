"""JSON logs: one line per request on the ``ruleengine.service.access`` logger, and the service's own events.

An access line: ``{"ts", "level": "info", "logger": "access", "method", "path", "status", "duration_ms",
"bytes", "client", "request_id", "decision_id"?, "error"?}``. Other records of the ``ruleengine``
loggers (policy reloads, audit store problems) are JSON lines too: ``{"ts", "level", "logger", "message"}``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

ACCESS = logging.getLogger("ruleengine.service.access")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; a dict message is merged into the line as fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as strict JSON (non-ASCII escaped, never NaN)."""
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name.rsplit(".", 1)[-1]}
        if isinstance(record.msg, dict):
            line.update(record.msg)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure() -> None:
    """Send the ``ruleengine`` loggers to stderr as JSON lines (once per process; a handler already set stays)."""
    root = logging.getLogger("ruleengine")
    if not any(getattr(h, "_finetune_policy", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._finetune_policy = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
