"""durable_host: agreement with the plain evaluator at any size, durable-rules' limits, threads, numbers.

Programs are registered once per process and never freed, so every test uses its own key.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ruleengine import durable_host as dh
from ruleengine.conditions import All, AnyOf, Cmp, Condition, Not, evaluate, to_durable
from ruleengine.durable_host import (
    ENGINE_LIMITS,
    DurableHostError,
    DurableRule,
    EngineLimitError,
    MessageValueError,
    RuleProgram,
    check_rules,
    encode_value,
    program_for,
)
from ruleengine.vocabulary import field_name

_keys = itertools.count()


def _key(name: str) -> str:
    return f"test_{name}_{next(_keys)}"


# --- random policies over a small vocabulary ---------------------------------------------------

NUM = [f"n.f{i}" for i in range(10)]
ENUM = [f"e.k{i}" for i in range(5)]
BOOL = [f"b.f{i}" for i in range(3)]
WORDS = ["p", "q", "r", "s"]
NUMBERS = [-2, 0, 1, 2.5, 5, 10, 1e6, 3e30]


def _cmp(rng: random.Random, hot: bool) -> Cmp:
    """A random comparison; ``hot`` ones hold for most facts (so that hundreds of rules hold at once)."""
    r = rng.random()
    if r < 0.5:
        if hot:
            return Cmp(rng.choice(NUM), rng.choice([">=", ">", "!="]), rng.choice([-5, -3.5]))
        return Cmp(rng.choice(NUM), rng.choice(["==", "!=", "<", "<=", ">", ">="]), rng.choice(NUMBERS))
    if r < 0.8:
        op = rng.choice(["==", "!=", "in", "not_in"])
        if op in ("in", "not_in"):
            return Cmp(rng.choice(ENUM), op, tuple(rng.sample(WORDS, rng.randint(1 if hot else 0, 3))))
        return Cmp(rng.choice(ENUM), op, rng.choice(WORDS))
    if r < 0.9:
        return Cmp(rng.choice(BOOL), rng.choice(["==", "!="]), rng.random() < 0.5)
    a, b = rng.sample(NUM, 2)
    return Cmp(a, rng.choice(["<", ">=", "==", "!="]), None, other_fact=b)


def _condition(rng: random.Random, hot: bool = False, depth: int = 0) -> Condition:
    r = rng.random()
    if depth >= 2 or r < 0.4:
        return _cmp(rng, hot)
    items = tuple(_condition(rng, hot, depth + 1) for _ in range(rng.randint(1, 3)))
    if r < 0.7:
        return All(items)
    return AnyOf(items) if r < 0.9 else Not(items[0])


def _facts(rng: random.Random) -> dict:
    facts: dict = {n: rng.choice(NUMBERS) for n in NUM}
    facts.update({n: rng.choice(WORDS) for n in ENUM})
    facts.update({n: rng.random() < 0.5 for n in BOOL})
    return facts


def _message(facts: dict, fits: dict[int, bool] | None = None) -> dict:
    """The message the engine builds: flat field names, ``always__`` and one ``fit__<order>`` per select rule."""
    msg = {field_name(k): v for k, v in facts.items()}
    msg["always__"] = 1
    for order, ok in (fits or {}).items():
        msg[f"fit__{order}"] = ok
    return msg


def _select(conds: list[Condition]) -> list[DurableRule]:
    return [DurableRule(f"s{i}", i, {"$and": [{f"fit__{i}": True}, to_durable(c)]}) for i, c in enumerate(conds, 1)]


def _advise(conds: list[Condition]) -> list[DurableRule]:
    return [DurableRule(f"a{i}", i, to_durable(c)) for i, c in enumerate(conds, 1)]


def _plain_first(conds: list[Condition], facts: dict, fits: dict[int, bool]) -> str | None:
    return next((f"s{i}" for i, c in enumerate(conds, 1) if fits[i] and evaluate(c, facts)), None)


def _plain_all(conds: list[Condition], facts: dict) -> list[str]:
    return [f"a{i}" for i, c in enumerate(conds, 1) if evaluate(c, facts)]


def _check_agreement(program: RuleProgram, conds: list[Condition], rng: random.Random, n: int) -> int:
    """Check single and batch forms on ``n`` random messages; return the most rules holding at once."""
    cases = []
    most = 0
    for _ in range(n):
        facts = _facts(rng)
        fits = {i: rng.random() < 0.9 for i in range(1, len(conds) + 1)}
        cases.append((facts, fits))
        want_first, want_all = _plain_first(conds, facts, fits), _plain_all(conds, facts)
        most = max(most, len(want_all))
        assert program.first_hit(_message(facts, fits)) == want_first
        assert program.all_hits(_message(facts)) == want_all
    assert program.first_hits([_message(f, ok) for f, ok in cases]) == [_plain_first(conds, f, ok) for f, ok in cases]
    assert program.all_hits_many([_message(f) for f, _ in cases]) == [_plain_all(conds, f) for f, _ in cases]
    return most


# --- agreement ---------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.integers(1, 90))
def test_random_programs_agree_with_the_plain_evaluator(seed, size):
    rng = random.Random(seed)
    conds = [_condition(rng, hot=rng.random() < 0.3) for _ in range(size)]
    program = RuleProgram(_key("random"), _select(conds), _advise(conds))
    _check_agreement(program, conds, rng, 6)


def test_thousand_rule_programs_with_hundreds_of_rules_true_at_once():
    """1,000 select and 1,000 advise rules, hundreds holding for one message: right answers, no error 303."""
    rng = random.Random(1000)
    conds = [_condition(rng, hot=rng.random() < 0.6) for _ in range(1000)]
    program = RuleProgram(_key("thousand"), _select(conds), _advise(conds))
    assert len(program.select) > 1 and len(program.advise) > 1
    assert _check_agreement(program, conds, rng, 30) >= 300


def test_every_comparison_true_at_once_stays_within_the_stack():
    """The worst case the chunking is sized for: every comparison of every rule holds (nested any/all)."""
    rng = random.Random(5)
    true_leaves = [Cmp("n.f0", ">=", -5), Cmp("n.f1", "!=", 7), Cmp("e.k0", "in", ("p", "q")), Cmp("b.f0", "==", True),
                   Cmp("n.f2", "<", 1e6), Cmp("e.k1", "not_in", ("r",))]

    def cond(depth: int = 0) -> Condition:
        if depth == 3 or rng.random() < 0.3:
            return rng.choice(true_leaves)
        items = tuple(cond(depth + 1) for _ in range(rng.randint(2, 3)))
        return All(items) if rng.random() < 0.5 else AnyOf(items)

    conds = [cond() for _ in range(400)]
    program = RuleProgram(_key("alltrue"), _select(conds), _advise(conds))
    facts = {"n.f0": 1, "n.f1": 1, "n.f2": 1, "e.k0": "p", "e.k1": "p", "b.f0": True}
    assert all(evaluate(c, facts) for c in conds)
    assert program.all_hits(_message(facts)) == [f"a{i}" for i in range(1, 401)]
    assert program.first_hit(_message(facts, dict.fromkeys(range(1, 401), True))) == "s1"
    fits = {i: i > 350 for i in range(1, 401)}
    assert program.first_hit(_message(facts, fits)) == "s351"


def test_any_with_several_true_items_is_one_hit():
    """An `any` whose items all hold makes durable-rules fire the rule once per item: reported once."""
    cond = AnyOf((Cmp("n.f0", ">", 0), Cmp("n.f1", ">", 0), Cmp("n.f2", ">", 0)))
    program = RuleProgram(_key("anydup"), [], _advise([cond, Cmp("n.f0", ">", 0)]))
    msg = _message({"n.f0": 1, "n.f1": 1, "n.f2": 1})
    assert program.all_hits(msg) == ["a1", "a2"]
    assert program.all_hits_many([msg, msg]) == [["a1", "a2"], ["a1", "a2"]]


def test_identical_conditions_beyond_the_beta_list():
    """More than 255 rules with one condition would overflow durable-rules' beta list (a crash): split."""
    rules = [DurableRule(f"a{i}", i, {"$gte": {"x": 1}}) for i in range(1, 301)]
    program = RuleProgram(_key("identical"), [], rules)
    assert len(program.advise) == 2
    assert program.all_hits({"x": 2}) == [f"a{i}" for i in range(1, 301)]
    assert program.all_hits({"x": 0}) == []


def test_long_in_lists_of_exclusive_values():
    """An `in` list of 300 values: only one can equal a value, so it fits one ruleset."""
    values = tuple(f"v{i}" for i in range(300))
    program = RuleProgram(_key("inlist"), [], _advise([Cmp("e.k0", "in", values), Cmp("n.f0", "in", tuple(range(300)))]))
    assert program.chunk_sizes["advise"] == [1, 1]
    assert program.all_hits({"e__k0": "v299", "n__f0": 7}) == ["a1", "a2"]
    assert program.all_hits({"e__k0": "w", "n__f0": 300}) == []


# --- threads -----------------------------------------------------------------------------------

def test_a_burst_of_first_calls_registers_once_and_never_fails():
    rng = random.Random(100)
    conds = [_condition(rng) for _ in range(120)]
    key = _key("burst")
    built = []

    def rules() -> list[DurableRule]:
        built.append(1)
        return _select(conds)

    cases = [(_facts(rng), {i: rng.random() < 0.8 for i in range(1, 121)}) for _ in range(100)]
    barrier = threading.Barrier(100)
    results: list = [None] * 100
    errors: list = []

    def call(i: int) -> None:
        try:
            barrier.wait()
            facts, fits = cases[i]
            results[i] = program_for(key, rules, lambda: _advise(conds)).first_hit(_message(facts, fits))
        except BaseException as exc:  # noqa: BLE001 - every failure is counted
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(built) == 1
    assert results == [_plain_first(conds, f, ok) for f, ok in cases]


def test_concurrent_calls_see_only_their_own_results():
    rng = random.Random(7)
    conds = [_condition(rng, hot=rng.random() < 0.5) for _ in range(150)]
    program = RuleProgram(_key("isolation"), _select(conds), _advise(conds))
    cases = [(_facts(rng), {i: rng.random() < 0.8 for i in range(1, 151)}) for _ in range(8)]
    errors: list = []

    def work(i: int) -> None:
        facts, fits = cases[i]
        want = (_plain_first(conds, facts, fits), _plain_all(conds, facts))
        for n in range(30):
            if n % 5 == 4:
                got = (program.first_hits([_message(facts, fits)] * 3), program.all_hits_many([_message(facts)] * 3))
                if got != ([want[0]] * 3, [want[1]] * 3):
                    errors.append((i, n, got))
            elif (program.first_hit(_message(facts, fits)), program.all_hits(_message(facts))) != want:
                errors.append((i, n))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --- numbers and values ------------------------------------------------------------------------

def test_numbers_durable_rules_cannot_parse_plainly_are_written_so_it_can():
    assert encode_value(1e30) == "1.0e+30" and encode_value(-2e-05) == "-2.0e-05"
    assert encode_value(1.5e300) == "1.5e+300" and encode_value(13e9) == "13000000000.0"
    program = RuleProgram(_key("numbers"), [], [DurableRule("big", 1, {"$gt": {"x": 1e30}}),
                                                DurableRule("tiny", 2, {"$lt": {"x": 1e-300}}),
                                                DurableRule("exact", 3, {"x": 2**53})])
    assert program.all_hits({"x": 3e30}) == ["big"]
    assert program.all_hits({"x": 1e30}) == []
    assert program.all_hits({"x": 5e-324}) == ["tiny"]
    assert program.all_hits({"x": 2**53}) == ["exact"]
    assert program.all_hits({"x": -1e308}) == ["tiny"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 2**53 + 1, -(2**63), 10**30,
                                   "x" * 65536, None, [1], {"a": 1}])
def test_values_durable_rules_cannot_compare_raise_a_clear_error(value):
    program = program_for("test_bad_values", [DurableRule("s", 1, {"$gte": {"x": 0}})],
                          [DurableRule("a", 1, {"$gte": {"x": 0}})])
    for call in (program.first_hit, program.all_hits):
        with pytest.raises(MessageValueError, match="x") as info:
            call({"x": value})
        assert info.value.field == "x"
    with pytest.raises(MessageValueError):
        program.first_hits([{"x": 1}, {"x": value}])
    assert program.first_hit({"x": 1}) == "s" and program.all_hits({"x": 1}) == ["a"]


def test_a_missing_field_raises():
    program = RuleProgram(_key("missing"), [DurableRule("s", 1, {"$and": [{"x": 1}, {"y": 2}]})], [])
    with pytest.raises(MessageValueError, match="'y'"):
        program.first_hit({"x": 1})


def test_rule_literals_out_of_range_are_refused():
    for value in (float("nan"), 2**60, float("inf")):
        with pytest.raises(EngineLimitError) as info:
            RuleProgram(_key("badlit"), [], [DurableRule("a", 1, {"$gt": {"x": value}})])
        assert info.value.rule == "a"


# --- limits that remain ------------------------------------------------------------------------

def test_too_many_groups_in_one_rule_is_a_located_error():
    cond = All(tuple(Cmp(f"e.k{i % 5}", "in", ("p", f"v{i}")) for i in range(15)))
    ok = All(tuple(Cmp(f"e.k{i % 5}", "in", ("p", f"v{i}")) for i in range(14)))
    program = RuleProgram(_key("ops"), [], _advise([ok]))
    assert program.all_hits({f"e__k{i}": "p" for i in range(5)}) == ["a1"]
    problems = check_rules([], [*_advise([ok]), DurableRule("big", 2, to_durable(cond))])
    assert [(p.rule, p.limit) for p in problems] == [("big", "operators_per_rule")]
    with pytest.raises(EngineLimitError, match="at most 15"):
        RuleProgram(_key("ops"), [], [DurableRule("big", 1, to_durable(cond))])


def test_a_rule_with_too_many_simultaneous_comparisons_is_a_located_error():
    cond = AnyOf(tuple(Cmp("n.f0", ">", float(i)) for i in range(70)))
    problems = check_rules(_select([cond]), [])
    assert [(p.rule, p.limit) for p in problems] == [("s1", "simultaneous_comparisons_per_rule")]


def test_an_in_list_beyond_the_node_table_is_a_located_error():
    problems = check_rules([], _advise([Cmp("e.k0", "in", tuple(f"v{i}" for i in range(512)))]))
    assert [(p.rule, p.limit) for p in problems] == [("a1", "in_list_values")]


def test_check_rules_accepts_what_compiles():
    rng = random.Random(3)
    conds = [_condition(rng) for _ in range(200)]
    assert check_rules(_select(conds), _advise(conds)) == []


def test_an_engine_error_is_reported_and_leaves_no_stale_result():
    """Bypass the chunking (70 rules true at once in one ruleset): error 303, then the ruleset still answers."""
    rules = [(DurableRule(f"r{i}", i, {"$and": [{f"f{i}": True}, {"$gte": {"a": 1}}]}),
              {"$and": [{f"f{i}": True}, {"$gte": {"a": 1}}]}) for i in range(1, 71)]
    chunk = dh._Chunk(_key("raw"), rules, {"a", *(f"f{i}" for i in range(1, 71))})
    everything = {"a": 1, **{f"f{i}": True for i in range(1, 71)}}
    with pytest.raises(DurableHostError, match="303") as info:
        chunk.first(everything)
    assert info.value.code == 303
    with pytest.raises(DurableHostError, match="303"):
        chunk.every(everything, [])
    only_five = {"a": 1, **{f"f{i}": i == 5 for i in range(1, 71)}}
    assert chunk.first(only_five) == "r5"
    out: list[str] = []
    chunk.every(only_five, out)
    assert out == ["r5"]


def test_program_for_returns_the_program_first_registered():
    key = _key("cache")
    first = program_for(key, [DurableRule("s", 1, {"x": 1})], [])
    assert program_for(key, lambda: pytest.fail("not called"), lambda: pytest.fail("not called")) is first


def test_every_remaining_limit_is_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "engine-limits.md").read_text()
    for name, limit in ENGINE_LIMITS.items():
        assert f"`{name}`" in doc, name
        assert str(limit.value) in doc, name
    assert re.search(r"MAX_STACK_SIZE.*events\.c:18", doc)


def test_the_stack_bound_is_never_below_what_durable_rules_needs():
    """Soundness of the chunking: rulesets registered raw with every comparison true fail with 303
    only where the computed bound exceeds MAX_STACK_SIZE (and some do fail, so the check can fail)."""
    import durable_rules_engine

    rng = random.Random(11)
    fields = [f"f{i}" for i in range(12)]

    def leaf() -> dict:
        f = rng.choice(fields)
        return rng.choice([{"$gte": {f: rng.choice([-5, -4, -1.5, 0])}}, {f: 1}, {"$neq": {f: rng.choice([3, 7])}},
                           {"$lt": {f: rng.choice([2, 3.5, 9])}}])

    def cond(depth: int = 0) -> dict:
        if depth == 3 or rng.random() < 0.35:
            return leaf()
        return {rng.choice(["$and", "$or"]): [cond(depth + 1) for _ in range(rng.randint(2, 3))]}

    failed = passed = 0
    message = "{" + ",".join(['"id":1'] + [f'"{f}":1' for f in fields]) + "}"
    for n in range(60):
        conds = [dh.normalize(cond()) for _ in range(rng.randint(15, 60))]
        conds = [c for c in conds if dh._operators(c) <= dh.MAX_OPERATORS]
        root = dh._Alpha()
        for c in conds:
            dh._insert(c, root, "r", []).betas += 1
        bound = dh._stack_depth(root)
        handle = durable_rules_engine.create_ruleset(
            _key(f"raw{n}"), dh.encode_json({f"r{i}": {"all": [{"m": c}]} for i, c in enumerate(conds)}))
        try:
            durable_rules_engine.assert_fact(handle, message)
        except durable_rules_engine.error as exc:
            assert "303" in str(exc) and bound > dh.MAX_STACK_SIZE, (bound, exc)
            failed += 1
        else:
            passed += 1
    assert failed > 5 and passed > 5
