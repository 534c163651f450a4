"""Decision throughput: full `decide()` and its parts, as ratios against a plain-Python baseline.

Baseline: the plain condition evaluator's first-hit selection over already-derived facts (the floor).
Prints per-call microseconds (median of repeated timings) and each part's ratio to the baseline.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ruleengine.derive import derive  # noqa: E402
from ruleengine.engine import decide, evaluate_policy, rule_program, select_plain  # noqa: E402
from ruleengine.facts import normalize_facts  # noqa: E402
from ruleengine.policy import load_policy  # noqa: E402

FACTS = {"model": {"params": "13B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 1},
         "data": {"examples": "50k"}, "task": {"use_case": "domain_qa"}}


def timed(fn, n: int) -> float:
    """Return the median microseconds per call of ``fn`` over 5 batches of ``n`` calls."""
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(samples)


def main() -> None:
    policy = load_policy(None)
    facts = normalize_facts(FACTS, policy)
    derived = derive(policy, facts)
    evaluate_policy(policy, facts)  # registers the rulesets
    from ruleengine.engine import _fit_field, _message, _referenced

    msg = _message(_referenced(policy.select_rules), derived.flat)
    for rule in policy.select_rules:
        msg[_fit_field(rule.order)] = derived.candidates[rule.id].fits
    program = rule_program(policy)

    base = timed(lambda: select_plain(policy, derived), 2000)
    rows = [
        ("plain first-hit select over derived facts (baseline)", base),
        ("durable-rules first hit (select rules)", timed(lambda: program.first_hit(msg), 2000)),
        ("normalize facts", timed(lambda: normalize_facts(FACTS, policy), 500)),
        ("derive (architecture + memory estimates per method and rule)", timed(lambda: derive(policy, facts), 200)),
        ("evaluate_policy with engine (derive + select + advise)", timed(lambda: evaluate_policy(policy, facts), 200)),
        ("decide() end to end, no counterfactuals", timed(lambda: decide(policy, FACTS), 50)),
        ("decide(explain=True) with counterfactuals", timed(lambda: decide(policy, FACTS, explain=True), 3)),
    ]
    print(f"{'part':<66}{'us/call':>12}{'x baseline':>12}")
    for name, us in rows:
        print(f"{name:<66}{us:>12.1f}{us / base:>12.1f}")


if __name__ == "__main__":
    main()
