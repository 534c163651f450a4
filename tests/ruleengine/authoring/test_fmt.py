"""`decide fmt`: canonical key order, nothing else changed, comments kept with their pairs, --check, --diff."""

from __future__ import annotations

import random

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ruleengine.authoring.fmt import _canonical_errors, format_policy, format_text, policy_files
from ruleengine.cli import main
from ruleengine.diagnostics import DiagnosticError
from ruleengine.policy import load_policy

from .conftest import REPO

SCRAMBLED = """\
# a policy written in any order
rules:
  - priority: 10      # first hit
    # why the rule exists
    rationale: big data
    id: big-data
    then: {method: full_ft}
    when: [{value: {threshold: large}, op: ">=", fact: data.examples}]
  - then:
      rank: 16        # the row's rank
      method: lora
    id: rest
    when: []
    priority: 90
    rationale: the rest
thresholds:
  large: {unit: examples, value: 1M}   # 1M+ examples
version: 1.0.0
name: scrambled
language: finetune-policy/v1
gpus:
  a100-80gb: {price_per_hour: 2.45, tflops: 312, bf16: true, memory_gb: 80}
use_cases:
  chat: {shift: style_format, method: lora, label: Chat, rank: 16}
defaults:
  facts: {task: {use_case: chat}, hardware: {gpu: a100-80gb}}
"""


def test_keys_are_put_in_canonical_order_and_nothing_else_changes():
    out = format_text(SCRAMBLED)
    assert yaml.safe_load(out) == yaml.safe_load(SCRAMBLED)
    assert not _canonical_errors(yaml.safe_load(out), ())
    assert list(yaml.safe_load(out)) == ["language", "name", "version", "gpus", "thresholds", "defaults", "use_cases",
                                         "rules"]
    # every character of the input is still there (only the order of pairs changed)
    assert _chars(out) == _chars(SCRAMBLED)
    assert "  - id: big-data\n    priority: 10      # first hit\n    when:" in out
    assert "    # why the rule exists\n    rationale: big data" in out
    assert "when: [{fact: data.examples, op: \">=\", value: {threshold: large}}]" in out
    assert "{memory_gb: 80, bf16: true, tflops: 312, price_per_hour: 2.45}" in out
    assert "      method: lora\n      rank: 16        # the row's rank" in out
    assert out.startswith("# a policy written in any order\nlanguage: finetune-policy/v1\n")
    assert format_text(out) == out  # idempotent


def _chars(text: str) -> list[str]:
    return sorted(c for c in text if not c.isspace())


def test_the_formatted_policy_compiles_to_the_same_meaning(tmp_path):
    (tmp_path / "a.yaml").write_text(SCRAMBLED, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(format_text(SCRAMBLED), encoding="utf-8")
    assert load_policy(str(tmp_path / "a.yaml")).semantic_sha256 == load_policy(str(tmp_path / "b.yaml")).semantic_sha256


def test_the_bundled_policy_is_canonical():
    results = format_policy(str(REPO / "policies" / "default"))
    assert len(results) == len(policy_files(str(REPO / "policies" / "default"))) > 1
    assert [r.path for r in results if r.changed or r.error] == []


def _shuffled(data, rng):
    if isinstance(data, dict):
        items = list(data.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(data, list):
        return [_shuffled(v, rng) for v in data]
    return data


@settings(max_examples=15, deadline=None, database=None)
@given(seed=st.integers(0, 2**32 - 1), flow=st.booleans())
def test_any_key_order_of_the_default_policy_formats_to_the_canonical_one(seed, flow):
    data = load_policy(None).dump_data()
    text = yaml.safe_dump(_shuffled(data, random.Random(seed)), sort_keys=False, default_flow_style=None if flow else False,
                          width=4096)
    out = format_text(text)
    assert yaml.safe_load(out) == data and not _canonical_errors(yaml.safe_load(out), ())


def test_invalid_yaml_is_a_located_error_and_nothing_is_written(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("language: finetune-policy/v1\nrules: [\n", encoding="utf-8")
    with pytest.raises(DiagnosticError):
        format_text(bad.read_text())
    result = CliRunner().invoke(main, ["fmt", str(bad)], catch_exceptions=False)
    assert result.exit_code == 3 and "p.yaml:" in result.stderr
    assert bad.read_text() == "language: finetune-policy/v1\nrules: [\n"


def test_check_and_diff_write_nothing_and_fmt_writes(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(SCRAMBLED, encoding="utf-8")
    run = CliRunner().invoke
    checked = run(main, ["fmt", "--check", str(path)], catch_exceptions=False)
    assert checked.exit_code == 5 and "not in canonical order" in checked.stdout
    diffed = run(main, ["fmt", "--diff", str(path)], catch_exceptions=False)
    assert diffed.exit_code == 0 and diffed.stdout.startswith("--- a/") and "+language: finetune-policy/v1" in diffed.stdout
    assert path.read_text() == SCRAMBLED
    assert run(main, ["fmt", str(path)], catch_exceptions=False).exit_code == 0
    assert path.read_text() == format_text(SCRAMBLED)
    assert run(main, ["fmt", "--check", str(path)], catch_exceptions=False).exit_code == 0
