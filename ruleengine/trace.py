"""The evaluation trace: one typed event per rule, matched or not, in evaluation order.

Events are written once by the evaluator and only read afterwards (not frozen: a frozen
dataclass costs a microsecond more per event, and a decision has one event per rule).

The evaluator (ruleengine/evaluate.py) emits these events; explanations (ruleengine/explain.py)
are pure filters over them, as OPA's tracer events are filtered by its explainers. ``to_dict``
gives the JSON form recorded in a decision (schemas/decision.schema.json, ``trace``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .conditions import Failure


@dataclass(slots=True)
class SelectEvent:
    """A select rule: whether its conditions held, whether its verdict fits, whether it was chosen.

    ``failed`` is the first failing comparison when the conditions did not hold.
    """

    rule: str
    priority: int
    order: int
    conditions_hold: bool
    fits: bool
    matched: bool
    chosen: bool
    candidate: str
    method: str
    memory_gb: float
    usable_gb: float
    failed: Failure | None
    kind: ClassVar[str] = "select"

    def to_dict(self) -> dict[str, Any]:
        """Return the event as recorded in a decision's ``trace``."""
        return {"event": "rule", "rule": self.rule, "kind": "select", "priority": self.priority, "order": self.order,
                "conditions_hold": self.conditions_hold, "fits": self.fits, "matched": self.matched,
                "chosen": self.chosen, "candidate": self.candidate, "method": self.method,
                "memory_gb": round(self.memory_gb, 3), "usable_gb": round(self.usable_gb, 3),
                "failed": self.failed.to_dict() if self.failed else None}


@dataclass(slots=True)
class AdviseEvent:
    """An advise rule: whether it matched (its warnings and notes apply), else its first failing comparison."""

    rule: str
    priority: int
    order: int
    matched: bool
    failed: Failure | None
    kind: ClassVar[str] = "advise"

    def to_dict(self) -> dict[str, Any]:
        """Return the event as recorded in a decision's ``trace``."""
        return {"event": "rule", "rule": self.rule, "kind": "advise", "priority": self.priority, "order": self.order,
                "matched": self.matched, "failed": self.failed.to_dict() if self.failed else None}


TraceEvent = SelectEvent | AdviseEvent


def select_events(trace: tuple[TraceEvent, ...] | list[TraceEvent]) -> list[SelectEvent]:
    """Return the select-rule events of a trace, in evaluation order."""
    return [e for e in trace if isinstance(e, SelectEvent)]


def chosen_event(trace: tuple[TraceEvent, ...] | list[TraceEvent]) -> SelectEvent | None:
    """Return the event of the chosen select rule, or None when nothing was chosen."""
    return next((e for e in trace if isinstance(e, SelectEvent) and e.chosen), None)


def trace_to_dicts(trace: tuple[TraceEvent, ...] | list[TraceEvent]) -> list[dict[str, Any]]:
    """Return the JSON form of a trace."""
    return [e.to_dict() for e in trace]
