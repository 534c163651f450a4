"""Decision speed of the API, as ratios against zen-engine and a plain first-hit floor, in one process.

Comparison points, on the same varied facts (bench/facts_gen.py: 1B-405B models, every GPU of the
catalog, 1-8 GPUs, every use case):
- zen-engine (GoRules, Rust) evaluating the policy's select and advise rules as two decision tables
  over the already-derived flat facts (bench/zen_tables.py; checked to agree with the engine);
- a plain first-hit floor: the compiled select checks over the same derived facts, no trace, no advice.

Measured: warm ``decide()`` on varied facts (memo off), on facts already seen (memo hit), on facts whose
model sizes are all new (nothing reused), infeasible decisions with their re-evaluated suggestions,
and ``explain`` (counterfactuals). Prints p50/p90 in CPU microseconds and each p50's ratio to both points.
Goals (issue 8): varied <= 250 us, seen <= 50 us, infeasible <= 2 ms, explain <= 10 ms.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facts_gen import cold, infeasible, varied  # noqa: E402

from ruleengine import api  # noqa: E402
from ruleengine.evaluate import fit_field, verdict_facts  # noqa: E402


def per_call(fn: Callable[[Any], Any], items: Sequence[Any], repeat: int = 1) -> list[float]:
    """Return the CPU microseconds of ``fn(item)`` for every item (``repeat`` passes).

    CPU time of the whole process (every thread, so zen-engine's runtime threads count), not wall
    time: on a shared machine it measures the work, not the wait.
    """
    out = []
    for _ in range(repeat):
        for item in items:
            t = time.process_time()
            fn(item)
            out.append((time.process_time() - t) * 1e6)
    return out


def p(samples: list[float], q: float) -> float:
    """Return the q-quantile of ``samples``."""
    return statistics.quantiles(samples, n=100)[int(q * 100) - 1] if len(samples) > 1 else samples[0]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    engine = api.open_policy(None)
    policy, ev = engine.policy, engine.evaluator
    facts = varied(policy, n)
    warm_up = varied(policy, 300, seed=99)
    for f in warm_up:
        engine.decide(f)

    # the derived inputs of both comparison points, computed once
    decisions = [engine.decide(f) for f in facts]
    select_msgs, advise_msgs, derived = [], [], []
    for d in decisions:
        flat = d.derivation.flat
        msg = ev._message(ev.select_fields, flat)
        for rule in ev.select:
            msg[fit_field(rule.order)] = d.derivation.candidates[rule.id].fits
        select_msgs.append(msg)
        advise_msgs.append(ev._message(ev.advise_fields, {**flat, **verdict_facts(d.candidate)}))
        derived.append(d.derivation)

    rows: list[tuple[str, list[float]]] = []
    floor = per_call(lambda dv: ev.choose({}, derived=dv), derived, repeat=3)
    rows.append(("plain first-hit over derived facts (floor)", floor))
    try:
        import zen
        from zen_tables import decision_graphs

        select_graph, advise_graph = decision_graphs(policy)
        z = zen.ZenEngine()
        zs, za = z.create_decision(select_graph), z.create_decision(advise_graph)
        pairs = list(zip(select_msgs, advise_msgs, strict=True))
        zen_us = per_call(lambda pair: (zs.evaluate(pair[0]), za.evaluate(pair[1])), pairs)
        rows.append(("zen-engine select + advise tables", zen_us))
    except ImportError:
        zen_us = []
        print("zen-engine is not installed (pip install zen-engine): its row is skipped")

    no_memo = api.PolicyEngine(policy, memo_size=0)
    rows.append(("decide(), varied facts, warm (memo off)", per_call(no_memo.decide, facts)))
    rows.append(("decide(), facts already seen (memo hit)", per_call(engine.decide, facts)))
    rows.append(("decide(), every model size new (nothing reused)", per_call(no_memo.decide, cold(policy, n // 4))))
    hard = infeasible(policy, max(50, n // 20))
    assert not any(no_memo.decide(f).feasible for f in hard[:5])
    rows.append(("decide(), infeasible + suggestions", per_call(no_memo.decide, hard)))
    rows.append(("decide(explain=True), counterfactuals",
                 per_call(lambda f: no_memo.decide(f, explain=True), facts[: max(30, n // 40)])))

    floor_p50 = p(floor, 0.5)
    zen_p50 = p(zen_us, 0.5) if zen_us else float("nan")
    print(f"{len(facts)} varied fact sets, policy {policy.name} {policy.version} ({len(policy.select_rules)} select, "
          f"{len(policy.advise_rules)} advise rules); derivation cache {ev.cache.hits} hits / {ev.cache.misses} misses")
    print(f"{'path (CPU time per call)':<52}{'p50 us':>10}{'p90 us':>10}{'x zen':>9}{'x floor':>9}")
    for name, samples in rows:
        p50 = p(samples, 0.5)
        print(f"{name:<52}{p50:>10.1f}{p(samples, 0.9):>10.1f}{p50 / zen_p50:>9.2f}{p50 / floor_p50:>9.1f}")


if __name__ == "__main__":
    main()
