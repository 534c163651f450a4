"""The decision pipeline: facts -> normalize -> derive -> evaluate -> explain -> Decision.

``decide`` runs one decision on a compiled policy (an ``Evaluator``); ``estimate`` the per-method
estimate table without rules. Both are the library core under ``ruleengine.api`` (which adds policy
loading, the memo of seen facts, batches and audit recording) and ``ruleengine.audit.replay``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from . import explain
from .decision import Decision, new_decision_id
from .estimates import architecture_dict, method_breakdowns, method_estimates
from .evaluate import Evaluation, Evaluator
from .facts import FactsInput, normalize_facts, plain_copy
from .templates import render_message

INLINE_CONFIG = "<inline>"  # normalized model.config of a config given as an object (content in config_content)


def normalized_facts(evaluator: Evaluator, given: dict | FactsInput, *, origin: str = "",
                     model_config: dict | None = None,
                     require: tuple[str, ...] = ("model", "hardware", "data")) -> dict:
    """Return complete, typed facts for ``given`` under the evaluator's policy.

    The content of ``model.config`` is read once (a path, relative to ``origin``; or the inline object
    itself, whose place then says ``<inline>``) and recorded as ``model.config_content`` so a replay
    never depends on the file; ``model_config`` supplies that content directly (replay of a recorded
    decision). Raises FactsError (exit 2).
    """
    from .derive import read_model_config

    facts = normalize_facts(given, evaluator.policy, require=require)
    model = facts["model"]
    if model.get("config") is not None:
        if model_config is not None:
            content = model_config
        elif isinstance(model["config"], dict):
            content = model["config"]
        else:
            content = read_model_config(model, origin)
        if isinstance(model["config"], dict):  # an inline config: its content is recorded once, under config_content
            model["config"] = INLINE_CONFIG
        model["config_content"] = content
    return facts


def _messages(evaluator: Evaluator, ev: Evaluation) -> tuple[list[dict], list[dict], str, str]:
    policy = evaluator.policy
    warnings: list[dict] = []
    notes: list[dict] = []
    rationale = source = ""
    values: dict[str, Any] | None = None

    def render(template: str) -> str:
        nonlocal values
        if values is None:
            values = {**policy.thresholds, **ev.flat}
        return render_message(template, values)

    if ev.chosen:
        rule = policy.rule(ev.chosen)
        rationale, source = rule.rationale, rule.source
        warnings.extend({"code": w["code"], "message": render(w["message"]), "rule": rule.id} for w in rule.warn)
        notes.extend({"code": n["code"], "message": render(n["message"]), "rule": rule.id} for n in rule.note)
        if ev.candidate:
            notes.extend({"code": "verdict-adjusted", "message": text, "rule": rule.id} for text in ev.candidate.notes)
            if ev.candidate.fit_changes:
                needed, *changes = ev.candidate.fit_changes
                notes.append({"code": "settings-changed-to-fit", "rule": rule.id,
                              "message": f"settings changed to fit ({needed}): " + "; ".join(changes)})
    for rid in ev.advice:
        rule = policy.rule(rid)
        warnings.extend({"code": w["code"], "message": render(w["message"]), "rule": rid} for w in rule.warn)
        notes.extend({"code": n["code"], "message": render(n["message"]), "rule": rid} for n in rule.note)
    notes.extend({"code": "facts-adjusted", "message": text, "rule": None} for text in ev.derived.notes)
    return warnings, notes, rationale, source


def _whatif() -> Any:
    from . import whatif  # only infeasible decisions and explanations search: not loaded for the others

    return whatif


def decide(evaluator: Evaluator, given: dict | FactsInput, *, origin: str = "", explain_all: bool = False,
           model_config: dict | None = None) -> Decision:
    """Return the Decision for ``given`` facts under the evaluator's policy.

    Raises FactsError (exit 2) for invalid facts and EngineDisagreement (exit 4) if durable-rules
    and the condition evaluator ever disagree. An infeasible decision carries suggestions, each a
    re-evaluation of the policy; ``explain_all`` adds counterfactuals (the smallest change of one
    fact that flips the verdict).
    """
    t0 = time.perf_counter()
    inp = given if isinstance(given, FactsInput) else FactsInput(given)
    facts = normalized_facts(evaluator, inp, origin=origin, model_config=model_config)
    t1 = time.perf_counter()
    ev = evaluator.evaluate(facts, origin)
    t2 = time.perf_counter()
    warnings, notes, rationale, source = _messages(evaluator, ev)
    estimates = method_estimates(evaluator.cost_constants, ev.derived, facts)
    rejected = explain.rejected_methods(ev.trace, ev.derived, ev.candidate, evaluator.why_not)
    suggestions = [] if ev.candidate else _whatif().suggestions(evaluator, facts, origin)
    t3 = time.perf_counter()
    counterfactuals = _whatif().counterfactuals(evaluator, facts, ev, origin) if explain_all else None
    t4 = time.perf_counter()
    policy = evaluator.policy
    return Decision(
        decision_id=new_decision_id(),
        created_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        policy={"name": policy.name, "version": policy.version, "sha256": evaluator.sha256,
                "semantic_sha256": policy.semantic_sha256, "language": policy.language, "origin": policy.origin},
        facts_given=plain_copy(inp.data), facts_normalized=facts, derived=dict(ev.derived.flat),
        verdict=ev.candidate.verdict() if ev.candidate else None, feasible=ev.candidate is not None,
        chosen_rule=ev.chosen, rationale=rationale, source=source,
        matched_rules=[e.rule for e in ev.trace if e.kind == "select" and e.matched],
        advice_rules=list(ev.advice), rejected=rejected, warnings=warnings, notes=notes, estimates=estimates,
        suggestions=suggestions, trace=ev.trace,
        metrics={"normalize_ms": round((t1 - t0) * 1e3, 3), "evaluate_ms": round((t2 - t1) * 1e3, 3),
                 "explain_ms": round((t3 - t2) * 1e3, 3), "counterfactuals_ms": round((t4 - t3) * 1e3, 3),
                 "total_ms": round((t4 - t0) * 1e3, 3), "engine": "durable_rules"},
        architecture=architecture_dict(ev.derived.arch),
        counterfactuals=counterfactuals, candidate=ev.candidate, derivation=ev.derived,
    )


def summary_of(decision: Decision) -> dict:
    """Return the compact form of a decision: id, verdict, chosen rule, memory, warning/note codes, suggestions."""
    chosen = decision.candidate
    return {"decision_id": decision.decision_id, "feasible": decision.feasible, "verdict": decision.verdict,
            "chosen_rule": decision.chosen_rule,
            "memory_gb": round(chosen.estimate.total_gib, 3) if chosen is not None else None,
            "warnings": [w["code"] for w in decision.warnings], "notes": [n["code"] for n in decision.notes],
            "suggestions": [s["text"] for s in decision.suggestions]}


def summarize(evaluator: Evaluator, given: dict | FactsInput, *, origin: str = "",
              model_config: dict | None = None) -> dict:
    """Return ``summary_of(decide(...))`` without building what a summary leaves out.

    The same choice and advice through durable-rules, but no trace, no estimate table and no
    rejection reasons: for bulk decisions (`decide batch`). Raises as :func:`decide`.
    """
    inp = given if isinstance(given, FactsInput) else FactsInput(given)
    facts = normalized_facts(evaluator, inp, origin=origin, model_config=model_config)
    ev = evaluator.evaluate(facts, origin, traced=False)
    warnings, notes, _, _ = _messages(evaluator, ev)
    suggestions = [] if ev.candidate else _whatif().suggestions(evaluator, facts, origin)
    return {"decision_id": new_decision_id(), "feasible": ev.candidate is not None,
            "verdict": ev.candidate.verdict() if ev.candidate else None, "chosen_rule": ev.chosen,
            "memory_gb": round(ev.candidate.estimate.total_gib, 3) if ev.candidate is not None else None,
            "warnings": [w["code"] for w in warnings], "notes": [n["code"] for n in notes],
            "suggestions": [s["text"] for s in suggestions]}


def estimate(evaluator: Evaluator, given: dict | FactsInput, *, origin: str = "",
             breakdown: tuple[str, ...] = ()) -> dict:
    """Return memory, trainable parameters and cost of every method for ``given`` (no rules applied).

    Data is optional (cost needs it). ``breakdown`` names methods whose estimate is also returned
    term by term (``breakdown`` key; see estimates.method_breakdowns). Raises FactsError for invalid
    facts, KeyError for an unknown method in ``breakdown``.
    """
    facts = normalized_facts(evaluator, given, origin=origin, require=("model", "hardware"))
    derived = evaluator.derive(facts, origin)
    policy = evaluator.policy
    out = {"policy": {"name": policy.name, "version": policy.version, "sha256": evaluator.sha256},
           "architecture": architecture_dict(derived.arch), "usable_gb": derived.usable_gb,
           "gpu": {"name": derived.gpu.name, "memory_gb": derived.gpu.memory_gb, "count": derived.gpu.count,
                   "host_memory_gb": derived.gpu.host_memory_gb},
           "estimates": method_estimates(evaluator.cost_constants, derived, facts)}
    if breakdown:
        out["breakdown"] = method_breakdowns(derived, breakdown)
        out["architecture_summary"] = derived.arch.summary()
    return out
