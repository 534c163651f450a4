"""The policy compiler, stage by stage, and its diagnostics (golden files)."""

from pathlib import Path

import pytest

from ruleengine.diagnostics import render_text
from ruleengine.policy import STAGES, CompileContext, PolicyError, load_policy, load_policy_files, run_stages
from ruleengine.policy.compiler import read_policy_files

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "policies"

MINIMAL = """\
language: finetune-policy/v1
name: mini
version: 0.1.0
gpus:
  g24: {memory_gb: 24, bf16: true, tflops: 100, price_per_hour: 1}
thresholds:
  big: 1000
use_cases:
  chat: {label: Chat, method: lora, rank: 16}
rules:
  - id: big-data-full
    priority: 10
    when: [{fact: data.examples, op: ">=", value: {threshold: big}}]
    then: {method: full_ft}
    rationale: lots of data
  - id: table
    priority: 20
    when: []
    then: {use_case: true}
    rationale: the table
  - id: warn-qlora
    kind: advise
    priority: 5
    when: [{fact: verdict.method, op: "==", value: qlora}]
    warn: [{code: q, message: "q {data.examples:.0f}"}]
    rationale: r
"""


def ctx_for(text: str, name: str = "p.yaml") -> CompileContext:
    return CompileContext({name: text}, name, "<test>")


def test_stage_table_is_the_documented_pipeline():
    assert [name for name, _ in STAGES] == ["load", "schema", "resolve", "check", "compile"]


def test_each_stage_can_run_alone():
    ctx = run_stages(ctx_for(MINIMAL), until="load")
    assert not ctx.diags and set(ctx.data) >= {"rules", "gpus"} and ctx.policy is None
    ctx = run_stages(ctx_for(MINIMAL), until="resolve")
    assert set(ctx.conditions) == {"big-data-full", "table", "warn-qlora"} and ctx.thresholds == {"big": 1000.0}
    ctx = run_stages(ctx_for(MINIMAL))
    policy = ctx.policy
    assert [r.id for r in policy.select_rules] == ["big-data-full", "table"]
    assert [r.order for r in policy.select_rules] == [1, 2]
    assert [r.id for r in policy.advise_rules] == ["warn-qlora"]


def test_priority_ties_are_broken_by_id_not_file_order():
    swapped = MINIMAL.replace("priority: 20", "priority: 10")
    policy = load_policy_files({"p.yaml": swapped}, "p.yaml")
    assert [r.id for r in policy.select_rules] == ["big-data-full", "table"]


def test_content_hash_and_semantic_hash():
    a = load_policy_files({"p.yaml": MINIMAL}, "p.yaml")
    b = load_policy_files({"p.yaml": "# a comment\n" + MINIMAL}, "p.yaml")
    assert a.sha256 != b.sha256  # the bytes differ
    assert a.semantic_sha256 == b.semantic_sha256  # the meaning does not
    c = load_policy_files({"p.yaml": MINIMAL.replace("big: 1000", "big: 2000")}, "p.yaml")
    assert c.semantic_sha256 != a.semantic_sha256


def test_default_policy_loads_as_a_bundle():
    policy = load_policy(None)
    assert policy.name == "default" and policy.language == "finetune-policy/v1"
    assert set(policy.files) == {"policy.yaml", "memory.yaml", "gpus.yaml", "thresholds.yaml", "defaults.yaml",
                                 "use_cases.yaml", "rules.yaml"}
    assert len(policy.sha256) == 64
    snap = policy.snapshot()
    again = load_policy_files(snap["files"], snap["root"])
    assert again.sha256 == policy.sha256 and again.semantic_sha256 == policy.semantic_sha256


def test_broken_policy_reports_every_error_located(golden):
    files, root, origin, reader = read_policy_files(FIXTURES / "broken.yaml")
    with pytest.raises(PolicyError) as exc:
        load_policy(FIXTURES / "broken.yaml")
    codes = [d.code for d in exc.value.diagnostics]
    assert codes == sorted(codes, key=lambda c: codes.index(c))  # stable
    assert {"rule-unknown-fact", "rule-unknown-value", "rule-unknown-threshold", "rule-bad-operator",
            "rule-verdict-in-select", "rule-duplicate-id", "unknown-target-module", "rule-advise-empty"} <= set(codes)
    lines = [d.location.line for d in exc.value.diagnostics]
    assert lines == sorted(lines)
    golden("broken-policy.txt", render_text(exc.value.diagnostics) + "\n")


@pytest.mark.parametrize("text,code,line", [
    ("language: finetune-policy/v9\nname: x\nversion: 1.0.0\nrules: []\n", "policy-language", 1),
    ("language: finetune-policy/v1\nname: x\nversion: 1.0\nrules: []\n", "schema-type", 3),
    ("language: finetune-policy/v1\nname: x\nversion: '1.0'\nrules: []\n", "schema-pattern", 3),
    ("language: finetune-policy/v1\nname: x\nversion: 1.0.0\nrulez: []\n", "schema-unknown-field", 4),
    ("language: finetune-policy/v1\nname: x\nversion: 1.0.0\n", "schema-missing-field", 1),
    ("- just\n- a list\n", "policy-not-mapping", 1),
    ("language: finetune-policy/v1\nname: x\nversion: 1.0.0\ninclude: [nope.yaml]\nrules: []\n",
     "policy-missing-include", 4),
])
def test_single_problem_policies(text, code, line):
    with pytest.raises(PolicyError) as exc:
        load_policy_files({"p.yaml": text}, "p.yaml", origin="<t>")
    found = [(d.code, d.location.line) for d in exc.value.diagnostics]
    assert (code, line) in found, render_text(exc.value.diagnostics)
    assert all(d.help or d.code.startswith("policy-") for d in exc.value.diagnostics)


def test_unknown_field_suggests_the_right_name():
    text = MINIMAL.replace("then: {method: full_ft}", "then: {method: full_ft, rnk: 4}")
    with pytest.raises(PolicyError) as exc:
        load_policy_files({"p.yaml": text}, "p.yaml")
    d = exc.value.errors[0]
    assert d.code == "schema-unknown-field" and "did you mean `rank`?" in d.help


def test_message_template_names_are_checked():
    text = MINIMAL.replace("q {data.examples:.0f}", "q {data.exmples}")
    with pytest.raises(PolicyError) as exc:
        load_policy_files({"p.yaml": text}, "p.yaml")
    assert exc.value.errors[0].code == "message-unknown-fact"


def test_section_defined_in_two_bundle_files_is_an_error():
    files = {"policy.yaml": MINIMAL.replace("rules:", "include: [more.yaml]\nrules:"),
             "more.yaml": "thresholds:\n  other: 3\n"}
    with pytest.raises(PolicyError) as exc:
        load_policy_files(files, "policy.yaml")
    assert [d.code for d in exc.value.diagnostics] == ["policy-duplicate-section"]
    assert exc.value.diagnostics[0].location.file == "more.yaml"
