"""Facts: validation with field paths and suggestions, normalization with policy defaults."""

import pytest

from ruleengine.facts import FactsError, FactsInput, flatten, load_facts_file, merge_facts, normalize_facts
from ruleengine.policy import load_policy_files

POLICY = load_policy_files({"p.yaml": """\
language: finetune-policy/v1
name: mini
version: 0.1.0
gpus:
  a100-80gb: {memory_gb: 80, bf16: true, tflops: 312, price_per_hour: 4}
defaults:
  facts:
    task: {use_case: chat, quality: production}
    serving: {adapters: 1}
use_cases:
  chat: {label: Chat, method: lora, rank: 16, shift: style_format}
  domain_qa: {label: QA, method: lora, rank: 16, shift: domain_adaptation}
rules:
  - {id: r, priority: 1, when: [], then: {use_case: true}, rationale: r}
"""}, "p.yaml")


def codes(exc):
    return [d.code for d in exc.value.diagnostics]


def test_counts_and_defaults_are_normalized():
    f = normalize_facts({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": "50k"}},
                        POLICY)
    assert f["model"]["params"] == 7e9 and f["data"]["examples"] == 50_000
    assert f["hardware"]["gpu_count"] == 1
    assert f["task"] == {"use_case": "chat", "quality": "production", "shift": "style_format"}
    assert f["serving"]["latency_sensitive"] is False and f["serving"]["adapters"] == 1
    assert f["data"]["num_tasks"] == 1


def test_shift_comes_from_the_use_case_row_unless_given():
    base = {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 10}}
    assert normalize_facts({**base, "task": {"use_case": "domain_qa"}}, POLICY)["task"]["shift"] == "domain_adaptation"
    given = {**base, "task": {"use_case": "domain_qa", "shift": "new_knowledge"}}
    assert normalize_facts(given, POLICY)["task"]["shift"] == "new_knowledge"


def test_multi_task_examples_are_summed():
    f = normalize_facts({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"},
                         "data": {"tasks": [{"name": "a", "examples": "1M"}, {"name": "b", "examples": "1k"}]}}, POLICY)
    assert f["data"]["examples"] == 1_001_000 and f["data"]["num_tasks"] == 2


@pytest.mark.parametrize("facts,code,path", [
    ({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"exampels": 5}}, "facts-unknown-field",
     "data.exampels"),
    ({"model": {"params": "7X"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 5}}, "facts-bad-count",
     "model.params"),
    ({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80g"}, "data": {"examples": 5}}, "facts-unknown-gpu",
     "hardware.gpu"),
    ({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 0}, "data": {"examples": 5}},
     "facts-minimum", "hardware.gpu_count"),
    ({"model": {"params": "7B"}, "hardware": {"gpu_memory_gb": -8}, "data": {"examples": 5}},
     "facts-exclusiveMinimum", "hardware.gpu_memory_gb"),
    ({"hardware": {"gpu": "a100-80gb"}, "data": {"examples": 5}}, "facts-missing-model", "model"),
    ({"model": {"params": "7B"}, "data": {"examples": 5}}, "facts-missing-gpu", "hardware"),
    ({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}}, "facts-missing-examples", "data.examples"),
    ({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 5},
      "task": {"use_case": "chatt"}}, "facts-unknown-use-case", "task.use_case"),
    ({"model": {"params": 7}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 5}}, "facts-implausible",
     "model.params"),
    ({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 5},
      "training": {"precision": "bf16"}}, "facts-bad-value", "training.precision"),
])
def test_bad_facts_name_the_field_and_say_what_to_do(facts, code, path):
    with pytest.raises(FactsError) as exc:
        normalize_facts(facts, POLICY)
    found = {(d.code, d.path) for d in exc.value.diagnostics}
    assert (code, path) in found, exc.value
    assert all(d.help for d in exc.value.diagnostics), exc.value
    assert exc.value.exit_code == 2


def test_suggestions_for_typos():
    with pytest.raises(FactsError) as exc:
        normalize_facts({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80g"}, "data": {"examples": 1}}, POLICY)
    assert "did you mean `a100-80gb`?" in exc.value.diagnostics[0].help
    with pytest.raises(FactsError) as exc:
        normalize_facts({"model": {"parms": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 1}}, POLICY)
    assert any("did you mean `params`?" in d.help for d in exc.value.diagnostics)


def test_file_errors_carry_line_and_column(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("model:\n  params: 7B\nhardware:\n  gpu: a100-80gb\n  gpu_count: zero\ndata: {examples: 5}\n")
    with pytest.raises(FactsError) as exc:
        normalize_facts(load_facts_file(p), POLICY)
    d = exc.value.diagnostics[0]
    assert (d.location.file, d.location.line, d.location.col) == (str(p), 5, 14)


def test_flag_errors_name_the_flag():
    base = FactsInput({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 5}})
    merged = merge_facts(base, {("hardware", "gpu_count"): (-2, "--gpus")})
    with pytest.raises(FactsError) as exc:
        normalize_facts(merged, POLICY)
    assert exc.value.diagnostics[0].location.file == "--gpus"


def test_facts_file_must_be_a_mapping(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(FactsError) as exc:
        load_facts_file(p)
    assert codes(exc) == ["facts-not-mapping"]
    with pytest.raises(FactsError) as exc:
        load_facts_file(tmp_path / "missing.yaml")
    assert codes(exc) == ["file-unreadable"]


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": 2}) == {"a.b": 1, "a.c.d": [1], "e": 2}


def test_gpu_aliases_resolve_to_the_catalog_name_and_host_memory_defaults_to_unknown():
    from ruleengine.facts import UNKNOWN_HOST_MEMORY, normalize_facts
    from ruleengine.policy import load_policy

    policy = load_policy(None)
    base = {"model": {"params": "7B"}, "data": {"examples": "50k"}, "task": {"use_case": "chat"}}
    for alias, name in (("h200", "h200-141gb"), ("rtx-4090", "rtx4090-24gb"), ("4090", "rtx4090-24gb"),
                        ("b200", "b200-180gb"), ("mi300x", "mi300x-192gb"), ("a100-80gb", "a100-80gb")):
        facts = normalize_facts({**base, "hardware": {"gpu": alias}}, policy)
        assert facts["hardware"]["gpu"] == name
        assert facts["hardware"]["host_memory_gb"] == UNKNOWN_HOST_MEMORY == 0.0
    given = normalize_facts({**base, "hardware": {"gpu": "l4", "host_memory_gb": 256}}, policy)
    assert given["hardware"]["host_memory_gb"] == 256


def test_every_catalog_gpu_has_the_documented_fields():
    from ruleengine.policy import load_policy

    gpus = load_policy(None).gpus
    for required in ("h100-80gb", "h100-nvl-94gb", "h200-141gb", "b200-180gb", "a100-80gb", "a100-40gb", "l40s-48gb",
                     "l4-24gb", "a10g-24gb", "rtx4090-24gb", "rtx5090-32gb", "rtx-a6000-48gb", "rtx6000-ada-48gb",
                     "v100-32gb", "t4-16gb", "mi300x-192gb", "mi325x-256gb"):
        entry = gpus[required]
        assert {"memory_gb", "bf16", "fp8", "tflops", "price_per_hour", "aliases", "source"} <= set(entry), required
        # GiB as nvidia-smi reports: never more than the marketing number in GB read as GiB
        assert 0 < entry["memory_gb"] <= float(required.rsplit("-", 1)[1].rstrip("gb")) + 0.5, required
