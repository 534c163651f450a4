"""Atomic outputs and resume: kill -9 a real `decide train`, resume it, and the refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from executors.plan import PlanOptions

pytestmark = pytest.mark.train
CPU = {"type": "cpu", "count": 1, "name": "x86_64", "bf16": False, "fp16": False}


def decide_executable() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "decide")
    if os.path.exists(exe):
        return [exe]
    return [sys.executable, "-c", "from ruleengine.cli import main; main()"]


def write_plan(verdict, tiny_model, data, path, **options):
    from executors.plan import build_plan, write_plan

    plan = build_plan(verdict, model_path=tiny_model, data_files=data, device=CPU,
                      options=PlanOptions(**{"eval_fraction": 0.1, **options}))
    write_plan(plan, str(path))
    return plan


def complete_checkpoint(staging):
    from executors.runner import checkpoint_complete

    ckpts = os.path.join(staging, "checkpoints")
    if not os.path.isdir(ckpts):
        return None
    for name in os.listdir(ckpts):
        if name.startswith("checkpoint-") and checkpoint_complete(os.path.join(ckpts, name)):
            return name
    return None


def test_kill_and_resume(tiny_model, verdict, examples, tmp_path):
    from ruleengine.cli import main

    data = tmp_path / "train.jsonl"
    shutil.copy(examples / "alpaca.jsonl", data)
    plan = write_plan(verdict("lora"), tiny_model, [str(data)], tmp_path / "plan.json", max_steps=40, save_steps=1)
    out = tmp_path / "run"
    staging = f"{out}.partial"
    proc = subprocess.Popen([*decide_executable(), "train", "--plan", str(tmp_path / "plan.json"), "--output",
                             str(out), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while complete_checkpoint(staging) is None:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # an interrupted run never looks complete
    assert not out.exists()
    assert os.path.isdir(staging) and not os.path.exists(os.path.join(staging, "COMPLETE"))

    # without --resume the interrupted run is protected
    refused = CliRunner().invoke(main, ["train", "--plan", str(tmp_path / "plan.json"), "--output", str(out)])
    assert refused.exit_code == 2 and "pass --resume" in refused.output

    result = CliRunner().invoke(main, ["train", "--output", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output and "run complete" in result.output
    assert (out / "COMPLETE").is_file() and not os.path.exists(staging)
    manifest = json.loads((out / "run-manifest.json").read_text())
    assert manifest["resumed_from"] and manifest["resumed_from"][0].startswith("checkpoint-")
    assert int(manifest["resumed_from"][0].split("-")[1]) >= 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 40
    assert [p["step"] for p in metrics["loss_curve"]] == list(range(1, 41))  # history survives the resume
    assert metrics["eval_loss_before"] is not None and metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert plan["plan_sha256"] == manifest["plan_sha256"]

    again = CliRunner().invoke(main, ["train", "--output", str(out), "--resume"])
    assert again.exit_code == 0 and "is complete" in again.output


def staged(verdict, tiny_model, examples, tmp_path, **options):
    """Return (plan, output) with a staged, never-trained run (what a kill before step 1 leaves)."""
    from executors.runner import prepare_run_dir

    data = tmp_path / "train.jsonl"
    shutil.copy(examples / "alpaca.jsonl", data)
    plan = write_plan(verdict("lora"), tiny_model, [str(data)], tmp_path / "plan.json", max_steps=3, **options)
    out = tmp_path / "run"
    prepare_run_dir(plan, str(out), resume=False, overwrite=False)
    return plan, out, data


def test_resume_refuses_when_data_changed(tiny_model, verdict, examples, tmp_path):
    from ruleengine.cli import main

    _plan, out, data = staged(verdict, tiny_model, examples, tmp_path)
    with data.open("a") as fh:
        fh.write('{"instruction": "new", "output": "row"}\n')
    result = CliRunner().invoke(main, ["train", "--output", str(out), "--resume"])
    assert result.exit_code == 2
    assert f"error[run-data-changed]: data file {data} changed since the plan was made" in result.output
    assert not out.exists()


def test_resume_refuses_a_different_plan(tiny_model, verdict, examples, tmp_path):
    from executors.plan import build_plan
    from executors.plan import write_plan as write
    from ruleengine.cli import main

    plan, out, data = staged(verdict, tiny_model, examples, tmp_path)
    other = build_plan(verdict("lora", rank=4), model_path=tiny_model, data_files=[str(data)], device=CPU,
                       options=PlanOptions(max_steps=3))
    write(other, str(tmp_path / "other.json"))
    result = CliRunner().invoke(main, ["train", "--plan", str(tmp_path / "other.json"), "--output", str(out),
                                                "--resume"])
    assert result.exit_code == 2 and "run-plan-changed" in result.output
    same = CliRunner().invoke(main, ["train", "--plan", str(tmp_path / "plan.json"), "--output", str(out),
                                              "--resume", "--no-progress"])
    assert same.exit_code == 0, same.output


def test_resume_with_nothing_to_resume(tmp_path):
    from ruleengine.cli import main

    result = CliRunner().invoke(main, ["train", "--output", str(tmp_path / "none"), "--resume"])
    assert result.exit_code == 2 and "nothing to resume" in result.output


def test_complete_output_is_not_overwritten(tiny_model, verdict, examples, tmp_path):
    from ruleengine.cli import main

    write_plan(verdict("ia3"), tiny_model, [str(examples / "alpaca.jsonl")], tmp_path / "p.json", max_steps=2)
    args = ["--plan", str(tmp_path / "p.json"), "--output", str(tmp_path / "r"), "--no-progress"]
    assert CliRunner().invoke(main, ["train", *args]).exit_code == 0
    second = CliRunner().invoke(main, ["train", *args])
    assert second.exit_code == 2 and "already holds a complete run" in second.output
    assert CliRunner().invoke(main, ["train", *args, "--overwrite"]).exit_code == 0


def test_incomplete_checkpoints_are_discarded(tmp_path):
    from executors.runner import last_checkpoint

    ckpts = tmp_path / "checkpoints"
    for step, complete in ((2, True), (3, False)):
        d = ckpts / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (d / "trainer_state.json").write_text("{}")
        else:
            (d / "trainer_state.json").write_text('{"global_')
    assert last_checkpoint(str(ckpts), log=lambda m: None) == str(ckpts / "checkpoint-2")
    assert not (ckpts / "checkpoint-3").exists()


def test_multi_gpu_plan_writes_accelerate_config_and_prints_the_command(tiny_model, verdict, examples, tmp_path):
    from ruleengine.cli import main

    write_plan(verdict("lora", training={"gpu_count": 2, "sharding": "zero3_offload"}), tiny_model,
               [str(examples / "alpaca.jsonl")], tmp_path / "p.json", max_steps=2, device="cpu")
    result = CliRunner().invoke(main, ["train", "--plan", str(tmp_path / "p.json"), "--output", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    staging = tmp_path / "r.partial"
    config = (staging / "accelerate_config.yaml").read_text()
    assert "distributed_type: DEEPSPEED" in config and "offload_param_device: cpu" in config
    assert "use_cpu: true" in config and "mixed_precision: 'no'" in config  # the plan's target: CPU processes
    assert f"accelerate launch --config_file {staging}/accelerate_config.yaml -m executors.runner" in result.output
    assert "pip install deepspeed" in result.output
    script = staging / "launch.sh"
    assert os.access(script, os.X_OK) and "--launcher torchrun" in result.output
    text = script.read_text()
    assert "--num_machines \"$NUM_MACHINES\" --machine_rank \"$MACHINE_RANK\" --main_process_ip" in text
    assert "-m torch.distributed.run --nnodes \"$NUM_MACHINES\" --node_rank \"$MACHINE_RANK\"" in text
    assert not (tmp_path / "r").exists()  # nothing was trained here

    # what every rank runs under a launcher (here a single process, no distributed env)
    from executors.runner import main as launched_main

    assert launched_main(["--output", str(tmp_path / "r"), "--launched"]) == 0
    assert (tmp_path / "r" / "COMPLETE").is_file() and not staging.exists()


def test_a_cuda_plan_is_refused_on_a_machine_without_cuda(tiny_model, verdict, examples, tmp_path, capsys):
    from executors.runner import main as launched_main
    from ruleengine.cli import main

    write_plan(verdict("lora", training={"gpu_count": 2, "sharding": "fsdp"}), tiny_model,
               [str(examples / "alpaca.jsonl")], tmp_path / "p.json", max_steps=2)
    staged = CliRunner().invoke(main, ["train", "--plan", str(tmp_path / "p.json"), "--output", str(tmp_path / "r")])
    assert staged.exit_code == 0 and "launch.sh" in staged.output
    assert launched_main(["--output", str(tmp_path / "r"), "--launched"]) == 2
    assert "run-no-cuda" in capsys.readouterr().err


def test_overwrite_only_replaces_a_previous_run(tiny_model, verdict, examples, tmp_path):
    from ruleengine.cli import main

    write_plan(verdict("ia3"), tiny_model, [str(examples / "alpaca.jsonl")], tmp_path / "p.json", max_steps=1)
    args = ["--plan", str(tmp_path / "p.json"), "--no-progress", "--overwrite"]
    # a folder of the user's: refused, nothing deleted
    mine = tmp_path / "my-files"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = CliRunner().invoke(main, ["train", *args, "--output", str(mine)])
    assert refused.exit_code == 2 and "error[run-not-a-run]" in refused.output and "nothing was deleted" in refused.output
    assert (mine / "notes.txt").read_text() == "keep me"
    # a file, or a folder that only pretends to be a run (a COMPLETE file but no plan and run state)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "COMPLETE").write_text("{}")
    (fake / "data.bin").write_text("x")
    assert CliRunner().invoke(main, ["train", *args, "--output", str(fake)]).exit_code == 2
    assert (fake / "data.bin").exists()
    # a user's folder where the staging directory would go
    (tmp_path / "r2.partial").mkdir()
    (tmp_path / "r2.partial" / "x").write_text("x")
    clash = CliRunner().invoke(main, ["train", *args, "--output", str(tmp_path / "r2")])
    assert clash.exit_code == 2 and "run-staging-not-a-run" in clash.output and (tmp_path / "r2.partial" / "x").exists()
    # a previous run is replaced; an empty folder is used as is
    run = tmp_path / "run"
    assert CliRunner().invoke(main, ["train", *args, "--output", str(run)]).exit_code == 0
    first = json.loads((run / "run-manifest.json").read_text())["finished_at"]
    time.sleep(1.1)
    again = CliRunner().invoke(main, ["train", *args, "--output", str(run)])
    assert again.exit_code == 0 and json.loads((run / "run-manifest.json").read_text())["finished_at"] != first
    (tmp_path / "empty").mkdir()
    assert CliRunner().invoke(main, ["train", *args, "--output", str(tmp_path / "empty")]).exit_code == 0


class Interrupted(Exception):
    """Stands for a kill: raised from inside the training loop."""


@pytest.mark.parametrize("method", ["full_ft", "lora", "qlora", "dora", "adalora", "ia3", "prompt_tuning",
                                    "prefix_tuning"])
def test_every_method_resumes_exactly(method, tiny_model, verdict, examples, tmp_path, monkeypatch):
    """Interrupted after a checkpoint and resumed, a run ends with the same weights as an uninterrupted one,
    and its manifest sums both processes."""
    import torch
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    import executors.runner as runner
    from executors.plan import build_plan

    v = verdict(method, training={"micro_batch_size": 4})
    plan = build_plan(v, model_path=tiny_model, data_files=[str(examples / "alpaca.jsonl")], device=CPU,
                      options=PlanOptions(max_steps=6, save_steps=3, eval_fraction=0.1, eval_strategy="no"))
    whole = runner.run_training(plan, str(tmp_path / "whole"), progress=False, log=lambda m: None)

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:  # after checkpoint-3 was written
                raise Interrupted()

    original = runner._callbacks
    monkeypatch.setattr(runner, "_callbacks", lambda recipe: [*original(recipe), Kill()])
    with pytest.raises(Interrupted):
        runner.run_training(plan, str(tmp_path / "cut"), progress=False, log=lambda m: None)
    monkeypatch.setattr(runner, "_callbacks", original)
    resumed = runner.run_training(None, str(tmp_path / "cut"), resume=True, progress=False, log=lambda m: None)

    name = "model.safetensors" if method == "full_ft" else "adapter_model.safetensors"
    a = load_file(str(tmp_path / "whole" / plan["artifact_dir"] / name))
    b = load_file(str(tmp_path / "cut" / plan["artifact_dir"] / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), method
    assert resumed.metrics["loss_curve"] == whole.metrics["loss_curve"]
    m = resumed.manifest
    assert m["processes"] == 2 and m["resumed_from"] == ["checkpoint-3"]
    segments = json.loads((tmp_path / "cut" / "run-state.json").read_text())["segments"]
    assert m["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in segments))
    assert m["time_per_step"]["steps_timed"] >= 5 and segments[1]["start_step"] == 3
    assert m["metrics"]["train_loss"] == pytest.approx(whole.manifest["metrics"]["train_loss"])


def test_a_plan_without_data_is_refused_before_anything_is_written(tiny_model, verdict, tmp_path):
    from ruleengine.cli import main

    write_plan(verdict("lora"), tiny_model, None, tmp_path / "p.json", max_steps=2)
    result = CliRunner().invoke(main, ["train", "--plan", str(tmp_path / "p.json"), "--output", str(tmp_path / "r")])
    assert result.exit_code == 2 and "run-no-data" in result.output
    assert not (tmp_path / "r.partial").exists()
