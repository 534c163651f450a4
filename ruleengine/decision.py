"""The Decision: everything a decision produced, as one JSON-safe record (schemas/decision.schema.json)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = "1"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_decision_id(now_ms: int | None = None) -> str:
    """Return a new ULID: 48-bit millisecond timestamp + 80 random bits, Crockford base32, sortable by time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


@dataclass
class Decision:
    """One decision. ``verdict`` is None when nothing fits (``feasible`` is then False)."""

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
    trace: list[dict]
    metrics: dict
    architecture: dict = field(default_factory=dict)
    counterfactuals: list[dict] | None = None

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
            "trace": self.trace,
            "metrics": self.metrics,
            **({"counterfactuals": self.counterfactuals} if self.counterfactuals is not None else {}),
        }
