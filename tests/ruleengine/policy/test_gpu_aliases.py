"""GPU catalog aliases in the policy language: unique, never a catalog name, not used in conditions."""

from __future__ import annotations

import pytest

from ruleengine.policy import PolicyError, load_policy_files

BASE = """language: finetune-policy/v1
name: t
version: 1.0.0
gpus:
  a-80gb: {memory_gb: 80, bf16: true, tflops: 1, price_per_hour: 1, aliases: [%s]}
  b-40gb: {memory_gb: 40, bf16: true, tflops: 1, price_per_hour: 1, aliases: [%s]}
defaults:
  facts:
    hardware: {gpu: %s}
rules:
  - id: r
    priority: 1
    when: [{fact: hardware.gpu, op: ==, value: %s}]
    then: {method: lora, rank: 16}
    rationale: x
"""


def compile_(a: str, b: str, default: str = "a-80gb", literal: str = "a-80gb"):
    return load_policy_files({"policy.yaml": BASE % (a, b, default, literal)}, "policy.yaml")


def codes(exc: PolicyError) -> set[str]:
    return {d.code for d in exc.diagnostics}


def test_aliases_compile_and_a_default_may_use_one():
    policy = compile_("a, a80", "b", default="a80")
    assert policy.gpu_names() == {"a-80gb": "a-80gb", "b-40gb": "b-40gb", "a": "a-80gb", "a80": "a-80gb",
                                  "b": "b-40gb"}


@pytest.mark.parametrize("a,b,code", [("b-40gb", "b", "gpu-alias-is-a-name"), ("x", "x", "gpu-alias-duplicate")])
def test_bad_aliases_are_located_errors(a, b, code):
    with pytest.raises(PolicyError) as exc:
        compile_(a, b)
    assert code in codes(exc.value)
    diag = next(d for d in exc.value.diagnostics if d.code == code)
    assert diag.path.startswith("gpus.") and diag.location.line


def test_conditions_compare_catalog_names_not_aliases():
    with pytest.raises(PolicyError) as exc:
        compile_("a", "b", literal="a")
    diag = next(d for d in exc.value.diagnostics if d.code == "rule-gpu-alias")
    assert "a-80gb" in diag.help
