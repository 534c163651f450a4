"""What a policy must mean, checked on the policy (not the engine): point it at any policy with
``pytest tests/ruleengine/test_policy_properties.py --policy path/to/policy`` (repeatable) or
FINETUNE_POLICY_PROPERTIES=path[:path...]; by default every bundled policy. `decide check --properties`
runs the same checks (ruleengine/authoring/properties.py).

A failure prints the shrunk counterexample: the given facts and what the policy decided.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ruleengine.authoring.properties import PropertyChecker, facts_strategy, rows_reachable
from ruleengine.policy import load_policy

SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def checker(policy_path):
    return PropertyChecker(load_policy(policy_path))


def _assert_none(violation):
    assert violation is None, f"{violation.property}: {violation.message}\n  facts: {violation.facts}"


@SETTINGS
@given(data=st.data(), extra_gb=st.floats(1, 160, allow_nan=False))
def test_more_gpu_memory_never_turns_a_feasible_decision_infeasible(checker, data, extra_gb):
    _assert_none(checker.more_memory(data.draw(facts_strategy(checker.policy)), extra_gb))


@SETTINGS
@given(data=st.data())
def test_a_verdict_always_fits(checker, data):
    _assert_none(checker.verdict_fits(data.draw(facts_strategy(checker.policy))))


@SETTINGS
@given(data=st.data(), factor=st.floats(1.01, 100, allow_nan=False))
def test_more_examples_never_lower_the_chosen_capacity_unless_a_rule_says_so(checker, data, factor):
    _assert_none(checker.more_data(data.draw(facts_strategy(checker.policy)), factor))


def test_every_use_case_row_is_reachable(checker):
    violations = rows_reachable(checker.policy)
    assert not violations, "; ".join(v.message for v in violations)
