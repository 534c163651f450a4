import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ruleengine.conditions import (
    All,
    AnyOf,
    Cmp,
    Not,
    evaluate,
    first_failure,
    negate,
    push_negations,
    to_durable,
)

FACTS = {"n.a": "number", "n.b": "number", "e.k": "enum", "b.f": "bool"}
ENUM = ["p", "q", "r"]

num_value = st.sampled_from([0, 1, 2.5, 5, 10, 1e6])
cmp_num = st.builds(lambda f, op, v: Cmp(f, op, v), st.sampled_from(["n.a", "n.b"]),
                    st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), num_value)
cmp_enum = st.one_of(
    st.builds(lambda op, v: Cmp("e.k", op, v), st.sampled_from(["==", "!="]), st.sampled_from(ENUM)),
    st.builds(lambda op, vs: Cmp("e.k", op, tuple(vs)), st.sampled_from(["in", "not_in"]),
              st.lists(st.sampled_from(ENUM), max_size=3)),
)
cmp_bool = st.builds(lambda op, v: Cmp("b.f", op, v), st.sampled_from(["==", "!="]), st.booleans())
cmp_fact = st.builds(lambda op: Cmp("n.a", op, None, other_fact="n.b"), st.sampled_from(["<", ">=", "=="]))
leaf = st.one_of(cmp_num, cmp_enum, cmp_bool, cmp_fact)
condition = st.recursive(leaf, lambda inner: st.one_of(
    st.builds(lambda xs: All(tuple(xs)), st.lists(inner, max_size=3)),
    st.builds(lambda xs: AnyOf(tuple(xs)), st.lists(inner, max_size=3)),
    st.builds(Not, inner)), max_leaves=8)
facts_st = st.fixed_dictionaries({"n.a": num_value, "n.b": num_value, "e.k": st.sampled_from(ENUM),
                                  "b.f": st.booleans()})


def test_evaluate_basic():
    facts = {"n.a": 5, "n.b": 10, "e.k": "p", "b.f": True}
    assert evaluate(All((Cmp("n.a", "<", 10), Cmp("e.k", "in", ("p", "q")))), facts)
    assert not evaluate(AnyOf(()), facts) and evaluate(All(()), facts)
    assert evaluate(Not(Cmp("b.f", "==", False)), facts)
    assert evaluate(Cmp("n.a", "<", None, other_fact="n.b"), facts)


def test_first_failure_reports_value_threshold_and_margin():
    facts = {"n.a": 50_000, "n.b": 0, "e.k": "p", "b.f": True}
    cond = All((Cmp("e.k", "==", "p"), Cmp("n.a", ">=", 1_000_000.0, threshold="large_data")))
    f = first_failure(cond, facts)
    assert f is not None and f.cmp.fact == "n.a" and f.actual == 50_000 and f.expected == 1_000_000.0
    assert f.margin == -950_000.0
    assert "large_data (1000000)" in f.to_dict()["condition"]
    assert first_failure(Cmp("n.a", ">", 1), facts) is None


def test_first_failure_under_negation():
    facts = {"n.a": 5, "n.b": 0, "e.k": "p", "b.f": True}
    f = first_failure(Not(Cmp("e.k", "==", "p")), facts)
    assert f is not None and f.negated and f.to_dict()["condition"].startswith("not ")


@given(condition, facts_st)
def test_pushing_negations_down_preserves_meaning(cond, facts):
    assert evaluate(push_negations(cond), facts) == evaluate(cond, facts)
    assert evaluate(negate(cond), facts) == (not evaluate(cond, facts))


@given(condition, facts_st)
def test_first_failure_exists_exactly_when_false(cond, facts):
    assert (first_failure(cond, facts) is None) == evaluate(cond, facts)


_counter = itertools.count()


class _Recorder:
    host = None
    fired: list = []


def _host():
    from durable.engine import Host

    if _Recorder.host is None:
        class H(Host):
            def get_action(self, name):
                def act(c):
                    _Recorder.fired.append(name)
                return act
        _Recorder.host = H()
    return _Recorder.host


@settings(max_examples=150, deadline=None)
@given(condition, facts_st)
def test_durable_rules_agrees_with_the_plain_evaluator(cond, facts):
    """Differential: the compiled durable-rules JSON matches exactly when the plain evaluator says so."""
    from durable.engine import MessageNotHandledException

    host = _host()
    n = next(_counter)
    name = f"t_cond_{n}"
    host.set_rulesets({name: {"r": {"all": [{"m": to_durable(cond)}], "run": "r"}}})
    msg = {k.replace(".", "__"): v for k, v in facts.items()}
    msg.update({"always__": 1, "sid": f"s{n}", "req": n})
    _Recorder.fired.clear()
    with contextlib.suppress(MessageNotHandledException):
        host.post(name, msg)
    assert (_Recorder.fired == ["r"]) == evaluate(cond, facts), to_durable(cond)


@pytest.mark.parametrize("cond,expected", [
    (Cmp("n.a", "in", ()), {"$lt": {"always__": 0}}),
    (Cmp("n.a", "not_in", ()), {"$gte": {"always__": 1}}),
    (All(()), {"$gte": {"always__": 1}}),
    (Not(Cmp("n.a", "<", 3)), {"$gte": {"n__a": 3}}),
    (Cmp("e.k", "in", ("p", "q")), {"$or": [{"e__k": "p"}, {"e__k": "q"}]}),
])
def test_durable_json_shapes(cond, expected):
    assert to_durable(cond) == expected


def test_compiled_forms_agree_with_the_evaluator_on_random_conditions():
    """compile_check is first_failure and compile_predicate is evaluate, on random condition trees and facts."""
    import random

    from ruleengine.conditions import compile_check, compile_predicate, first_failure

    rng = random.Random(7)
    facts_names = ["a.x", "a.y", "b.z"]

    def tree(depth: int = 0):
        if depth > 2 or rng.random() < 0.4:
            fact = rng.choice(facts_names)
            op = rng.choice(["==", "!=", "<", "<=", ">", ">=", "in", "not_in"])
            value = (1.0, 3.0) if op in ("in", "not_in") else float(rng.randint(0, 4))
            return Cmp(fact, op, value)
        items = tuple(tree(depth + 1) for _ in range(rng.randint(0, 3)))
        kind = rng.choice([All, AnyOf, Not])
        return Not(items[0] if items else Cmp("a.x", ">", 0.0)) if kind is Not else kind(items)

    for _ in range(400):
        cond = tree()
        facts = {name: float(rng.randint(0, 4)) for name in facts_names}
        assert compile_predicate(cond)(facts) == evaluate(cond, facts)
        assert compile_check(cond)(facts) == first_failure(cond, facts)
