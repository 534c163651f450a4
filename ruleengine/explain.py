"""Explanations as pure filters over the trace: why this method, and why not each other one.

Nothing here evaluates the policy: every answer is read off the typed trace events
(ruleengine/trace.py) and the derived facts they were computed from. What-if questions (what
would change the verdict, what would fit) are answered above the evaluator, in ruleengine/whatif.py.
"""

from __future__ import annotations

from .derive import Candidate, Derived
from .trace import SelectEvent, TraceEvent, chosen_event, select_events
from .units import format_value as _fmt


def describe_failure(failed: dict) -> str:
    """Return a failing condition as a sentence: ``data.examples = 50k, needs >= 1M (short by 950k)``."""
    op = failed["op"]
    actual, expected = failed["actual"], failed["expected"]
    name = failed.get("threshold")
    rhs = f"{name} = {_fmt(expected)}" if name else _fmt(expected)
    if failed["condition"].startswith("not "):
        text = f"{failed['fact']} = {_fmt(actual)}, and `{failed['condition'][4:]}` must not hold"
        return text
    text = f"{failed['fact']} = {_fmt(actual)}, needs {op} {rhs}"
    margin = failed.get("margin")
    if margin is not None and op in ("<", "<=", ">", ">="):
        text += f" ({'short' if op in ('>', '>=') else 'over'} by {_fmt(abs(margin))})"
    return text


def rejected_methods(trace: tuple[TraceEvent, ...] | list[TraceEvent], derived: Derived, chosen: Candidate | None,
                     why_not: dict[str, str] | None = None) -> list[dict]:
    """Return, for every method other than the chosen one, why it was not chosen.

    Codes: ``inapplicable`` (the method cannot be applied to this architecture, e.g. DoRA where peft
    would adapt routed experts), ``memory`` (a rule chose it but its verdict does not fit, or no rule
    chose it and it does not fit at its defaults), ``outranked`` (a rule chose it and it fits, but a rule that
    comes first won), ``conditions`` (the rules that choose it did not match: the first failing
    condition with the actual value and margin), ``no-rule`` (no rule of the policy chooses it;
    the policy's ``defaults.methods.<m>.why_not`` says why, when given).
    """
    out: list[dict] = []
    winner = chosen_event(trace)
    by_method: dict[str, list[SelectEvent]] = {}
    for e in select_events(trace):
        by_method.setdefault(e.method, []).append(e)
    for method, default in derived.defaults.items():
        if chosen is not None and method == chosen.method:
            continue
        events = by_method.get(method, [])
        fixed = default.cache.get("rejected")
        if fixed is None:
            fixed = default.cache["rejected"] = {
                "method": method, "memory_gb": round(default.estimate.total_gib, 3),
                "usable_gb": round(default.usable_gb, 3), "margin_gb": round(default.headroom_gb, 3),
                "rule": None, "condition": None}
        base = dict(fixed)
        if default.inapplicable:
            out.append({**base, "code": "inapplicable", "reason": f"cannot be applied to this model: "
                                                                  f"{default.inapplicable}"})
            continue
        outranked = next((e for e in events if e.matched), None)
        too_big = next((e for e in events if e.conditions_hold and not e.fits), None)
        if outranked is not None and winner is not None:
            e = outranked
            out.append({**base, "code": "outranked", "rule": e.rule,
                        "reason": f"rule `{e.rule}` (priority {e.priority}) would choose {e.candidate}, "
                                  f"but `{winner.rule}` (priority {winner.priority}) comes first"})
        elif too_big is not None:
            e = too_big
            memory, usable = round(e.memory_gb, 3), round(e.usable_gb, 3)
            out.append({**base, "code": "memory", "rule": e.rule, "memory_gb": memory,
                        "margin_gb": round(usable - memory, 3),
                        "reason": f"rule `{e.rule}` chooses {e.candidate}, which needs {memory:.1f} GiB "
                                  f"per GPU > {usable:.1f} GiB usable (short by {memory - usable:.1f} GiB)"})
        elif not default.fits:
            why = (f"needs {default.estimate.total_gib:.1f} GiB per GPU at its defaults > {default.usable_gb:.1f} "
                   f"GiB usable (short by {-default.headroom_gb:.1f} GiB)")
            out.append({**base, "code": "memory", "reason": why})
        elif events:
            e = events[0]
            failed = e.failed.to_dict() if e.failed else {}
            out.append({**base, "code": "conditions", "rule": e.rule, "condition": failed or None,
                        "reason": f"rule `{e.rule}` does not apply: {describe_failure(failed)}" if failed
                        else f"rule `{e.rule}` does not apply"})
        else:
            reason = f"no rule of this policy chooses {method}"
            if why_not and why_not.get(method):
                reason += f": {why_not[method]}"
            out.append({**base, "code": "no-rule", "reason": reason})
    return out
