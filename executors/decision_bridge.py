"""From facts to the verdict a plan is built on: the decision path of ``decide plan`` / ``decide train``.

This module imports only the rule engine (no torch, transformers or peft): the decision is made
before anything heavy is imported. It fills ``model.config`` from ``--model`` and the example
counts from ``--data`` when the facts lack them, runs the decision, applies a ``--method``
override (the policy's verdict for that method under the same facts), and reads the decision's
own estimates (memory, trainable parameters) for the verdict the plan will run.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ruleengine.diagnostics import DiagnosticError
from ruleengine.exitcodes import ExitCode

from .data import FileScan
from .errors import Diagnostic, Location


class InfeasibleDecision(DiagnosticError):
    """The policy found no method that fits and no ``--method`` override was given (exit 1)."""

    exit_code = ExitCode.INFEASIBLE


@dataclass
class DecisionOutcome:
    """The decision and the verdict the plan runs (the policy's, or the override's)."""

    decision: Any
    verdict: dict
    override: dict | None
    summary: dict  # the plan's ``decision`` section


def fill_facts(given: Any, model_path: str | None, scans: list[FileScan] | None) -> tuple[Any, dict[str, Any]]:
    """Return the facts with ``model.config`` (from ``--model``) and the example counts (from ``--data``)
    filled in where the facts lack them, and what was filled."""
    from ruleengine.facts import merge_facts

    data = given.data or {}
    overrides: dict[tuple, tuple[Any, str]] = {}
    filled: dict[str, Any] = {}
    if model_path and not (data.get("model") or {}).get("config"):
        config = os.path.join(os.path.abspath(model_path), "config.json")
        overrides[("model", "config")] = (config, "--model")
        filled["model.config"] = config
    facts_data = data.get("data") or {}
    if scans and "examples" not in facts_data and "tasks" not in facts_data:
        tasks: Counter[str] = Counter()
        for scan in scans:
            tasks.update(scan.tasks)
        if len(tasks) > 1:
            value = [{"name": name, "examples": n} for name, n in tasks.items()]
            overrides[("data", "tasks")] = (value, "--data")
            filled["data.tasks"] = value
        else:
            overrides[("data", "examples")] = (sum(tasks.values()), "--data")
            filled["data.examples"] = sum(tasks.values())
    return (merge_facts(given, overrides) if overrides else given), filled


def run_decision(given: Any, *, policy_path: str | None, model_path: str | None, scans: list[FileScan] | None,
                 method: str | None, origin: str, no_audit: bool = False, audit_db: str | None = None) -> DecisionOutcome:
    """Decide for ``given`` facts and return the verdict to plan, with the decision summary.

    The decision carries its chosen candidate and derived facts, so nothing is derived again here.
    Raises PolicyError (exit 3), FactsError (exit 2), InfeasibleDecision (exit 1, when nothing fits
    and no ``method`` override is given), and AuditWriteError (exit 7) when the audit store cannot be
    written.
    """
    from ruleengine import api

    engine = api.open_policy(policy_path)
    facts, filled = fill_facts(given, model_path, scans)
    decision = engine.decide(facts, origin=origin)
    record_id = None if no_audit else api.record(decision, engine, audit_db=audit_db)
    policy_method = decision.verdict["method"] if decision.verdict else None
    if not decision.feasible and method is None:
        hints = "; ".join(s.get("text", str(s)) for s in decision.suggestions[:3]) if decision.suggestions else ""
        raise InfeasibleDecision([Diagnostic(
            "plan-infeasible", "the policy found no method that fits these facts; nothing to plan",
            Location("--facts"), (hints + "; " if hints else "") + "or force one with --method")])
    override = None
    if method is not None and method != policy_method:
        assert decision.derivation is not None  # every Decision from the pipeline carries it
        candidate = decision.derivation.defaults[method]
        verdict = candidate.verdict()
        override = {"method": method, "policy_method": policy_method}
    else:
        assert decision.candidate is not None and decision.verdict is not None  # infeasible raised above
        candidate = decision.candidate
        verdict = dict(decision.verdict)
    policy = engine.policy
    summary = {
        "decision_id": decision.decision_id,
        "feasible": decision.feasible,
        "chosen_rule": decision.chosen_rule,
        "policy": {"name": policy.name, "version": policy.version, "sha256": engine.sha256},
        "policy_verdict": decision.verdict,
        "memory_estimate_gib": round(float(candidate.estimate.total_gib), 6),
        "fits": bool(candidate.fits),
        "trainable_params_estimate": int(candidate.estimate.trainable_params),
        "facts_filled": filled,
        "audit_record": record_id,
        "warnings": [w["code"] for w in decision.warnings],
    }
    return DecisionOutcome(decision, verdict, override, summary)
