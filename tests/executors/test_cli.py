"""`decide plan`, `decide train` and `decide make-tiny-model` through click's CliRunner."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from ruleengine.cli import main


def test_plan_refuses_bad_data_with_file_and_line(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"instruction": "hi", "output": "there"}\n{"instruction": "hi", "output": ""}\n')
    result = CliRunner().invoke(main, ["plan", "--model", str(tmp_path), "--data", str(bad), "-o",
                                               str(tmp_path / "plan.json")])
    assert result.exit_code == 2
    assert f"{bad}:2:1: error[data-empty-field]: `output` is empty or not a string" in result.output
    assert not (tmp_path / "plan.json").exists()


def test_train_refuses_bad_data_and_trains_nothing(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"text": "a"}\n{"messages": [{"role": "user", "content": "q"}]}\n')
    result = CliRunner().invoke(main, ["train", "--model", str(tmp_path), "--data", str(bad), "--output",
                                                str(tmp_path / "run")])
    assert result.exit_code == 2
    assert f"{bad}:2:1: error[data-mixed-formats]" in result.output
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(f"{tmp_path / 'run'}.partial")


def test_plan_needs_a_model():
    result = CliRunner().invoke(main, ["plan", ])
    assert result.exit_code == 2 and "--model is required" in result.output


def test_train_argument_errors(tmp_path):
    both = CliRunner().invoke(main, ["train", "--plan", "p.json", "--model", "m", "--output", str(tmp_path / "o")])
    assert both.exit_code == 2 and "either --plan or --facts/--model/--data" in both.output
    nothing = CliRunner().invoke(main, ["train", "--output", str(tmp_path / "o")])
    assert nothing.exit_code == 2 and "nothing to train" in nothing.output
    missing = CliRunner().invoke(main, ["train", "--plan", str(tmp_path / "nope.json"), "--output", str(tmp_path)])
    assert missing.exit_code == 2 and "no plan at" in missing.output


@pytest.mark.train
def test_make_tiny_model(tmp_path, examples):
    result = CliRunner().invoke(main, ["make-tiny-model", str(tmp_path / "tiny"), "--vocab-size", "300", "--layers", "1",
                                                     "--corpus", str(examples / "text.jsonl")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["vocab_size"] == 300
    assert (tmp_path / "tiny" / "tokenizer.json").is_file() and (tmp_path / "tiny" / "model.safetensors").is_file()
    bad = CliRunner().invoke(main, ["make-tiny-model", str(tmp_path / "t2"), "--heads", "3"])
    assert bad.exit_code == 2 and "num_heads must divide hidden_size" in bad.output


@pytest.mark.train
def test_plan_from_facts_records_the_decision(engine, tiny_model, examples, tmp_path):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", "--facts", str(examples.parent / "job.yaml"), "--model", tiny_model,
                                               "--data", str(examples / "alpaca.jsonl"), "-o", str(out),
                                               "--no-audit"])
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    d = plan["decision"]
    assert len(d["decision_id"]) == 26 and len(d["policy"]["sha256"]) == 64
    assert d["facts_filled"]["model.config"] == os.path.join(tiny_model, "config.json")
    assert d["facts_filled"]["data.examples"] == 140
    assert plan["override"] is None and plan["method"] == d["policy_verdict"]["method"]
    assert plan["trainable_params"]["estimate"] == plan["trainable_params"]["peft"]
    assert plan["trainable_params"]["match"] is True
    assert "trainable parameters" in result.output


@pytest.mark.train
@pytest.mark.parametrize("method", ["full_ft", "lora", "qlora", "dora", "adalora", "ia3", "prompt_tuning",
                                    "prefix_tuning"])
def test_method_override_and_the_decisions_trainable_estimate(engine, tiny_model, examples, tmp_path, method):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", "--facts", str(examples.parent / "job.yaml"), "--model", tiny_model,
                                               "--data", str(examples / "multitask.jsonl"), "--method", method,
                                               "-o", str(out), "--no-audit"])
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    assert plan["method"] == method
    if plan["override"] is not None:
        assert plan["override"] == {"method": method, "policy_method": plan["decision"]["policy_verdict"]["method"]}
    tp = plan["trainable_params"]
    assert tp["peft"] == tp["estimate"], f"{method}: peft counts {tp['peft']}, the decision estimated {tp['estimate']}"
    assert plan["data"]["multitask"]["mixture"]


@pytest.mark.train
def test_adapter_override_is_refused(engine, tiny_model, examples, tmp_path):
    result = CliRunner().invoke(main, ["plan", "--facts", str(examples.parent / "job.yaml"), "--model", tiny_model,
                                               "--data", str(examples / "alpaca.jsonl"), "--method", "adapter",
                                               "--no-audit"])
    assert result.exit_code == 2
    assert "--method: error[plan-method-unsupported]: adapter: not supported here:" in result.output


@pytest.mark.train
def test_train_from_facts(engine, tiny_model, examples, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--facts", str(examples.parent / "job.yaml"), "--model", tiny_model,
                                                "--data", str(examples / "alpaca.jsonl"), "--method", "lora",
                                                "--max-steps", "6", "--learning-rate", "0.02", "--output", str(out),
                                                "--no-audit", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "run complete" in result.output and "eval loss" in result.output
    # the plan's warnings are printed before training (the CPU runs the facts' bf16 in fp32)
    assert "warning[plan-downgraded]: requested bf16_mixed, but training runs on the CPU" in result.output
    assert "pictures: loss_curve.png, memory.png" in result.output
    manifest = json.loads((out / "run-manifest.json").read_text())
    assert manifest["decision_id"] and manifest["policy_sha256"] and manifest["memory"]["decision_estimate_gib"]
    assert manifest["override"]["method"] == "lora" or manifest["plan"]["decision"]["policy_verdict"]["method"] == "lora"
    m = manifest["metrics"]
    assert m["eval_loss_after"] < m["eval_loss_before"]


@pytest.mark.train
def test_train_from_a_plan_prints_its_warnings(tiny_model, verdict, examples, tmp_path):
    from executors.plan import PlanOptions, build_plan, write_plan

    plan = build_plan(verdict("prefix_tuning"), model_path=tiny_model, data_files=[str(examples / "alpaca.jsonl")],
                      options=PlanOptions(max_steps=1, eval_fraction=0.0),
                      device={"type": "cpu", "count": 1, "name": "x86_64", "bf16": False, "fp16": False})
    write_plan(plan, str(tmp_path / "p.json"))
    result = CliRunner().invoke(main, ["train", "--plan", str(tmp_path / "p.json"), "--output", str(tmp_path / "r"),
                                                "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning[plan-gradient-checkpointing-off]: peft does not support gradient checkpointing" in result.output
    assert result.output.index("warning[") < result.output.index("run complete")
