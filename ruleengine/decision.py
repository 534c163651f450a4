"""The Decision: everything a decision produced, as one JSON-safe record (schemas/decision.schema.json)."""

from __future__ import annotations

import os
import threading
import time
from base64 import b32encode
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .trace import TraceEvent, trace_to_dicts

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .derive import Candidate, Derived

SCHEMA_VERSION = "1"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD)
_PAD = bytes(4)


class _Entropy:
    """Random bytes from the OS in blocks (one system call per 409 ids, not one per id)."""

    def __init__(self, block: int = 4096) -> None:
        self.block, self.buffer, self.pos, self.lock = block, b"", 0, threading.Lock()

    def take(self, n: int) -> bytes:
        with self.lock:
            if self.pos + n > len(self.buffer):
                self.buffer, self.pos = os.urandom(self.block), 0
            start = self.pos
            self.pos = start + n
            return self.buffer[start:start + n]


_ENTROPY = _Entropy()


def new_decision_id(now_ms: int | None = None) -> str:
    """Return a new ULID: 48-bit millisecond timestamp + 80 random bits (from the OS), Crockford base32.

    Sortable by time; the random part is read from ``os.urandom`` in blocks.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    raw = (ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big") + _ENTROPY.take(10)
    # 32 zero bits in front make 160 bits = 32 base32 digits, the first 6 of them zero: the other 26 are the ULID
    return b32encode(_PAD + raw)[6:].decode("ascii").translate(_TO_CROCKFORD)


@dataclass
class Decision:
    """One decision. ``verdict`` is None when nothing fits (``feasible`` is then False).

    ``candidate`` is the chosen verdict with its memory estimate and training settings, and
    ``derivation`` the derived facts it was decided on, so executors and services never derive again;
    ``trace`` holds the typed events (``to_dict`` writes their JSON form).
    """

    decision_id: str
    created_at: str
    policy: dict
    facts_given: dict
    facts_normalized: dict
    derived: dict
    verdict: dict | None
    feasible: bool
    chosen_rule: str | None
    rationale: str
    source: str
    matched_rules: list[str]
    advice_rules: list[str]
    rejected: list[dict]
    warnings: list[dict]
    notes: list[dict]
    estimates: dict[str, dict]
    suggestions: list[dict]
    trace: tuple[TraceEvent, ...]
    metrics: dict
    architecture: dict = field(default_factory=dict)
    counterfactuals: list[dict] | None = None
    candidate: Candidate | None = field(default=None, repr=False, compare=False)
    derivation: Derived | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the decision as a JSON-safe dict (see schemas/decision.schema.json)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "decision_id": self.decision_id,
            "created_at": self.created_at,
            "policy": self.policy,
            "facts": {"given": self.facts_given, "normalized": self.facts_normalized},
            "derived": self.derived,
            "architecture": self.architecture,
            "feasible": self.feasible,
            "verdict": self.verdict,
            "chosen_rule": self.chosen_rule,
            "rationale": self.rationale,
            "source": self.source,
            "matched_rules": self.matched_rules,
            "advice_rules": self.advice_rules,
            "rejected": self.rejected,
            "warnings": self.warnings,
            "notes": self.notes,
            "estimates": self.estimates,
            "suggestions": self.suggestions,
            "trace": trace_to_dicts(self.trace),
            "metrics": self.metrics,
            **({"counterfactuals": self.counterfactuals} if self.counterfactuals is not None else {}),
        }
