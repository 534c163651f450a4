"""The durable-rules host: a policy's rules registered as durable-rules rulesets and run per decision.

Select rules form a ruleset of events (``post``; ``pri`` = evaluation order, first hit); advise
rules a ruleset of facts (``assert_fact`` then ``retract_fact``, all hits). One fixed session per
ruleset, never deleted (``delete_state`` on a session no rule matched corrupts the heap in
durable-rules 2.0.28); a unique ``req`` per message keeps concurrent calls apart.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from dataclasses import dataclass
from typing import Any


class EngineError(RuntimeError):
    """durable-rules failed to evaluate a message (an action error or an engine error code)."""


@dataclass(frozen=True)
class DurableRule:
    """One rule as durable-rules sees it: its id, 1-based evaluation order and JSON condition."""

    id: str
    order: int
    condition: dict


class _Host:
    """The process-wide durable-rules host; records which rules fired per request."""

    def __init__(self) -> None:
        from durable.engine import Host

        outer = self

        class _RecordingHost(Host):
            def get_action(self, action_name: str):  # noqa: ANN202
                def action(c):  # noqa: ANN202
                    outer.fired.setdefault(c.m.req, []).append(action_name)
                return action

        self.host = _RecordingHost()
        self.fired: dict[int, list[str]] = {}
        self.registered: set[str] = set()
        self.counter = 0
        self.lock = threading.Lock()

    def ensure(self, definitions: dict[str, dict]) -> None:
        with self.lock:
            new = {k: copy.deepcopy(v) for k, v in definitions.items() if k not in self.registered}
            if new:
                self.host.set_rulesets(new)
                self.registered.update(new)

    def run(self, ruleset: str, message: dict, as_fact: bool) -> list[str]:
        from durable.engine import MessageNotHandledException

        with self.lock:
            self.counter += 1
            req = self.counter
            msg = {**message, "req": req, "sid": "0"}
            error = None
            try:
                if as_fact:
                    state = self.host.assert_fact(ruleset, msg)
                    with contextlib.suppress(MessageNotHandledException):
                        self.host.retract_fact(ruleset, msg)
                else:
                    state = self.host.post(ruleset, msg)
                error = state.get("exception") if isinstance(state, dict) else None
            except MessageNotHandledException:
                pass
            finally:
                fired = self.fired.pop(req, [])
            if error:
                raise EngineError(f"durable-rules action failed: {error}")
            return fired


_HOST: _Host | None = None
_HOST_LOCK = threading.Lock()


def _host() -> _Host:
    global _HOST
    with _HOST_LOCK:
        if _HOST is None:
            _HOST = _Host()
        return _HOST


class RuleProgram:
    """One policy's rules registered with durable-rules (both kinds), run per message."""

    def __init__(self, key: str, select: list[DurableRule], advise: list[DurableRule]) -> None:
        self.key = key
        self.select_name = f"fp_{key[:16]}_select"
        self.advise_name = f"fp_{key[:16]}_advise"
        definitions: dict[str, dict] = {}
        if select:
            definitions[self.select_name] = {r.id: {"all": [{"m": r.condition}], "pri": r.order, "run": r.id}
                                             for r in select}
        if advise:
            definitions[self.advise_name] = {r.id: {"all": [{"m": r.condition}], "pri": r.order, "run": r.id}
                                             for r in advise}
        self.has_select, self.has_advise = bool(select), bool(advise)
        self.order = {r.id: r.order for r in advise}
        _host().ensure(definitions)

    def first_hit(self, message: dict[str, Any]) -> str | None:
        """Return the id of the first select rule (by order) that holds for ``message``, or None.

        Raises EngineError when durable-rules fires more than one rule or fails.
        """
        if not self.has_select:
            return None
        fired = _host().run(self.select_name, message, as_fact=False)
        if len(fired) > 1:
            raise EngineError(f"durable-rules fired {fired} for one event")
        return fired[0] if fired else None

    def all_hits(self, message: dict[str, Any]) -> list[str]:
        """Return the ids of every advise rule that holds for ``message``, in evaluation order."""
        if not self.has_advise:
            return []
        fired = _host().run(self.advise_name, message, as_fact=True)
        return sorted(fired, key=self.order.__getitem__)


_PROGRAMS: dict[str, RuleProgram] = {}


def program_for(key: str, select: list[DurableRule], advise: list[DurableRule]) -> RuleProgram:
    """Return the registered program of a policy (``key``: its content hash), creating it once per process."""
    with _HOST_LOCK:
        found = _PROGRAMS.get(key)
    if found is not None:
        return found
    program = RuleProgram(key, select, advise)
    with _HOST_LOCK:
        return _PROGRAMS.setdefault(key, program)
