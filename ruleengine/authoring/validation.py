"""`decide validate`: everything that stops a policy from running, located, in one run.

The compiler's diagnostics (every phase: structure, schema, names, units, semantics) plus the limits
of durable-rules that remain after the engine's own splitting (``durable_host.check_rules``:
operators per rule, values of one ``in`` list, fields per rule, simultaneous comparisons ...), each
located at its rule. A policy that validates runs: the engine can register it and every number in
it is finite and within range.
"""

from __future__ import annotations

import os
from typing import Any

from ..diagnostics import Diagnostic, Location

# what to do about each limit of ``durable_host.ENGINE_LIMITS`` that a rule can reach
LIMIT_HELP = {
    "operators_per_rule": "split the rule in two, or merge its `in`/`any` groups (each is one operator)",
    "simultaneous_comparisons_per_rule": "split an `any` of many numeric comparisons into several rules",
    "in_list_values": "split the `in` list over several rules, or compare a derived fact instead",
    "fields_per_rule": "split the rule: it reads more facts than durable-rules can carry in one message",
    "integer_range": "use numbers within +-2**53",
    "float_range": "use finite numbers",
    "string_bytes": "use shorter values",
    "field_name": "rename the fact or threshold",
}


def engine_limit_diagnostics(policy: Any) -> list[Diagnostic]:
    """Return one ``engine-limit`` error per rule durable-rules cannot run (empty: the program registers).

    Registers nothing. Each diagnostic is located at its rule and names the limit and its value.
    """
    from ..durable_host import ENGINE_LIMITS, MessageValueError, check_rules
    from ..evaluate import durable_rules

    select, advise = durable_rules(policy)
    try:
        problems: list[Any] = list(check_rules(select, advise))
    except MessageValueError:
        problems = []
        for rule in [*select, *advise]:
            try:
                problems.extend(check_rules([rule], []))
            except MessageValueError as err:
                problems.append(_Problem(str(err), rule.id, "string_bytes"))
    out: list[Diagnostic] = []
    for problem in problems:
        rid = getattr(problem, "rule", None)
        limit = getattr(problem, "limit", None) or "engine"
        loc = policy.locations.get(f"rules.{rid}", Location(policy.origin)) if rid else Location(policy.origin)
        value = ENGINE_LIMITS[limit].value if limit in ENGINE_LIMITS else None
        extra = f" (limit {limit} = {value})" if value is not None and str(value) not in str(problem) else ""
        out.append(Diagnostic("engine-limit", f"durable-rules cannot run this: {problem}{extra}", loc,
                              LIMIT_HELP.get(limit, "see docs/engine-limits.md"), "error",
                              f"rules.{rid}" if rid else "rules"))
    return out


class _Problem(ValueError):
    def __init__(self, message: str, rule: str, limit: str):
        super().__init__(message)
        self.rule = rule
        self.limit = limit


def validate_policy(path: str | os.PathLike) -> tuple[Any | None, list[Diagnostic]]:
    """Return (policy or None, every diagnostic) for the policy at ``path``: all compiler phases, engine limits.

    The policy is None when there is an error. Never raises for a bad policy.
    """
    from ..policy import CompileContext, PolicyError, run_stages
    from ..policy.compiler import read_policy_files

    try:
        files, root, origin, reader = read_policy_files(path)
    except PolicyError as exc:
        return None, list(exc.diagnostics)
    ctx = run_stages(CompileContext(dict(files), root, origin, reader))
    diags = list(ctx.diags)
    policy = ctx.policy if not ctx.has_errors else None
    if policy is not None:
        diags.extend(engine_limit_diagnostics(policy))
        if any(d.severity == "error" for d in diags):
            policy = None
    return policy, sorted(diags, key=Diagnostic.sort_key)


def require_runnable(policy: Any) -> None:
    """Raise PolicyError (exit 3) when durable-rules cannot run ``policy`` (see ``engine_limit_diagnostics``)."""
    from ..policy import PolicyError

    diags = engine_limit_diagnostics(policy)
    if diags:
        raise PolicyError(diags)

