"""The box algebra of ruleengine.authoring.intervals: exact against the condition evaluator."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ruleengine.authoring.intervals import (
    CUSTOM_GPU,
    INF,
    Interval,
    Space,
    box_get,
    integer_closure,
    referenced_dims,
    universe,
)
from ruleengine.conditions import All, AnyOf, Cmp, Not, evaluate
from ruleengine.policy import load_policy, load_policy_files
from ruleengine.vocabulary import SHIFTS

from .conftest import MINI


def mini_policy(rules: str = ""):
    body = rules or """
  - id: table
    priority: 90
    when: []
    then: {use_case: true}
    rationale: the table
"""
    return load_policy_files({"policy.yaml": MINI + body}, "policy.yaml", "<mini>")


def test_interval_intersection_subtraction_and_open_ends():
    a = Interval(0, 10)
    b = Interval(5, INF, True, False)
    assert a.intersect(b) == Interval(5, 10, True, False)
    assert a.subtract(b) == [Interval(0, 5)]
    assert b.subtract(a) == [Interval(10, INF, True, False)]
    assert Interval(3, 3, True, False).empty and not Interval(3, 3).empty
    assert Interval(0, 10, False, True).contains(0) and not Interval(0, 10, False, True).contains(10)
    assert a.subtract(Interval(20, 30)) == [a]
    middle = a.subtract(Interval(2, 4))
    assert middle == [Interval(0, 2, False, True), Interval(4, 10, True, False)]


def test_integer_closure_closes_open_ends_on_integers():
    assert integer_closure(Interval(0, 1000, False, True)) == Interval(0, 999)
    assert integer_closure(Interval(1.5, 7.2)) == Interval(2, 7)
    assert integer_closure(Interval(2, INF, True, False)) == Interval(3, INF)


def test_describe_is_readable():
    assert Interval(1000, INF).describe() == ">= 1k"
    assert Interval(-INF, 11e9, False, True).describe() == "< 11B"
    assert Interval(0, 99999).describe() == "[0, 99999]"
    assert Interval(2, 2).describe() == "== 2"


def test_dnf_of_a_condition_and_rewritten_facts():
    policy = mini_policy()
    space = Space(policy)
    cond = All((Cmp("model.params_b", ">=", 11.0), Cmp("use_case.method", "==", "lora"),
                Cmp("hardware.bf16", "==", False)))
    (box,) = space.dnf(cond)
    assert box_get(box, "model.params") == Interval(11e9, INF)
    assert box_get(box, "task.use_case") == frozenset({"chat"})
    assert box_get(box, "hardware.gpu") == frozenset({"t4-16gb"})
    # a custom GPU (memory only) has bf16 in the analysis, like in derive
    (box2,) = space.dnf(Cmp("hardware.bf16", "==", True))
    assert CUSTOM_GPU in box_get(box2, "hardware.gpu")


def test_negation_not_equal_and_not_in_split_or_complement():
    space = Space(mini_policy())
    boxes = space.dnf(Cmp("data.examples", "!=", 1000))
    assert [box_get(b, "data.examples") for b in boxes] == [Interval(0, 999), Interval(1001, INF)]
    (box,) = space.dnf(Not(Cmp("task.shift", "in", ("style_format", "new_knowledge"))))
    assert box_get(box, "task.shift") == frozenset(SHIFTS) - {"style_format", "new_knowledge"}
    assert space.dnf(AnyOf(())) == [] and space.dnf(All(())) == [()]


def test_contradiction_is_empty_and_tautology_covers_the_universe():
    space = Space(mini_policy())
    contradiction = All((Cmp("data.examples", "<", 1000.0), Cmp("data.examples", ">=", 1e6)))
    assert space.dnf(contradiction) == []
    tautology = AnyOf((Cmp("data.examples", "<", 1000.0), Cmp("data.examples", ">=", 1000.0)))
    whole = [universe(space, ["data.examples"])]
    assert space.covers(space.dnf(tautology), whole)
    gap = AnyOf((Cmp("data.examples", "<", 1000.0), Cmp("data.examples", ">", 1000.0)))
    rest = space.remainder(whole, space.dnf(gap))
    assert [box_get(b, "data.examples") for b in rest] == [Interval(1000, 1000)]


def test_fact_to_fact_comparisons_are_opaque_and_approximated_both_ways():
    space = Space(mini_policy())
    cond = All((Cmp("data.examples", ">=", 10.0), Cmp("hardware.gpu_memory_gb", "<", 0, other_fact="mem.lora_gb")))
    assert space.has_opaque(cond)
    assert space.dnf(cond, opaque=False) == []
    (box,) = space.dnf(cond, opaque=True, rule_id="r")
    assert dict(box) == {"data.examples": Interval(10, INF)} and space.opaque_rules == {"r"}


def test_default_policy_dimensions():
    policy = load_policy(None)
    space = Space(policy)
    dims = referenced_dims(space, policy.select_rules)
    assert {"data.examples", "task.shift", "task.quality", "task.use_case", "serving.adapters",
            "model.params"} <= set(dims)
    assert "use_case.method" not in dims  # rewritten into task.use_case


# --- exactness against the evaluator -----------------------------------------------------------

GPUS = ("a100-80gb", "t4-16gb", CUSTOM_GPU)
USE_CASES = ("chat", "pretraining")
POLICY = mini_policy()
ROWS = {"chat": ("lora", 16), "pretraining": ("full_ft", 0)}
GPU_BF16 = {"a100-80gb": True, "t4-16gb": False, CUSTOM_GPU: True}

atoms = st.one_of(
    st.builds(Cmp, st.just("data.examples"), st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
              st.sampled_from([0.0, 999.0, 1000.0, 1000.5, 1e6])),
    st.builds(Cmp, st.just("data.examples"), st.sampled_from(["in", "not_in"]),
              st.lists(st.sampled_from([0, 1000, 1e6]), max_size=2).map(tuple)),
    st.builds(Cmp, st.just("hardware.gpu_count"), st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
              st.sampled_from([1, 2, 4, 1.5])),
    st.builds(Cmp, st.just("model.params_b"), st.sampled_from(["<", "<=", ">", ">="]), st.sampled_from([7.0, 11.0])),
    st.builds(Cmp, st.just("task.shift"), st.sampled_from(["==", "!="]), st.sampled_from(SHIFTS)),
    st.builds(Cmp, st.just("task.shift"), st.sampled_from(["in", "not_in"]),
              st.lists(st.sampled_from(SHIFTS), max_size=3).map(tuple)),
    st.builds(Cmp, st.just("use_case.method"), st.sampled_from(["in", "not_in"]),
              st.lists(st.sampled_from(["lora", "full_ft", "dora"]), max_size=2).map(tuple)),
    st.builds(Cmp, st.just("use_case.rank"), st.sampled_from(["<", ">=", "=="]), st.sampled_from([0, 16, 32])),
    st.builds(Cmp, st.just("hardware.bf16"), st.sampled_from(["==", "!="]), st.booleans()),
    st.builds(Cmp, st.just("serving.latency_sensitive"), st.just("=="), st.booleans()),
)
conditions = st.recursive(atoms, lambda inner: st.one_of(
    st.lists(inner, max_size=3).map(lambda xs: All(tuple(xs))),
    st.lists(inner, max_size=3).map(lambda xs: AnyOf(tuple(xs))),
    inner.map(Not)), max_leaves=8)
points = st.fixed_dictionaries({
    "data.examples": st.sampled_from([0, 1, 999, 1000, 1001, 999999, 1000000, 2000000]),
    "hardware.gpu_count": st.sampled_from([1, 2, 3, 4, 8]),
    "model.params": st.sampled_from([5e8, 7e9, 1.1e10, 1.3e10]),
    "task.shift": st.sampled_from(SHIFTS),
    "task.use_case": st.sampled_from(USE_CASES),
    "hardware.gpu": st.sampled_from(GPUS),
    "serving.latency_sensitive": st.booleans(),
})


def flat_of(point: dict) -> dict:
    method, rank = ROWS[point["task.use_case"]]
    return {**point, "model.params_b": point["model.params"] / 1e9, "use_case.method": method, "use_case.rank": rank,
            "hardware.bf16": GPU_BF16[point["hardware.gpu"]]}


def in_box(space: Space, box, point: dict) -> bool:
    for name, c in box:
        value = point[name]
        if space.dims[name].kind == "num":
            if not c.contains(value):
                return False
        elif value not in c:
            return False
    return True


@settings(max_examples=400, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(cond=conditions, point=points)
def test_boxes_hold_exactly_where_the_condition_holds(cond, point):
    """A point lies in the union of a condition's boxes if and only if the evaluator says it holds."""
    space = Space(POLICY)
    boxes = space.dnf(cond)
    assert any(in_box(space, b, point) for b in boxes) == evaluate(cond, flat_of(point))


@settings(max_examples=200, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(a=conditions, b=conditions, point=points)
def test_remainder_is_exactly_the_set_difference(a, b, point):
    """``remainder(A, B)`` contains a point exactly when A holds and B does not."""
    space = Space(POLICY)
    rest = space.remainder(space.dnf(a), space.dnf(b))
    flat = flat_of(point)
    assert any(in_box(space, x, point) for x in rest) == (evaluate(a, flat) and not evaluate(b, flat))


def test_sample_points_lie_inside_their_boxes():
    space = Space(POLICY)
    for cond in (Cmp("data.examples", "<", 1000.0), Cmp("model.params_b", ">=", 11.0),
                 All((Cmp("data.examples", ">", 10.0), Cmp("data.examples", "<", 20.0)))):
        for box in space.dnf(cond):
            point = space.point(box)
            assert all(space.dims[n].kind != "num" or c.contains(point[n]) for n, c in box)
            assert not any(isinstance(v, float) and math.isnan(v) for v in point.values())
