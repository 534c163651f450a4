"""The independent reference evaluator (reference_evaluator.py) itself, and its agreement with the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from ruleengine.api import decide
from ruleengine.authoring.testing import load_cases, test_files
from ruleengine.paths import default_policy
from ruleengine.policy import load_policy, load_policy_files

POLICY = """\
language: finetune-policy/v1
name: shapes
version: 1.0.0
gpus:
  a100-80gb: {memory_gb: 80, bf16: true, tflops: 312, price_per_hour: 4.1}
thresholds:
  big: {value: 1000000, unit: examples}
  small: 1000
use_cases:
  chat: {label: Chat, method: lora, rank: 16, shift: style_format}
  code: {label: Code, method: lora, rank: 32, shift: domain_adaptation}
rules:
  - id: never
    priority: 1
    when: {any: []}
    then: {method: full_ft}
    rationale: an empty any never holds
  - id: not-small-and-code
    priority: 5
    when:
      all:
        - {not: {fact: data.examples, op: "<", value: {threshold: small}}}
        - any:
            - {fact: task.use_case, op: in, value: [code]}
            - {fact: model.params_b, op: ">=", value: 70}
    then: {method: dora, rank: 32}
    rationale: nested all / any / not
  - id: fits-lora
    priority: 7
    when: [{fact: hardware.usable_gb, op: ">", value: {fact: mem.lora_gb}}, {fact: data.examples, op: ">=", value: {threshold: big}}]
    then: {method: lora, rank: 64}
    rationale: compares two facts
  - id: table
    priority: 9
    when: []
    then: {use_case: true}
    rationale: the table
  - id: warn-dora
    kind: advise
    priority: 1
    when: [{fact: verdict.method, op: "==", value: dora}]
    warn: [{code: dora-slow, message: slow}]
    rationale: r
  - id: note-infeasible
    kind: advise
    priority: 2
    when: [{fact: verdict.feasible, op: "==", value: false}]
    note: [{code: nothing-fits, message: nothing}]
    rationale: r
"""


def test_condition_semantics(reference_evaluator):
    ref = reference_evaluator
    t = {"small": 1000.0}
    facts = {"data.examples": 10, "task.shift": "style_format", "x": 3, "y": 4}
    assert ref.holds([], facts, t) and ref.holds({"all": []}, facts, t)
    assert not ref.holds({"any": []}, facts, t)
    assert ref.holds({"not": {"fact": "data.examples", "op": ">=", "value": {"threshold": "small"}}}, facts, t)
    assert ref.holds({"fact": "x", "op": "<", "value": {"fact": "y"}}, facts, t)
    assert ref.holds({"fact": "task.shift", "op": "not_in", "value": ["new_knowledge"]}, facts, t)


@pytest.mark.parametrize("given", [
    {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 500}, "task": {"use_case": "code"}},
    {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 5000}, "task": {"use_case": "code"}},
    {"model": {"params": "70B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 8}, "data": {"examples": 5000},
     "task": {"use_case": "chat"}},
    {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": "2M"}, "task": {"use_case": "chat"}},
    {"model": {"params": "70B"}, "hardware": {"gpu_memory_gb": 16}, "data": {"examples": 10}, "task": {"use_case": "chat"}},
])
def test_agrees_with_the_engine_on_nested_conditions(given, reference_evaluator):
    ref = reference_evaluator
    policy = load_policy_files({"policy.yaml": POLICY}, "policy.yaml", "<shapes>")
    mine = ref.evaluate_reference(policy, given)
    d = decide(policy, given)
    assert mine.chosen_rule == d.chosen_rule and mine.feasible == d.feasible
    assert sorted(mine.advice) == sorted(d.advice_rules)
    if d.feasible:
        assert (mine.method, mine.rank) == (d.verdict["method"], d.verdict["rank"])


def test_agrees_with_the_engine_on_every_default_policy_case(reference_evaluator):
    ref = reference_evaluator
    policy = load_policy(None)
    for f in test_files(default_policy()):
        for case in load_cases(f):
            d = decide(policy, case.facts, origin=str(Path(f).parent))
            mine = ref.evaluate_reference(policy, case.facts, origin=str(Path(f).parent))
            assert (mine.chosen_rule, sorted(mine.advice)) == (d.chosen_rule, sorted(d.advice_rules)), case.note
