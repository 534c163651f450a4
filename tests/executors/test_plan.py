"""Plans from verdicts: peft and bitsandbytes configs, precision mapping, refusals, multi-GPU, hashes."""

from __future__ import annotations

import json

import pytest

from executors.errors import PlanError
from executors.plan import PlanOptions, map_optimizer, map_precision, quantization_section, schedule

CPU = {"type": "cpu", "count": 1, "name": "x86_64", "bf16": False, "fp16": False}
A100 = {"type": "cuda", "count": 1, "name": "A100", "bf16": True, "fp16": True}
V100 = {"type": "cuda", "count": 1, "name": "V100", "bf16": False, "fp16": True}


def test_precision_is_mapped_to_the_device():
    cpu = map_precision("bf16_mixed", CPU, full_ft=False, quantized=False)
    assert cpu["used"] == "fp32" and cpu["downgraded"] and "CPU" in cpu["reason"] and cpu["model_dtype"] == "float32"
    gpu = map_precision("bf16_mixed", A100, full_ft=False, quantized=False)
    assert gpu["used"] == "bf16_mixed" and gpu["bf16"] and not gpu["downgraded"] and gpu["model_dtype"] == "bfloat16"
    assert map_precision("bf16_mixed", A100, full_ft=True, quantized=False)["model_dtype"] == "float32"
    old = map_precision("bf16_mixed", V100, full_ft=False, quantized=False)
    assert old["used"] == "fp16_mixed" and old["fp16"] and old["downgraded"]


def test_optimizer_mapping():
    assert map_optimizer("adamw", CPU)["used"] == "adamw_torch"
    paged = map_optimizer("paged_adamw_8bit", CPU)
    assert paged["used"] == "adamw_bnb_8bit" and "CUDA" in paged["reason"]
    assert map_optimizer("paged_adamw_8bit", A100)["used"] == "paged_adamw_8bit"
    with pytest.raises(PlanError):
        map_optimizer("lion", CPU)


def test_bnb_compute_dtype_follows_the_device():
    quant = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    on_cpu = quantization_section(quant, CPU)
    assert on_cpu["bitsandbytes"] == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                      "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "float32"}
    assert on_cpu["requested_compute_dtype"] == "bfloat16" and on_cpu["compute_dtype_reason"]
    assert quantization_section(quant, A100)["bitsandbytes"]["bnb_4bit_compute_dtype"] == "bfloat16"
    assert quantization_section(quant, V100)["bitsandbytes"]["bnb_4bit_compute_dtype"] == "float16"


def test_schedule():
    assert schedule(100, 4, 2, 1, 3, None) == {"sequences_per_step": 8, "steps_per_epoch": 13, "total_steps": 39,
                                                "total_steps_from": "epochs"}
    assert schedule(100, 4, 2, 2, 1.5, None)["total_steps"] == 11
    assert schedule(None, 4, 2, 1, 3, 50)["total_steps"] == 50
    assert schedule(None, 4, 2, 1, 3, None)["total_steps"] is None




def build(verdict, tiny_model, data=None, **options):
    from executors.plan import build_plan

    return build_plan(verdict, model_path=tiny_model, data_files=data, options=PlanOptions(**options), device=CPU)


@pytest.fixture
def alpaca(examples):
    return [str(examples / "alpaca.jsonl")]


LLAMA_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.mark.train
def test_lora_plan(tiny_model, verdict, alpaca):
    from executors.plan import validate_plan

    plan = build(verdict("lora"), tiny_model, alpaca)
    validate_plan(plan)
    assert plan["peft"] == {"type": "LORA", "class": "LoraConfig", "kwargs": {
        "r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0, "target_modules": LLAMA_LINEAR, "use_dora": False,
        "bias": "none"}}
    assert plan["quantization"] is None
    t = plan["training"]
    assert t["precision"]["requested"] == "bf16_mixed" and t["precision"]["used"] == "fp32"
    assert any("CPU" in w["message"] for w in plan["warnings"])
    assert t["max_steps"] == 3 * t["steps_per_epoch"] and t["max_steps_from"] == "epochs"
    assert plan["trainable_params"]["peft"] == 2 * (8 * (64 + 64) * 2 + 8 * (64 + 32) * 2 + 8 * (64 + 128) * 3)
    assert plan["data"]["files"][0]["sha256"] and plan["data"]["train_examples"] + plan["data"]["eval_examples"] == 140
    assert plan["model"]["info"]["feedforward_modules"] == ["down_proj"]


@pytest.mark.train
@pytest.mark.parametrize("preset,expected", [("attention", ["k_proj", "o_proj", "q_proj", "v_proj"]),
                                             ("mlp", ["down_proj", "gate_proj", "up_proj"]),
                                             (["q_proj", "v_proj"], ["q_proj", "v_proj"]),
                                             (None, ["q_proj", "v_proj"])])  # None: peft's default for llama
def test_target_presets_resolve_to_module_names(tiny_model, verdict, preset, expected):
    plan = build(verdict("lora", target_modules=preset), tiny_model)
    assert plan["peft"]["kwargs"]["target_modules"] == expected


@pytest.mark.train
def test_unknown_target_modules_are_refused_with_the_valid_names(tiny_model, verdict):
    with pytest.raises(PlanError) as err:
        build(verdict("lora", target_modules=["q_proj", "query_key_value"]), tiny_model)
    d = err.value.diagnostics[0]
    assert d.code == "plan-unknown-target-module" and "`query_key_value`" in d.message
    assert d.help.startswith("valid module names: " + ", ".join(LLAMA_LINEAR))
    assert err.value.exit_code == 2


@pytest.mark.train
def test_qlora_plan_carries_bitsandbytes_config(tiny_model, verdict):
    plan = build(verdict("qlora"), tiny_model)
    q = plan["quantization"]
    assert q["bitsandbytes"] == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                                 "bnb_4bit_compute_dtype": "float32"}
    assert q["requested_compute_dtype"] == "bfloat16"
    assert plan["peft"]["class"] == "LoraConfig" and plan["model"]["dtype"] == "float32"


@pytest.mark.train
def test_dora_plans_and_dora_on_4bit(tiny_model, verdict, monkeypatch):
    plan = build(verdict("dora"), tiny_model)
    assert plan["peft"]["kwargs"]["use_dora"] is True
    both = build(verdict("dora"), tiny_model, load_in_4bit=True)
    assert both["peft"]["kwargs"]["use_dora"] and both["quantization"]["bits"] == 4
    import executors.lora.executor as lora_mod

    monkeypatch.setattr(lora_mod, "peft_supports_dora_on_4bit", lambda: False)
    with pytest.raises(PlanError, match="plan-dora-4bit-unsupported"):
        build(verdict("dora"), tiny_model, load_in_4bit=True)


@pytest.mark.train
def test_adalora_plan_has_the_step_schedule(tiny_model, verdict, alpaca):
    plan = build(verdict("adalora"), tiny_model, alpaca, max_steps=40)
    kw = plan["peft"]["kwargs"]
    assert (kw["init_r"], kw["target_r"], kw["total_step"]) == (12, 8, 40)
    assert kw["tinit"] == 4 and kw["tfinal"] == 8 and kw["tinit"] < kw["total_step"] - kw["tfinal"]
    from_epochs = build(verdict("adalora"), tiny_model, alpaca)
    assert from_epochs["peft"]["kwargs"]["total_step"] == from_epochs["training"]["max_steps"]


@pytest.mark.train
def test_adalora_without_a_step_count_is_refused(tiny_model, verdict):
    with pytest.raises(PlanError) as err:
        build(verdict("adalora"), tiny_model)
    assert err.value.diagnostics[0].code == "plan-adalora-no-steps"
    assert "--data" in err.value.diagnostics[0].help


@pytest.mark.train
def test_ia3_targets_and_feedforward(tiny_model, verdict):
    plan = build(verdict("ia3"), tiny_model)
    assert plan["peft"]["kwargs"] == {"target_modules": LLAMA_LINEAR, "feedforward_modules": ["down_proj"]}
    attn = build(verdict("ia3", target_modules="attention"), tiny_model)
    assert attn["peft"]["kwargs"]["feedforward_modules"] == []
    default = build(verdict("ia3", target_modules=None), tiny_model)  # peft's IA3 table for llama
    assert default["peft"]["kwargs"] == {"target_modules": ["down_proj", "k_proj", "v_proj"],
                                         "feedforward_modules": ["down_proj"]}


@pytest.mark.train
@pytest.mark.parametrize("method,cls", [("prompt_tuning", "PromptTuningConfig"), ("prefix_tuning", "PrefixTuningConfig")])
def test_prompt_learning_plans(tiny_model, verdict, method, cls):
    plan = build(verdict(method), tiny_model)
    assert plan["peft"]["class"] == cls and plan["peft"]["kwargs"]["num_virtual_tokens"] == 8
    if method == "prefix_tuning":  # peft raises for prefix tuning + gradient checkpointing
        assert plan["training"]["gradient_checkpointing"] is False
        assert any(w["code"] == "plan-gradient-checkpointing-off" for w in plan["warnings"])


@pytest.mark.train
@pytest.mark.parametrize("method,options,code", [
    ("prompt_tuning", {"merge": True}, "plan-merge-unsupported"),
    ("prompt_tuning", {"packing": True}, "plan-packing-unsupported"),
    ("prefix_tuning", {"padding_free": True}, "plan-padding-free-unsupported"),
    ("prefix_tuning", {"merge": True}, "plan-merge-unsupported"),
    ("full_ft", {"load_in_4bit": True}, "plan-quantized-base-unsupported"),
])
def test_incompatible_combinations_are_refused(tiny_model, verdict, method, options, code):
    with pytest.raises(PlanError) as err:
        build(verdict(method), tiny_model, **options)
    assert [d.code for d in err.value.diagnostics] == [code] and err.value.exit_code == 2


@pytest.mark.train
def test_adapter_is_refused_at_plan_time(tiny_model, verdict):
    with pytest.raises(PlanError, match="adapter: not supported here: .*transformers"):
        build(verdict("adapter"), tiny_model)


@pytest.mark.train
def test_ia3_merge_on_16bit_and_4bit_and_qlora_merge_are_allowed(tiny_model, verdict):
    assert build(verdict("ia3"), tiny_model, merge=True)["merge"] is True
    # merged into the dequantized 4-bit base it was trained on (executors.merge)
    assert build(verdict("ia3"), tiny_model, merge=True, load_in_4bit=True)["merge"] is True
    assert build(verdict("qlora"), tiny_model, merge=True)["merge"] is True
    full = build(verdict("full_ft"), tiny_model, merge=True)
    assert full["merge"] is False and any(w["code"] == "plan-merge-noop" for w in full["warnings"])


@pytest.mark.train
def test_trainable_count_is_checked_against_the_decision_estimate(tiny_model, verdict):
    plan = build(verdict("lora"), tiny_model)
    n = plan["trainable_params"]["peft"]
    from executors.plan import build_plan

    decision = {"decision_id": "01TEST", "feasible": True, "chosen_rule": "r", "policy": {
        "name": "p", "version": "1.0.0", "sha256": "0" * 64}, "trainable_params_estimate": n,
        "memory_estimate_gib": 1.5}
    ok = build_plan(verdict("lora"), model_path=tiny_model, data_files=None, decision=decision, device=CPU)
    assert ok["trainable_params"] == {"peft": n, "estimate": n, "match": True, "total_params": 139584,
                                      "counted_on": "meta device"}
    bad = build_plan(verdict("lora"), model_path=tiny_model, data_files=None, device=CPU,
                     decision={**decision, "trainable_params_estimate": n + 1})
    assert bad["trainable_params"]["match"] is False
    assert any(w["code"] == "plan-trainable-mismatch" for w in bad["warnings"])


@pytest.mark.train
def test_multitask_plan_reports_the_mixture(tiny_model, verdict, examples):
    plan = build(verdict("lora", multitask={"temperature": 0.5, "cap": None}), tiny_model,
                 [str(examples / "multitask.jsonl")])
    mt = plan["data"]["multitask"]
    assert mt["temperature"] == 0.5 and set(mt["mixture"]) == {"sounds", "numbers", "opposites"}
    weights = {k: v["weight"] for k, v in mt["mixture"].items()}
    natural = {k: v["natural"] for k, v in mt["mixture"].items()}
    assert weights["opposites"] > natural["opposites"] and weights["sounds"] < natural["sounds"]
    assert sum(v["samples"] for v in mt["mixture"].values()) == plan["data"]["train_examples"]


@pytest.mark.train
def test_packing_counts_packed_sequences(tiny_model, verdict, alpaca):
    plain = build(verdict("lora"), tiny_model, alpaca)
    packed = build(verdict("lora"), tiny_model, alpaca, packing=True)
    assert packed["data"]["train_sequences"] < plain["data"]["train_sequences"]
    assert packed["training"]["max_steps"] < plain["training"]["max_steps"]


@pytest.mark.train
def test_layerwise_decay_and_seq_len_cap(tiny_model, verdict):
    plan = build(verdict("full_ft", training={"layerwise_lr_decay": 0.9, "seq_len": 4096}), tiny_model)
    assert plan["training"]["layerwise_lr_decay"] == 0.9
    assert plan["data"] is None
    assert any("max_position_embeddings" in n for n in plan["notes"])


@pytest.mark.train
@pytest.mark.parametrize("sharding,strategy", [("fsdp", "fsdp"), ("zero3_offload", "deepspeed_zero3_offload"),
                                               ("zero3", "deepspeed_zero3"), ("none", "ddp")])
def test_multi_gpu_strategy_and_accelerate_config(tiny_model, verdict, sharding, strategy):
    from executors.accelerate_config import accelerate_config

    plan = build(verdict("lora", training={"gpu_count": 4, "sharding": sharding}), tiny_model)
    assert plan["distributed"]["strategy"] == strategy and plan["distributed"]["launcher"] == "accelerate"
    cfg = accelerate_config(plan)
    assert cfg["num_processes"] == 4 and cfg["mixed_precision"] == "bf16"
    if sharding == "fsdp":
        assert cfg["distributed_type"] == "FSDP" and cfg["fsdp_config"]["fsdp_version"] == 2
        assert cfg["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    elif sharding == "zero3_offload":
        ds = cfg["deepspeed_config"]
        assert ds["zero_stage"] == 3 and ds["offload_optimizer_device"] == "cpu" and ds["offload_param_device"] == "cpu"
    elif sharding == "zero3":
        assert cfg["deepspeed_config"]["offload_param_device"] == "none"
    else:
        assert cfg["distributed_type"] == "MULTI_GPU"


@pytest.mark.train
def test_plan_file_roundtrip_and_tamper_detection(tiny_model, verdict, tmp_path):
    from executors.plan import load_plan, write_plan

    plan = build(verdict("lora"), tiny_model)
    path = tmp_path / "plan.json"
    write_plan(plan, str(path))
    assert load_plan(str(path)) == plan
    data = json.loads(path.read_text())
    data["training"]["learning_rate"] = 1.0
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="plan-hash-mismatch"):
        load_plan(str(path))
    path.write_text("{oops")
    with pytest.raises(PlanError, match=r"plan.json:1:2: error\[plan-bad-json\]"):
        load_plan(str(path))
    data["training"]["learning_rate"] = -1
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="plan-exclusiveMinimum"):
        load_plan(str(path))


@pytest.mark.train
def test_learning_rate_override_is_recorded(tiny_model, verdict):
    plan = build(verdict("lora"), tiny_model, learning_rate=0.5)
    t = plan["training"]
    assert t["learning_rate"] == 0.5 and t["learning_rate_from"] == "--learning-rate"
    assert t["verdict_learning_rate"] == 1e-2


@pytest.mark.train
def test_the_plan_records_where_it_will_run_not_where_it_was_made(tiny_model, verdict):
    from executors.accelerate_config import accelerate_config

    gpus = build(verdict("lora", training={"gpu_count": 2, "sharding": "fsdp"}), tiny_model)
    assert gpus["device"]["type"] == "cuda" and gpus["device"]["count"] == 2 and gpus["device"]["bf16"]
    assert gpus["device"]["planned_on"] == "x86_64" and gpus["training"]["precision"]["used"] == "bf16_mixed"
    assert any("planned on cpu" in n for n in gpus["notes"])
    cfg = accelerate_config(gpus)
    assert cfg["use_cpu"] is False and cfg["mixed_precision"] == "bf16" and cfg["num_processes"] == 2
    cpu = build(verdict("lora", training={"gpu_count": 2, "sharding": "fsdp"}), tiny_model, device="cpu")
    assert cpu["device"]["type"] == "cpu" and cpu["training"]["precision"]["used"] == "fp32"
    assert cpu["distributed"]["processes"] == 2 and cpu["distributed"]["backend"] == "gloo"
    cfg = accelerate_config(cpu)
    assert cfg["use_cpu"] is True and cfg["mixed_precision"] == "no" and cfg["distributed_type"] == "FSDP"
    single = build(verdict("lora"), tiny_model)
    assert single["device"]["type"] == "cpu" and single["distributed"]["strategy"] == "single"
    forced = build(verdict("lora"), tiny_model, device="cuda")
    assert forced["device"]["type"] == "cuda" and forced["training"]["precision"]["used"] == "bf16_mixed"


@pytest.mark.train
def test_training_settings_from_flags(tiny_model, verdict, alpaca):
    plan = build(verdict("lora"), tiny_model, alpaca, weight_decay=0.01, max_grad_norm=0.5, eval_strategy="steps",
                 eval_steps=3, report_to=("tensorboard",), max_steps=9)
    t = plan["training"]
    assert (t["weight_decay"], t["max_grad_norm"], t["eval_strategy"], t["eval_steps"], t["report_to"]) == (
        0.01, 0.5, "steps", 3, ["tensorboard"])
    default = build(verdict("lora"), tiny_model, alpaca, max_steps=10)["training"]
    assert (default["weight_decay"], default["max_grad_norm"], default["eval_strategy"]) == (0.0, 1.0, "steps")
    assert default["eval_steps"] == default["save_steps"]
    assert build(verdict("lora"), tiny_model)["training"]["eval_strategy"] == "no"  # no data, no evaluation
    with pytest.raises(PlanError, match="plan-no-eval-data"):
        build(verdict("lora"), tiny_model, alpaca, eval_fraction=0.0, eval_strategy="steps")
    with pytest.raises(PlanError, match="plan-unknown-tracker"):
        build(verdict("lora"), tiny_model, alpaca, report_to=("comet",))


@pytest.mark.train
def test_the_plan_records_the_chat_template_and_token_counts(tiny_model, verdict, examples, tmp_path):
    import shutil

    plan = build(verdict("lora"), tiny_model, [str(examples / "alpaca.jsonl")])
    d = plan["data"]
    assert d["chat_template"]["source"] == "builtin:alpaca" and d["chat_template"]["used"] is True
    assert d["chat_template"]["masking"] == "generation-tags" and d["padding_free"] is True
    assert 0 < d["trained_tokens_per_epoch"] < d["train_tokens_per_epoch"] and d["dropped_train"] == 0
    text = build(verdict("lora"), tiny_model, [str(examples / "text.jsonl")])["data"]
    assert text["chat_template"]["used"] is False
    # a model with its own template: auto uses it
    own = tmp_path / "model"
    shutil.copytree(tiny_model, own)
    config = json.loads((own / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    (own / "tokenizer_config.json").write_text(json.dumps(config))
    mine = build(verdict("lora"), str(own), [str(examples / "chat.jsonl")])["data"]["chat_template"]
    assert mine["source"] == "model" and mine["masking"] == "prefix-render"
    assert build(verdict("lora"), str(own), [str(examples / "chat.jsonl")],
                 chat_template="chat")["data"]["chat_template"]["source"] == "builtin:chat"
    prompt = build(verdict("prompt_tuning"), tiny_model, [str(examples / "alpaca.jsonl")])
    assert prompt["data"]["padding_free"] is False  # virtual tokens precede every example: padded batches
