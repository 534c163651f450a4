"""Evaluation: policy rules compiled to durable-rules rulesets, run against derived facts.

The engine only *emits events* (the trace): one per rule, matched or not, with the first failing
condition of a rule that did not match. Explanations are filters over that trace (explain.py).

durable-rules says which rules fired, not why others did not, so each rule is also evaluated by
the plain-Python condition evaluator; the two must agree on every decision, or the decision fails
with EngineDisagreement (exit code 4) rather than report something the engine did not decide.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .conditions import Cmp, comparisons, evaluate, first_failure, to_durable
from .decision import Decision, new_decision_id
from .derive import Candidate, Derived, derive
from .durable_host import DurableHostError, DurableRule, RuleProgram, program_for
from .facts import FactsInput, normalize_facts
from .policy import Policy
from .templates import render_message
from .vocabulary import field_name


class EngineDisagreement(RuntimeError):
    """durable-rules and the condition evaluator disagree: a bug, never a decision."""

    exit_code = 4


FIT_PREFIX = "fit__"


def _fit_field(rule_order: int) -> str:
    return f"{FIT_PREFIX}{rule_order}"


def durable_rules(policy: Policy) -> tuple[list[DurableRule], list[DurableRule]]:
    """Return the (select, advise) rules of ``policy`` as durable-rules runs them.

    A select rule carries the implicit guard ``fit__<order> == true`` (its own verdict fits in
    memory); its order is its (priority, id) rank, so the first hit by order is the choice.
    """
    select = [DurableRule(rule.id, rule.order, {"$and": [{_fit_field(rule.order): True}, to_durable(rule.when)]})
              for rule in policy.select_rules]
    advise = [DurableRule(rule.id, rule.order, to_durable(rule.when)) for rule in policy.advise_rules]
    return select, advise


_PROGRAM_OF: dict[int, tuple[weakref.ref, RuleProgram]] = {}  # id(policy) -> (the policy, its program)


def rule_program(policy: Policy) -> RuleProgram:
    """Return the durable-rules program of ``policy``, registered once per process (keyed by its content
    hash, since durable-rules rulesets are global and cannot be replaced).

    Remembered per Policy object (a loaded policy is never modified), because computing the
    content hash takes longer than a decision's rules.
    """
    key = id(policy)
    entry = _PROGRAM_OF.get(key)
    if entry is not None and entry[0]() is policy:
        return entry[1]
    program = program_for(policy.sha256, lambda: durable_rules(policy)[0], lambda: durable_rules(policy)[1])
    _PROGRAM_OF[key] = (weakref.ref(policy, lambda _ref: _PROGRAM_OF.pop(key, None)), program)
    return program


def _engine(call: Callable[[dict[str, Any]], Any], message: dict[str, Any]) -> Any:
    """Run one durable-rules call; its failures are engine bugs (EngineDisagreement, exit 4)."""
    try:
        return call(message)
    except DurableHostError as exc:
        raise EngineDisagreement(f"durable-rules failed: {exc}") from exc


def _message(fields: set[str], flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"always__": 1}
    for path in fields:
        value = flat[path]
        out[field_name(path)] = float(value) if isinstance(value, float) else value
    return out


def _referenced(rules: list) -> set[str]:
    facts: set[str] = set()
    for rule in rules:
        for cmp in comparisons(rule.when):
            facts.add(cmp.fact)
            if isinstance(cmp, Cmp) and cmp.other_fact:
                facts.add(cmp.other_fact)
    return facts


@dataclass
class Evaluation:
    """The raw outcome of evaluating rules on derived facts (before explanation)."""

    derived: Derived
    chosen: str | None
    candidate: Candidate | None
    advice: list[str]
    trace: list[dict]
    flat: dict[str, Any]


def verdict_facts(candidate: Candidate | None) -> dict[str, Any]:
    """Return the ``verdict.*`` facts advise rules may reference."""
    if candidate is None:
        return {"verdict.method": "", "verdict.rank": 0, "verdict.feasible": False, "verdict.sharding": "none",
                "verdict.memory_gb": 0.0, "verdict.headroom_gb": 0.0}
    return {"verdict.method": candidate.method, "verdict.rank": int(candidate.rank or 0), "verdict.feasible": True,
            "verdict.sharding": candidate.training["sharding"], "verdict.memory_gb": candidate.estimate.total_gib,
            "verdict.headroom_gb": candidate.headroom_gb}


def select_plain(policy: Policy, derived: Derived) -> tuple[str | None, list[dict]]:
    """Return the first select rule (in order) whose conditions hold and whose verdict fits, and the trace."""
    chosen = None
    trace: list[dict] = []
    for rule in policy.select_rules:
        cand = derived.candidates[rule.id]
        holds = evaluate(rule.when, derived.flat)
        failure = None if holds else first_failure(rule.when, derived.flat)
        matched = holds and cand.fits
        event = {
            "event": "rule", "rule": rule.id, "kind": "select", "priority": rule.priority, "order": rule.order,
            "conditions_hold": holds, "fits": cand.fits, "matched": matched, "chosen": False,
            "candidate": cand.label(), "method": cand.method, "memory_gb": round(cand.estimate.total_gib, 3),
            "usable_gb": round(cand.usable_gb, 3), "failed": failure.to_dict() if failure else None,
        }
        if matched and chosen is None:
            chosen = rule.id
            event["chosen"] = True
        trace.append(event)
    return chosen, trace


def evaluate_policy(policy: Policy, facts: dict, origin: str = "", use_engine: bool = True) -> Evaluation:
    """Derive facts, choose the method and collect advice.

    With ``use_engine`` the choice and the advice come from durable-rules and are checked against
    the plain evaluator (raises EngineDisagreement on any difference); without it only the plain
    evaluator runs (used for counterfactual searches, which evaluate many hypothetical fact sets).
    """
    derived = derive(policy, facts, origin)
    chosen, trace = select_plain(policy, derived)
    if use_engine and policy.select_rules:
        msg = _message(_referenced(policy.select_rules), derived.flat)
        for rule in policy.select_rules:
            msg[_fit_field(rule.order)] = derived.candidates[rule.id].fits
        engine_choice = _engine(rule_program(policy).first_hit, msg)
        if engine_choice != chosen:
            raise EngineDisagreement(f"select: durable-rules chose {engine_choice}, the condition evaluator chose {chosen}")
    candidate = derived.candidates[chosen] if chosen else None
    flat = {**derived.flat, **verdict_facts(candidate)}
    advice: list[str] = []
    for rule in policy.advise_rules:
        holds = evaluate(rule.when, flat)
        failure = None if holds else first_failure(rule.when, flat)
        trace.append({"event": "rule", "rule": rule.id, "kind": "advise", "priority": rule.priority,
                      "order": rule.order, "matched": holds, "failed": failure.to_dict() if failure else None})
        if holds:
            advice.append(rule.id)
    if use_engine and policy.advise_rules:
        fired = _engine(rule_program(policy).all_hits, _message(_referenced(policy.advise_rules), flat))
        if sorted(fired) != sorted(advice):
            raise EngineDisagreement(f"advise: durable-rules fired {sorted(fired)}, the condition evaluator "
                                     f"matched {sorted(advice)}")
    return Evaluation(derived, chosen, candidate, advice, trace, flat)


def _template_values(policy: Policy, flat: dict[str, Any]) -> dict[str, Any]:
    return {**policy.thresholds, **flat}


def decide(policy: Policy, given: dict | FactsInput, *, origin: str = "", explain: bool = False,
           model_config: dict | None = None) -> Decision:
    """Return the Decision for ``given`` facts under ``policy``.

    Raises FactsError (exit 2) for invalid facts and EngineDisagreement (exit 4) if the engine
    and the condition evaluator ever disagree. ``explain`` adds counterfactuals (slower).
    The content of ``model.config`` is read once (relative to ``origin``) and recorded in the
    normalized facts as ``model.config_content``, so that a replay never depends on the file;
    ``model_config`` supplies that content directly (replay of a recorded decision).
    """
    from . import explain as explain_mod

    t0 = time.perf_counter()
    inp = given if isinstance(given, FactsInput) else FactsInput(given)
    facts = normalize_facts(inp, policy)
    if facts["model"].get("config"):
        from .derive import read_model_config

        facts["model"]["config_content"] = model_config if model_config is not None else read_model_config(
            facts["model"], origin)
    t1 = time.perf_counter()
    ev = evaluate_policy(policy, facts, origin)
    t2 = time.perf_counter()
    values = _template_values(policy, ev.flat)
    warnings: list[dict] = []
    notes: list[dict] = []
    rationale = source = ""
    if ev.chosen:
        rule = policy.rule(ev.chosen)
        rationale, source = rule.rationale, rule.source
        for w in rule.warn:
            warnings.append({"code": w["code"], "message": render_message(w["message"], values), "rule": rule.id})
        for n in rule.note:
            notes.append({"code": n["code"], "message": render_message(n["message"], values), "rule": rule.id})
        for text in ev.candidate.notes if ev.candidate else []:
            notes.append({"code": "verdict-adjusted", "message": text, "rule": rule.id})
    for rid in ev.advice:
        rule = policy.rule(rid)
        for w in rule.warn:
            warnings.append({"code": w["code"], "message": render_message(w["message"], values), "rule": rid})
        for n in rule.note:
            notes.append({"code": n["code"], "message": render_message(n["message"], values), "rule": rid})
    for text in ev.derived.notes:
        notes.append({"code": "facts-adjusted", "message": text, "rule": None})
    estimates = explain_mod.method_estimates(policy, ev.derived, facts)
    why_not = {m: spec["why_not"] for m, spec in (policy.defaults.get("methods") or {}).items() if spec.get("why_not")}
    rejected = explain_mod.rejected_methods(ev.trace, ev.derived, ev.candidate, why_not)
    suggestions = [] if ev.candidate else explain_mod.suggestions(policy, facts, origin)
    t3 = time.perf_counter()
    counterfactuals = explain_mod.counterfactuals(policy, facts, ev, origin) if explain else None
    t4 = time.perf_counter()
    derived_public = {k: v for k, v in ev.derived.flat.items()}
    decision = Decision(
        decision_id=new_decision_id(),
        created_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        policy={"name": policy.name, "version": policy.version, "sha256": policy.sha256,
                "semantic_sha256": policy.semantic_sha256, "language": policy.language, "origin": policy.origin},
        facts_given=_json_safe(inp.data), facts_normalized=_json_safe(facts), derived=_json_safe(derived_public),
        verdict=ev.candidate.verdict() if ev.candidate else None, feasible=ev.candidate is not None,
        chosen_rule=ev.chosen, rationale=rationale, source=source,
        matched_rules=[e["rule"] for e in ev.trace if e["kind"] == "select" and e["matched"]],
        advice_rules=list(ev.advice), rejected=rejected, warnings=warnings, notes=notes, estimates=estimates,
        suggestions=suggestions, trace=_json_safe(ev.trace),
        metrics={"normalize_ms": round((t1 - t0) * 1e3, 3), "evaluate_ms": round((t2 - t1) * 1e3, 3),
                 "explain_ms": round((t3 - t2) * 1e3, 3), "counterfactuals_ms": round((t4 - t3) * 1e3, 3),
                 "total_ms": round((t4 - t0) * 1e3, 3), "engine": "durable_rules"},
        architecture=_json_safe(explain_mod.architecture_dict(ev.derived.arch)),
    )
    decision.counterfactuals = counterfactuals
    return decision


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return value
    return value
