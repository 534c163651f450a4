"""Multi-process training on the CPU through the generated launch.sh: FSDP really shards, torchrun works too."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from executors.plan import PlanOptions

pytestmark = [pytest.mark.train, pytest.mark.slow]
CPU = {"type": "cpu", "count": 1, "name": "x86_64", "bf16": False, "fp16": False}


def stage(verdict, tiny_model, examples, tmp_path, sharding):
    """Plan a 2-process CPU run and let `decide train` write its launch files; return the run folder."""
    from executors.plan import build_plan, write_plan
    from ruleengine.cli import main

    plan = build_plan(verdict("lora", training={"gpu_count": 2, "sharding": sharding, "micro_batch_size": 4}),
                      model_path=tiny_model, data_files=[str(examples / "alpaca.jsonl")], device=CPU,
                      options=PlanOptions(max_steps=4, save_steps=2, device="cpu", eval_strategy="no"))
    write_plan(plan, str(tmp_path / "plan.json"))
    out = tmp_path / "run"
    staged = CliRunner().invoke(main, ["train", "--plan", str(tmp_path / "plan.json"), "--output", str(out)])
    assert staged.exit_code == 0, staged.output
    return out


def free_port() -> str:
    """Return a loopback port nobody listens on now (a fixed port collides with a concurrent test run)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def launch(out, *args):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([f"{out}.partial/launch.sh", *args], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((out / "run-manifest.json").read_text())


def test_fsdp_on_two_cpu_processes_shards_parameters_and_checkpoints(verdict, tiny_model, examples, tmp_path):
    out = stage(verdict, tiny_model, examples, tmp_path, "fsdp")
    manifest = launch(out, "--main-process-port", free_port())
    dist = manifest["distributed"]
    assert dist["world_size"] == 2 and dist["fsdp"] is True and dist["distributed_type"] == "FSDP"
    ranks = sorted(dist["ranks"], key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    total = ranks[0]["params_total"]
    for r in ranks:  # every process holds a shard of every parameter, not a replica
        assert r["dtensor_params"] > 0 and r["params_local"] < total
    assert sum(r["params_local"] for r in ranks) == total
    ckpt = out / "checkpoints" / "checkpoint-4"
    assert sorted(os.listdir(ckpt / "pytorch_model_fsdp_0")) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (ckpt / "adapter_model.safetensors").exists()
    # the final adapter is gathered into one plain peft adapter
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(out / "adapter"))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == manifest["trainable_params"]["peft"]
    assert manifest["steps"] == 4


def test_torchrun_launch_trains_ddp_on_two_cpu_processes(verdict, tiny_model, examples, tmp_path):
    out = stage(verdict, tiny_model, examples, tmp_path, "none")
    manifest = launch(out, "--launcher", "torchrun", "--main-process-port", free_port())
    dist = manifest["distributed"]
    assert dist["world_size"] == 2 and dist["fsdp"] is False and dist["distributed_type"] == "MULTI_CPU"
    assert all(r["params_local"] == r["params_total"] and r["dtensor_params"] == 0 for r in dist["ranks"])
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and manifest["steps"] == 4
