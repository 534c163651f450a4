"""Real training runs on the tiny Llama: every method lowers the loss, and its artifact reloads exactly."""

from __future__ import annotations

import json
import os

import pytest

from executors import get_executor
from executors.plan import PlanOptions

pytestmark = pytest.mark.train

METHODS = ["full_ft", "lora", "qlora", "dora", "adalora", "ia3", "prompt_tuning", "prefix_tuning"]
CPU = {"type": "cpu", "count": 1, "name": "x86_64", "bf16": False, "fp16": False}


def plan_for(verdict, tiny_model, data, **options):
    from executors.plan import build_plan

    opts = {"max_steps": 20, "eval_fraction": 0.15, "save_steps": 10, **options}
    return build_plan(verdict, model_path=tiny_model, data_files=data, options=PlanOptions(**opts), device=CPU)


def logits(model, batch):
    import torch

    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def probe_batch(tiny_model):
    from executors.modeling import load_tokenizer

    tok = load_tokenizer(tiny_model)
    enc = tok(["### Instruction:\nWhat sound does a cow make?\n\n### Response:\n", "The dog says"],
              return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.mark.parametrize("method", METHODS)
def test_training_lowers_the_loss_and_the_artifact_reloads(method, tiny_model, verdict, examples, tmp_path):
    import torch

    from executors.runner import run_training

    plan = plan_for(verdict(method), tiny_model, [str(examples / "alpaca.jsonl")])
    out = tmp_path / "run"
    result = run_training(plan, str(out), progress=False, log=lambda m: None)
    m = result.metrics
    assert m["global_step"] == 20
    assert m["eval_loss_after"] < m["eval_loss_before"] - 0.05, (m["eval_loss_before"], m["eval_loss_after"])
    assert m["train_loss_last"] < m["train_loss_first"]

    # the output is complete, atomically renamed, with the manifest and metrics
    assert (out / "COMPLETE").is_file() and not os.path.exists(f"{out}.partial")
    manifest = json.loads((out / "run-manifest.json").read_text())
    assert manifest["plan_sha256"] == plan["plan_sha256"] and manifest["method"] == method
    assert manifest["time_per_step"]["median_s"] > 0 and manifest["memory"]["measured_peak"]["gib"] > 0
    assert manifest["packages"]["peft"] and manifest["data"][0]["sha256"] == plan["data"]["files"][0]["sha256"]
    assert json.loads((out / "metrics.json").read_text())["loss_curve"][0]["step"] == 1
    artifact = out / plan["artifact_dir"]
    assert (artifact / ("model.safetensors" if method == "full_ft" else "adapter_model.safetensors")).is_file()
    assert (artifact / "tokenizer.json").is_file()
    from transformers import AutoTokenizer

    # the adapter's tokenizer carries the template the run was trained with
    assert AutoTokenizer.from_pretrained(str(artifact)).chat_template == plan["data"]["chat_template"]["text"]
    batches = m["batches"]
    prompt_learning = method in ("prompt_tuning", "prefix_tuning")
    assert batches["padding_free"] is not prompt_learning and batches["tokens"] > 0
    assert (batches["padding_fraction"] == 0.0) is not prompt_learning

    # peft's count on the meta device equals the real model's trainable parameters
    trained = result.model
    assert sum(p.numel() for p in trained.parameters() if p.requires_grad) == plan["trainable_params"]["peft"]

    # the saved artifact reproduces the trained model's logits
    trained.eval()
    batch = probe_batch(tiny_model)
    reloaded = get_executor(method).load_trained(str(out), plan)
    torch.testing.assert_close(logits(reloaded, batch), logits(trained, batch), atol=1e-4, rtol=1e-4)


def test_qlora_really_uses_bitsandbytes_4bit_layers(tiny_model, verdict, examples, tmp_path):
    import bitsandbytes as bnb

    from executors.runner import run_training

    plan = plan_for(verdict("qlora"), tiny_model, [str(examples / "alpaca.jsonl")], max_steps=3)
    result = run_training(plan, str(tmp_path / "q"), progress=False, log=lambda m: None)
    layers = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14  # 7 projections x 2 layers, each quantized and wrapped by LoRA
    assert all(layer.weight.quant_type == "nf4" for layer in layers)
    reloaded = get_executor("qlora").load_trained(str(tmp_path / "q"), plan)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in reloaded.modules()) == 14


def test_adalora_reallocates_ranks_each_step(tiny_model, verdict, examples, tmp_path):
    from executors.runner import Recipe, prepare_run_dir

    plan = plan_for(verdict("adalora"), tiny_model, [str(examples / "alpaca.jsonl")], max_steps=12)
    plan_, run = prepare_run_dir(plan, str(tmp_path / "a"), resume=False, overwrite=False)
    recipe = Recipe(plan_, run, log=lambda m: None, progress=False)
    recipe.setup()
    callback = next(cb for cb in recipe.trainer.callback_handler.callbacks
                    if type(cb).__name__ == "AdaLoraAllocationCallback")
    recipe.train()
    assert callback.calls == 12
    # after tfinal the budget is at target_r: the mask keeps 8 ranks per module on average
    kept = [int((m.lora_E["default"] != 0).sum()) for m in recipe.model.modules() if hasattr(m, "lora_E")
            and "default" in m.lora_E]
    assert kept and sum(kept) / len(kept) <= 8.0 + 1e-9
    recipe.save()


def test_layerwise_lr_decay_groups(tiny_model, verdict, examples, tmp_path):
    from executors.runner import run_training

    plan = plan_for(verdict("full_ft", training={"layerwise_lr_decay": 0.5}), tiny_model,
                    [str(examples / "alpaca.jsonl")], max_steps=2)
    result = run_training(plan, str(tmp_path / "f"), progress=False, log=lambda m: None)
    lrs = [g["initial_lr"] for g in result.metrics["optimizer_param_groups"]]
    base = plan["training"]["learning_rate"]
    assert lrs == pytest.approx([base * 0.125, base * 0.25, base * 0.5, base])  # embeddings, layer 0, 1, head
    assert sum(g["params"] for g in result.metrics["optimizer_param_groups"]) == 139584


def test_merge_writes_a_full_model_with_the_same_logits(tiny_model, verdict, examples, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from executors.runner import run_training

    plan = plan_for(verdict("lora"), tiny_model, [str(examples / "alpaca.jsonl")], max_steps=5, merge=True)
    result = run_training(plan, str(tmp_path / "m"), progress=False, log=lambda m: None)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m" / "merged")).eval()
    batch = probe_batch(tiny_model)
    result.model.eval()
    torch.testing.assert_close(logits(merged, batch), logits(result.model, batch), atol=1e-4, rtol=1e-4)
    assert result.manifest["artifacts"]["merged"] == "merged"


@pytest.mark.parametrize("data", ["chat.jsonl", "text.jsonl", "multitask.jsonl"])
def test_other_formats_train(tiny_model, verdict, examples, tmp_path, data):
    from executors.runner import run_training

    plan = plan_for(verdict("lora"), tiny_model, [str(examples / data)], max_steps=15, packing=data == "text.jsonl")
    result = run_training(plan, str(tmp_path / "r"), progress=False, log=lambda m: None)
    assert result.metrics["eval_loss_after"] < result.metrics["eval_loss_before"]
    if data == "multitask.jsonl":
        assert set(result.metrics["data"]["mixture"]["tasks"]) == {"sounds", "numbers", "opposites"}
