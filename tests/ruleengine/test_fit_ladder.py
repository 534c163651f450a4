"""Deciding with the settings that fit: the settings ladder of derive.candidate_from, and --exact."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ruleengine import api
from ruleengine.architecture import infer_from_params, load_hf_config
from ruleengine.cli import main
from ruleengine.derive import candidate_from, gpu_spec, ladder, resolve_spec
from ruleengine.facts import FactsError
from ruleengine.memory import MemoryConstants, profile, usable_gib

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
ENGINE = api.open_policy(None)
POLICY = ENGINE.policy
CONSTANTS = MemoryConstants.from_policy(POLICY.memory)


def _facts(params: str = "7B", gpu: str = "a100-80gb", count: int = 1, host: float = 0.0, training: dict | None = None,
           examples: str = "2M", **task) -> dict:
    hardware = {"gpu": gpu, "gpu_count": count}
    if host:
        hardware["host_memory_gb"] = host
    facts = {"model": {"params": params}, "hardware": hardware, "data": {"examples": examples},
             "task": {"use_case": "chat", **task}}
    if training:
        facts["training"] = training
    return facts


def _candidate(method: str, facts: dict, then: dict | None = None):
    from ruleengine.pipeline import normalized_facts

    norm = normalized_facts(ENGINE.evaluator, facts)
    gpu = gpu_spec(POLICY, norm["hardware"])
    spec = resolve_spec(POLICY, then or {"method": method}, norm, gpu)
    arch = infer_from_params(float(norm["model"]["params"]))
    return spec, gpu, arch, candidate_from(spec, arch, gpu, CONSTANTS, usable_gib(gpu.memory_gb, CONSTANTS))


def test_a_verdict_that_fits_at_its_own_settings_is_not_changed():
    _, _, _, cand = _candidate("lora", _facts())
    assert cand.fits and cand.fit_changes == [] and cand.training["optimizer"] == "adamw"


def test_full_ft_of_7b_on_one_a100_fits_with_the_8bit_paged_optimizer():
    spec, gpu, arch, cand = _candidate("full_ft", _facts())
    assert cand.fits and cand.training["optimizer"] == "paged_adamw_8bit"
    assert "needs" in cand.fit_changes[0] and any("paged_adamw_8bit" in c for c in cand.fit_changes[1:])
    # the estimate is the memory model's for the chosen settings, with the chosen accumulation
    setup = cand.training_setup(gpu.count)
    assert setup.gradient_accumulation == (cand.training["gradient_accumulation_steps"] > 1)
    assert cand.estimate.total_gib == pytest.approx(profile(arch, spec.cfg, setup, CONSTANTS).total_gib(
        setup.micro_batch_size))


def test_the_ladder_never_changes_what_the_user_set():
    _, _, _, cand = _candidate("full_ft", _facts(training={"optimizer": "adamw"}))
    assert not cand.fits and cand.training["optimizer"] == "adamw"
    assert all("optimizer" not in c for c in cand.fit_changes)


def test_ladder_steps_in_order_and_offload_only_with_host_memory_for_16_bit_bases():
    norm_facts = _facts(count=8, host=2048, training={"gradient_checkpointing": False})
    from ruleengine.pipeline import normalized_facts

    norm = normalized_facts(ENGINE.evaluator, norm_facts)
    gpu = gpu_spec(POLICY, norm["hardware"])
    steps = ladder(resolve_spec(POLICY, {"method": "full_ft"}, norm, gpu), gpu, CONSTANTS)
    changes = steps[-1][3]
    assert steps[-1][1] == ("zero3_offload",)
    assert not any("paged_adamw_8bit" in c for c in changes)  # DeepSpeed's CPU Adam runs the offloaded step
    assert [s[1] for s in steps[:-1]] == [("none", "zero3")] * len(steps[:-1])  # auto already tries ZeRO-3
    assert not any(c.startswith("gradient checkpointing") for c in changes)  # the user turned it off
    assert any(c.startswith("optimizer adamw") for s in steps for c in s[3])  # ... but not the optimizer
    qlora = ladder(resolve_spec(POLICY, {"method": "qlora"}, norm, gpu), gpu, CONSTANTS)
    assert all(s[1] != ("zero3_offload",) for s in qlora)  # no CPU offload of a 4-bit base


def test_70b_research_grade_on_8_a100_needs_host_memory_for_full_ft():
    no_host = ENGINE.decide(_facts("70B", count=8, examples="500k", quality="research_best"))
    assert no_host.verdict["method"] == "lora" and no_host.verdict["rank"] == 64
    assert "full-ft-needs-offload" in [n["code"] for n in no_host.notes]
    small = ENGINE.decide(_facts("70B", count=8, host=512, examples="500k", quality="research_best"))
    assert small.verdict["method"] == "lora"  # 512 GiB does not hold the offloaded state of 8 GPUs
    host = ENGINE.decide(_facts("70B", count=8, host=2048, examples="500k", quality="research_best"))
    assert host.verdict["method"] == "full_ft" and host.verdict["training"]["sharding"] == "zero3_offload"
    codes = [n["code"] for n in host.notes]
    assert "settings-changed-to-fit" in codes
    text = next(n["message"] for n in host.notes if n["code"] == "settings-changed-to-fit")
    assert "ZeRO-3 with CPU offload" in text and "2048 GiB per node" in text


def test_infeasible_suggestions_name_host_memory_and_the_sequence_length_that_fit():
    d = ENGINE.decide({"model": {"params": "7B"}, "hardware": {"gpu_memory_gb": 12}, "data": {"examples": "10k"},
                       "task": {"use_case": "limited_budget"}})
    assert not d.feasible
    kinds = {s["kind"]: s for s in d.suggestions}
    assert kinds["shorter-sequences"]["facts"] == {"data.seq_len": 1024}
    assert kinds["host-memory"]["facts"]["hardware.host_memory_gb"] > 0
    shorter = ENGINE.decide({"model": {"params": "7B"}, "hardware": {"gpu_memory_gb": 12},
                             "data": {"examples": "10k", "seq_len": 1024}, "task": {"use_case": "limited_budget"}})
    assert shorter.feasible and shorter.verdict["method"] == "qlora"


def test_exact_without_a_config_is_a_located_error():
    with pytest.raises(FactsError) as exc:
        ENGINE.decide({"model": {"params": "7B", "exact": True}, "hardware": {"gpu": "a100-80gb"},
                       "data": {"examples": "10k"}})
    assert exc.value.diagnostics[0].code == "facts-exact-needs-config"
    assert exc.value.diagnostics[0].path == "model.exact"


def test_exact_names_the_train_extra_when_it_is_missing(monkeypatch):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name in ("torch", "transformers"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    result = CliRunner().invoke(main, ["estimate", "--model-config", str(CONFIGS / "gpt2.json"), "--exact",
                                       "--gpu", "a100-80gb"])
    assert result.exit_code == 2
    assert "facts-exact-needs-train-extra" in result.output and "finetune-policy[train]" in result.output


@pytest.mark.train
def test_exact_counts_with_transformers_through_the_cli():
    pytest.importorskip("transformers")
    result = CliRunner().invoke(main, ["estimate", "--model-config", str(CONFIGS / "qwen3-30b-a3b.json"), "--exact",
                                       "--gpu", "h100-80gb", "--format", "json"])
    assert result.exit_code == 0, result.output

    data = json.loads(result.output)
    closed = load_hf_config(str(CONFIGS / "qwen3-30b-a3b.json"))
    assert data["architecture"]["source"] == "exact" and data["architecture"]["params"] == closed.params


def test_a_method_peft_cannot_apply_is_rejected_as_inapplicable_not_an_error():
    import jsonschema

    from ruleengine.paths import load_schema

    d = ENGINE.decide({"model": {"config": str(CONFIGS / "deepseek-v2-lite.json")}, "hardware": {"gpu": "h100-80gb"},
                       "data": {"examples": "20k"}, "task": {"use_case": "chat"}})
    assert d.feasible
    dora = next(r for r in d.rejected if r["method"] == "dora")
    assert dora["code"] == "inapplicable" and "routed experts" in dora["reason"]
    assert d.estimates["dora"]["inapplicable"] and not d.estimates["dora"]["fits"]
    jsonschema.validate(json.loads(json.dumps(d.to_dict(), default=str)), load_schema("decision.schema.json"))


def test_user_target_modules_the_model_lacks_are_a_facts_error():
    with pytest.raises(FactsError) as exc:
        ENGINE.decide(_facts(training={"target_modules": ["query"]}))
    assert exc.value.diagnostics[0].code == "facts-unknown-target-module"
    assert exc.value.diagnostics[0].path == "training.target_modules[0]"


def test_suggestions_keep_the_other_hardware_facts():
    d = ENGINE.decide({"model": {"params": "70B"}, "hardware": {"gpu": "a10g-24gb", "host_memory_gb": 64},
                       "data": {"examples": "500k"}, "task": {"use_case": "chat", "quality": "research_best"}})
    assert not d.feasible and any(s["kind"] == "larger-gpu" for s in d.suggestions)


@pytest.mark.parametrize("params,gpu,use_case", [("70B", "a10g-24gb", "chat"), ("13B", "t4-16gb", "code_generation"),
                                                 ("123B", "l4-24gb", "chat"), ("34B", "t4-16gb", "limited_budget")])
def test_larger_gpu_suggestion_is_the_first_in_catalog_order_that_fits(params, gpu, use_case):
    """The bisection over memory sizes finds what walking the catalog (memory, then price) would."""
    from ruleengine.pipeline import normalized_facts
    from ruleengine.whatif import _outcome

    given = {"model": {"params": params}, "hardware": {"gpu": gpu}, "data": {"examples": "200k"},
             "task": {"use_case": use_case}}
    d = ENGINE.decide(given)
    assert not d.feasible
    ev, policy = ENGINE.evaluator, ENGINE.policy
    facts = normalized_facts(ev, given)
    current = policy.gpus[gpu]["memory_gb"]
    walk = None
    for name, spec in sorted(policy.gpus.items(), key=lambda kv: (kv[1]["memory_gb"], kv[1]["price_per_hour"])):
        if spec["memory_gb"] > current:
            hw = {k: v for k, v in facts["hardware"].items() if k not in ("gpu", "gpu_memory_gb")}
            res = _outcome(ev, {**facts, "hardware": {**hw, "gpu": name}}, "")
            if res and res[1] is not None:
                walk = name
                break
    found = [s["facts"]["hardware.gpu"] for s in d.suggestions if s["kind"] == "larger-gpu"]
    assert found == ([walk] if walk else [])
