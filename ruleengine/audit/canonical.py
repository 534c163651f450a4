"""Canonical JSON: the one text form that record hashes and signed chain heads are computed over."""

from __future__ import annotations

import json
from typing import Any

from .store import InvalidRecord


def canonical_json(value: Any) -> str:
    """Return the canonical JSON text of ``value`` (sorted keys, no whitespace, UTF-8 text, no NaN/Infinity).

    Raises InvalidRecord if ``value`` is not JSON-safe (non-finite floats, non-string keys mixed with
    string keys, objects JSON cannot encode).
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"not canonical-JSON-safe: {exc}") from None
