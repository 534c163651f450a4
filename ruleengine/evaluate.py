"""Evaluation: a policy's rules run against derived facts, emitting the typed trace.

``Evaluator`` is a compiled policy: each rule's condition as a closure that returns its first
failing comparison (or None when it holds), the durable-rules program of the policy, and the
derivation cache. ``evaluate`` runs select rules (first hit whose verdict fits) and advise rules
(all hits, with the verdict's facts) and returns an ``Evaluation`` with the trace.

durable-rules is the rules engine every decision goes through: it says which rules fired, and the
condition closures, which also say why the others did not, must agree with it on every decision,
or the decision fails with EngineDisagreement (exit 4) rather than report something the engine did
not decide. Callers that evaluate many hypothetical fact sets (what-if searches, policy grids) may
pass ``use_engine=False``; their answers are the same by that agreement.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .conditions import Check, Cmp, comparisons, compile_check, compile_predicate, to_durable
from .cost import CostConstants
from .derive import Candidate, DeriveCache, Derived, derive, derive_lazily
from .durable_host import DurableHostError, DurableRule, MessageValueError, RuleProgram, program_for
from .trace import AdviseEvent, SelectEvent, TraceEvent
from .vocabulary import field_name

FIT_PREFIX = "fit__"


class EngineDisagreement(RuntimeError):
    """durable-rules and the condition evaluator disagree, or durable-rules failed: a bug, never a decision."""

    exit_code = 4


def fit_field(order: int) -> str:
    """Return the message field carrying whether select rule number ``order``'s verdict fits."""
    return f"{FIT_PREFIX}{order}"


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its condition compiled: ``check`` gives the first failure, ``holds`` only the truth."""

    id: str
    priority: int
    order: int
    check: Check
    holds: Callable[[dict[str, Any]], bool]


def _compiled(rule: Any) -> CompiledRule:
    return CompiledRule(rule.id, rule.priority, rule.order, compile_check(rule.when), compile_predicate(rule.when))


def _referenced(rules: list) -> tuple[tuple[str, str], ...]:
    facts: set[str] = set()
    for rule in rules:
        for cmp in comparisons(rule.when):
            if cmp.fact:
                facts.add(cmp.fact)
            if isinstance(cmp, Cmp) and cmp.other_fact:
                facts.add(cmp.other_fact)
    return tuple((path, field_name(path)) for path in sorted(facts))


def verdict_facts(candidate: Candidate | None) -> dict[str, Any]:
    """Return the ``verdict.*`` facts advise rules may reference."""
    if candidate is None:
        return {"verdict.method": "", "verdict.rank": 0, "verdict.feasible": False, "verdict.sharding": "none",
                "verdict.memory_gb": 0.0, "verdict.headroom_gb": 0.0}
    return {"verdict.method": candidate.method, "verdict.rank": int(candidate.rank or 0), "verdict.feasible": True,
            "verdict.sharding": candidate.training["sharding"], "verdict.memory_gb": candidate.estimate.total_gib,
            "verdict.headroom_gb": candidate.headroom_gb}


def durable_rules(policy: Any) -> tuple[list[DurableRule], list[DurableRule]]:
    """Return the policy's rules as durable-rules programs them: select rules guarded by their fit field, advise rules.

    ``durable_host.check_rules`` on this pair finds what durable-rules cannot run (``decide validate``).
    """
    select = [DurableRule(r.id, r.order, {"$and": [{fit_field(r.order): True}, to_durable(r.when)]})
              for r in policy.select_rules]
    advise = [DurableRule(r.id, r.order, to_durable(r.when)) for r in policy.advise_rules]
    return select, advise


@dataclass
class Evaluation:
    """The outcome of evaluating rules on derived facts: the choice, the advice and the trace."""

    derived: Derived
    chosen: str | None
    candidate: Candidate | None
    advice: list[str]
    trace: tuple[TraceEvent, ...]
    flat: dict[str, Any]  # derived facts plus the verdict's facts

    def signature(self) -> tuple[str, int | None]:
        """Return (method, rank) of the verdict, or ("infeasible", None)."""
        return self.candidate.signature() if self.candidate else ("infeasible", None)


class Evaluator:
    """A policy compiled for evaluation: rule checks, the durable-rules program and the derivation cache."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.sha256 = policy.sha256
        self.select = [_compiled(r) for r in policy.select_rules]
        self.advise = [_compiled(r) for r in policy.advise_rules]
        self.select_fields = _referenced(policy.select_rules)
        self._fit_fields = [(r.id, fit_field(r.order)) for r in policy.select_rules]
        self.advise_fields = _referenced(policy.advise_rules)
        self.cache = DeriveCache(policy)
        self._select_rules = {r.id: r for r in policy.select_rules}
        self.cost_constants = CostConstants.from_policy(policy.cost)
        self.why_not = {m: spec["why_not"] for m, spec in (policy.defaults.get("methods") or {}).items()
                        if spec.get("why_not")}
        self._program: RuleProgram | None = None
        self._program_lock = threading.Lock()

    @property
    def program(self) -> RuleProgram:
        """Return the policy's durable-rules program, registered on first use (thread-safe)."""
        if self._program is None:
            with self._program_lock:
                if self._program is None:
                    select, advise = durable_rules(self.policy)
                    self._program = program_for(self.sha256, select, advise)
        return self._program

    def derive(self, facts: dict, origin: str = "") -> Derived:
        """Return the derived facts of normalized ``facts`` (cached per memory point). Raises FactsError."""
        return derive(self.policy, facts, origin, self.cache)

    def evaluate(self, facts: dict, origin: str = "", *, use_engine: bool = True,
                 derived: Derived | None = None, traced: bool = True) -> Evaluation:
        """Derive facts, choose the method and collect advice, with the trace of every rule.

        With ``use_engine`` the choice and the advice also come from durable-rules and must agree
        (raises EngineDisagreement otherwise). Without ``traced`` no trace events are built (the
        choice and the advice are the same): for summaries, where nobody reads why. Raises
        FactsError when the facts cannot be derived.
        """
        derived = derived if derived is not None else self.derive(facts, origin)
        flat = derived.flat
        candidates = derived.candidates
        trace: list[TraceEvent] = []
        chosen: str | None = None
        if traced:
            for rule in self.select:
                cand = candidates[rule.id]
                failed = rule.check(flat)
                fits = cand.fits
                matched = failed is None and fits
                is_chosen = matched and chosen is None
                if is_chosen:
                    chosen = rule.id
                trace.append(SelectEvent(rule.id, rule.priority, rule.order, failed is None, fits, matched,
                                         is_chosen, cand.label(), cand.method, cand.estimate.total_gib, cand.usable_gb,
                                         failed))
        else:
            chosen = self.choose(facts, origin, derived)[0]
        if use_engine and self.select:
            message = self._message(self.select_fields, flat)
            for rule_id, field_name in self._fit_fields:
                message[field_name] = candidates[rule_id].fits
            try:
                engine_choice = self.program.first_hit(message)
            except (DurableHostError, MessageValueError) as exc:
                raise EngineDisagreement(f"select: {exc}") from None
            if engine_choice != chosen:
                raise EngineDisagreement(f"select: durable-rules chose {engine_choice}, the condition evaluator "
                                         f"chose {chosen}")
        candidate = candidates[chosen] if chosen else None
        flat = {**flat, **verdict_facts(candidate)}
        advice: list[str] = []
        for rule in self.advise:
            if not traced:
                if rule.holds(flat):
                    advice.append(rule.id)
                continue
            failed = rule.check(flat)
            trace.append(AdviseEvent(rule.id, rule.priority, rule.order, failed is None, failed))
            if failed is None:
                advice.append(rule.id)
        if use_engine and self.advise:
            try:
                fired = self.program.all_hits(self._message(self.advise_fields, flat))
            except (DurableHostError, MessageValueError) as exc:
                raise EngineDisagreement(f"advise: {exc}") from None
            if fired != advice:
                raise EngineDisagreement(f"advise: durable-rules fired {fired}, the condition evaluator matched "
                                         f"{advice}")
        return Evaluation(derived, chosen, candidate, advice, tuple(trace), flat)

    def choose(self, facts: dict, origin: str = "", derived: Derived | None = None) -> tuple[str | None,
                                                                                           Candidate | None]:
        """Return (chosen select rule, its candidate), or (None, None) when nothing fits: no trace, no advice.

        The same first-hit evaluation as :meth:`evaluate` for tools that decide many hypothetical fact
        sets (grids, maps, what-if searches). Raises FactsError when the facts cannot be derived.
        """
        derived = derived if derived is not None else self.derive(facts, origin)
        flat = derived.flat
        candidates = derived.candidates
        for rule in self.select:
            cand = candidates[rule.id]
            if cand.fits and rule.holds(flat):
                return rule.id, cand
        return None, None

    def outcome(self, facts: dict, origin: str = "") -> tuple[tuple[str, int | None], Candidate | None]:
        """Return (verdict signature, chosen candidate) of hypothetical ``facts``: the first hit, lazily.

        Conditions are checked first and a rule's candidate is resolved only when its conditions
        hold; memory facts are computed only when a condition reads them (``derive.derive_lazily``).
        The answer is :meth:`choose`'s. Raises FactsError / ValueError for facts that cannot be derived.
        """
        flat, candidate = derive_lazily(self.policy, facts, origin, self.cache)
        by_id = self._select_rules
        for rule in self.select:
            if rule.holds(flat):
                cand = candidate(by_id[rule.id])
                if cand.fits:
                    return cand.signature(), cand
        return ("infeasible", None), None

    @staticmethod
    def _message(fields: tuple[tuple[str, str], ...], flat: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"always__": 1}
        for path, name in fields:
            value = flat[path]
            out[name] = float(value) if isinstance(value, float) else value
        return out


_EVALUATORS: dict[str, Evaluator] = {}
_EVALUATORS_LOCK = threading.Lock()


def evaluator_for(policy: Any) -> Evaluator:
    """Return the Evaluator of ``policy``, compiled once per policy object (thread-safe)."""
    key = f"{id(policy)}"
    with _EVALUATORS_LOCK:
        found = _EVALUATORS.get(key)
        if found is not None and found.policy is policy:
            return found
    ev = Evaluator(policy)
    with _EVALUATORS_LOCK:
        _EVALUATORS[key] = ev
        if len(_EVALUATORS) > 256:
            _EVALUATORS.pop(next(iter(_EVALUATORS)))
    return ev
