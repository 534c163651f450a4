"""durable-rules host speed: RuleProgram calls, batch forms, the old durable.engine.Host path, 1,000-rule programs.

Baseline: a plain-Python first hit (conditions.evaluate over the same rules, in order, with the
fit guard) on the same facts, in the same process. Prints microseconds per call (median of 5
timed batches) and each row's ratio to the baseline of its rules.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ruleengine.conditions import All, AnyOf, Cmp, evaluate, to_durable  # noqa: E402
from ruleengine.durable_host import DurableRule, RuleProgram  # noqa: E402
from ruleengine.evaluate import evaluator_for, fit_field, verdict_facts  # noqa: E402
from ruleengine.facts import normalize_facts  # noqa: E402
from ruleengine.policy import load_policy  # noqa: E402

FACTS = {"model": {"params": "13B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 1},
         "data": {"examples": "50k"}, "task": {"use_case": "domain_qa"}}


def timed(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    """Return the median microseconds per call of ``fn`` over 5 batches of ``n`` calls."""
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(samples)


class OldHost:
    """The engine's previous path: durable.engine.Host, a recording action, a req counter and a lock."""

    def __init__(self, definitions: dict[str, dict]) -> None:
        from durable.engine import Host

        outer = self

        class Recording(Host):
            def get_action(self, action_name):  # type: ignore[no-untyped-def]
                def action(c):  # type: ignore[no-untyped-def]
                    outer.fired.setdefault(c.m.req, []).append(action_name)
                return action

        self.host = Recording()
        self.host.set_rulesets(definitions)
        self.fired: dict[int, list[str]] = {}
        self.counter = itertools.count()
        self.lock = threading.Lock()

    def run(self, ruleset: str, message: dict, as_fact: bool) -> list[str]:
        from durable.engine import MessageNotHandledException

        with self.lock:
            req = next(self.counter)
            msg = {**message, "req": req, "sid": "0"}
            try:
                if as_fact:
                    self.host.assert_fact(ruleset, msg)
                    with contextlib.suppress(MessageNotHandledException):
                        self.host.retract_fact(ruleset, msg)
                else:
                    self.host.post(ruleset, msg)
            except MessageNotHandledException:
                pass
            return self.fired.pop(req, [])


def old_definitions(select: list[DurableRule], advise: list[DurableRule], name: str) -> dict[str, dict]:
    return {f"{name}_select": {r.id: {"all": [{"m": r.condition}], "pri": r.order, "run": r.id} for r in select},
            f"{name}_advise": {r.id: {"all": [{"m": r.condition}], "pri": r.order, "run": r.id} for r in advise}}


def big_conditions(n: int, seed: int = 1000) -> tuple[list, dict, dict]:
    """Return ``n`` random conditions (about half of them true for the facts) and the facts."""
    rng = random.Random(seed)
    nums = [f"n.f{i}" for i in range(12)]
    enums = [f"e.k{i}" for i in range(6)]

    def leaf():  # type: ignore[no-untyped-def]
        if rng.random() < 0.6:
            return Cmp(rng.choice(nums), rng.choice([">=", "<", "!="]), rng.choice([-5, 0, 2.5, 1e6]))
        op = rng.choice(["==", "!=", "in", "not_in"])
        return Cmp(rng.choice(enums), op, rng.choice(["p", "q"]) if op in ("==", "!=") else rng.choice([("p", "q"), ("r",)]))

    def cond(depth: int = 0):  # type: ignore[no-untyped-def]
        if depth == 2 or rng.random() < 0.4:
            return leaf()
        items = tuple(cond(depth + 1) for _ in range(rng.randint(2, 3)))
        return All(items) if rng.random() < 0.6 else AnyOf(items)

    conds = [cond() for _ in range(n)]
    facts = {**{f: 1.0 for f in nums}, **{e: "p" for e in enums}}
    fits = {i: i > n // 2 for i in range(1, n + 1)}  # the first half does not fit: first_hit walks chunks
    return conds, facts, fits


def flat_message(facts: dict, fits: dict[int, bool]) -> dict:
    msg = {k.replace(".", "__"): v for k, v in facts.items()}
    msg["always__"] = 1
    for order, ok in fits.items():
        msg[fit_field(order)] = ok
    return msg


def main() -> None:
    rows: list[tuple[str, float, float]] = []

    # --- the default policy: the engine's own messages -----------------------------------------
    policy = load_policy(None)
    evaluator = evaluator_for(policy)
    facts = normalize_facts(FACTS, policy)
    derived = evaluator.derive(facts)
    chosen, _ = evaluator.choose(facts, derived=derived)
    sel_msg = evaluator._message(evaluator.select_fields, derived.flat)
    fits = {}
    for rule in policy.select_rules:
        fits[rule.id] = derived.candidates[rule.id].fits
        sel_msg[fit_field(rule.order)] = fits[rule.id]
    flat = {**derived.flat, **verdict_facts(derived.candidates[chosen] if chosen else None)}
    adv_msg = evaluator._message(evaluator.advise_fields, flat)

    def plain_first() -> str | None:
        return next((r.id for r in policy.select_rules if fits[r.id] and evaluate(r.when, derived.flat)), None)

    def plain_all() -> list[str]:
        return [r.id for r in policy.advise_rules if evaluate(r.when, flat)]

    t = time.perf_counter()
    program = evaluator.program
    register_default_ms = (time.perf_counter() - t) * 1e3
    assert program.first_hit(sel_msg) == chosen == plain_first()
    assert program.all_hits(adv_msg) == plain_all()
    select = [DurableRule(r.id, r.order, {"$and": [{fit_field(r.order): True}, to_durable(r.when)]})
              for r in policy.select_rules]
    advise = [DurableRule(r.id, r.order, to_durable(r.when)) for r in policy.advise_rules]
    old = OldHost(old_definitions(select, advise, "bench_old"))
    assert old.run("bench_old_select", sel_msg, as_fact=False) == [chosen]
    assert sorted(old.run("bench_old_advise", adv_msg, as_fact=True)) == sorted(plain_all())

    base = timed(plain_first, 3000)
    batch = 1000
    many_sel, many_adv = [sel_msg] * batch, [adv_msg] * batch
    rows += [
        ("default policy: plain-Python first hit (baseline)", base, base),
        ("default policy: plain-Python all hits (advise)", timed(plain_all, 3000), base),
        ("default policy: first_hit (select, 18 rules)", timed(lambda: program.first_hit(sel_msg), 3000), base),
        ("default policy: all_hits (advise, 12 rules)", timed(lambda: program.all_hits(adv_msg), 3000), base),
        ("default policy: first_hit + all_hits (the rules layer of a decision)",
         timed(lambda: (program.first_hit(sel_msg), program.all_hits(adv_msg)), 3000), base),
        ("default policy: first_hits per message (batch of 1000)", timed(lambda: program.first_hits(many_sel), 3) / batch,
         base),
        ("default policy: all_hits_many per message (batch of 1000)",
         timed(lambda: program.all_hits_many(many_adv), 3) / batch, base),
        ("default policy: OLD Host post (select)", timed(lambda: old.run("bench_old_select", sel_msg, False), 2000), base),
        ("default policy: OLD Host assert+retract (advise)",
         timed(lambda: old.run("bench_old_advise", adv_msg, True), 2000), base),
    ]

    # --- 1,000-rule programs ---------------------------------------------------------------------
    conds, big_facts, big_fits = big_conditions(1000)
    big_select = [DurableRule(f"s{i}", i, {"$and": [{fit_field(i): True}, to_durable(c)]})
                  for i, c in enumerate(conds, 1)]
    big_advise = [DurableRule(f"a{i}", i, to_durable(c)) for i, c in enumerate(conds, 1)]
    t = time.perf_counter()
    big = RuleProgram("bench_big", big_select, big_advise)
    register_big_s = time.perf_counter() - t
    msg = flat_message(big_facts, big_fits)

    def big_plain_first() -> str | None:
        return next((f"s{i}" for i, c in enumerate(conds, 1) if big_fits[i] and evaluate(c, big_facts)), None)

    holding = sum(evaluate(c, big_facts) for c in conds)
    assert big.first_hit(msg) == big_plain_first()
    assert big.all_hits(msg) == [f"a{i}" for i, c in enumerate(conds, 1) if evaluate(c, big_facts)]
    big_base = timed(big_plain_first, 300)
    rows += [
        ("1,000 rules: plain-Python first hit (baseline)", big_base, big_base),
        ("1,000 rules: first_hit", timed(lambda: big.first_hit(msg), 300), big_base),
        ("1,000 rules: all_hits", timed(lambda: big.all_hits(msg), 100), big_base),
        ("1,000 rules: first_hits per message (batch of 200)", timed(lambda: big.first_hits([msg] * 200), 1) / 200,
         big_base),
        ("1,000 rules: all_hits_many per message (batch of 200)",
         timed(lambda: big.all_hits_many([msg] * 200), 1) / 200, big_base),
    ]

    # --- memory: states must not grow with calls --------------------------------------------------
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(50_000):
        program.first_hit(sel_msg)
        program.all_hits(adv_msg)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    print(f"{'part':<78}{'us/call':>10}{'x baseline':>12}")
    for name, us, ref in rows:
        print(f"{name:<78}{us:>10.1f}{us / ref:>12.2f}")
    print()
    print(f"registration, default policy: {register_default_ms:.1f} ms ({program.chunk_sizes})")
    print(f"registration, 1,000 select + 1,000 advise rules: {register_big_s:.3f} s "
          f"({len(big.select)} select rulesets, {len(big.advise)} advise rulesets; "
          f"{holding} of 1,000 conditions true for the message, first 500 rules do not fit)")
    print(f"peak RSS growth over 50,000 more first_hit + all_hits calls: {(rss1 - rss0) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
