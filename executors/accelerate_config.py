"""Multi-GPU launch files: an ``accelerate`` config (DDP, FSDP2, DeepSpeed ZeRO) and ``launch.sh`` for a plan.

The executors do not implement distributed training: for a plan with ``gpu_count > 1``,
``decide train`` writes ``accelerate_config.yaml`` and ``launch.sh`` into the run directory and
prints the ``accelerate launch`` command; under it (or under ``torchrun``), the HF Trainer in
``executors.runner`` does the distributed work. Both files and the Trainer's own settings come from
the plan's target device and strategy (:func:`fsdp_settings`, :func:`deepspeed_config`), so the
launcher's environment and the Trainer never disagree: a CPU target gets ``use_cpu`` and no mixed
precision, a CUDA target the plan's precision. ``launch.sh`` takes ``--num-machines``,
``--machine-rank``, ``--main-process-ip``/``--main-process-port`` for multi-node runs (every
machine runs it with its own rank; the run directory must be on storage all machines share) and
``--launcher torchrun`` to use ``torch.distributed.run`` instead of accelerate.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

MIXED = {"bf16_mixed": "bf16", "bf16_pure": "bf16", "fp16_mixed": "fp16", "fp32": "no"}


def fsdp_settings(plan: dict) -> dict[str, Any]:
    """Return the FSDP settings of a plan as TrainingArguments' ``fsdp_config`` (FSDP2, layer wrapping, sharded).

    Activation checkpointing is left to the model (the executors enable it when the plan says so),
    so FSDP's own is off; checkpoints are sharded (``SHARDED_STATE_DICT``), the final artifact is
    gathered to a full state dict when the run saves it.
    """
    dist = plan["distributed"]
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": list(dist.get("fsdp_wrap_modules") or []),
        "reshard_after_forward": True,
        "state_dict_type": "SHARDED_STATE_DICT",
        "cpu_ram_efficient_loading": False,
        "offload_params": False,
        "activation_checkpointing": False,
    }


def deepspeed_config(plan: dict) -> dict[str, Any]:
    """Return the DeepSpeed ZeRO config of a plan (TrainingArguments' ``deepspeed``; "auto" lets the Trainer fill in)."""
    strategy = plan["distributed"]["strategy"]
    stage = 2 if strategy == "deepspeed_zero2" else 3
    offload = strategy == "deepspeed_zero3_offload"
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {"zero_optimization": zero, "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto"}


def accelerate_config(plan: dict) -> dict[str, Any]:
    """Return the accelerate config (as a dict) for a multi-GPU plan.

    ``fsdp`` -> FSDP2 with transformer-layer wrapping; ``zero2``/``zero3`` -> DeepSpeed;
    ``zero3_offload`` -> ZeRO-3 with optimizer and parameters offloaded to the CPU; ``none`` -> DDP.
    ``use_cpu`` and ``mixed_precision`` follow the plan's target device. Raises ValueError for a
    single-GPU plan.
    """
    dist = plan["distributed"]
    if dist["gpu_count"] <= 1:
        raise ValueError("a single-GPU plan needs no accelerate config")
    on_cpu = plan["device"]["type"] == "cpu"
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": int(dist.get("processes") or dist["gpu_count"]),
        "gpu_ids": "all",
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "mixed_precision": "no" if on_cpu else MIXED.get(plan["training"]["precision"]["used"], "no"),
        "use_cpu": on_cpu,
        "downcast_bf16": "no",
    }
    strategy = dist["strategy"]
    if strategy == "fsdp":
        settings = fsdp_settings(plan)
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": settings["auto_wrap_policy"],
            "fsdp_transformer_layer_cls_to_wrap": ",".join(settings["transformer_layer_cls_to_wrap"]) or None,
            "fsdp_reshard_after_forward": settings["reshard_after_forward"],
            "fsdp_state_dict_type": settings["state_dict_type"],
            "fsdp_cpu_ram_efficient_loading": settings["cpu_ram_efficient_loading"],
            "fsdp_offload_params": settings["offload_params"],
            "fsdp_activation_checkpointing": settings["activation_checkpointing"],
        }
    elif strategy.startswith("deepspeed"):
        stage = 2 if strategy == "deepspeed_zero2" else 3
        offload = "cpu" if strategy == "deepspeed_zero3_offload" else "none"
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "zero_stage": stage,
            "offload_optimizer_device": offload,
            "offload_param_device": offload if stage == 3 else "none",
            "zero3_init_flag": stage == 3,
            "zero3_save_16bit_model": stage == 3,
            "gradient_accumulation_steps": plan["training"]["gradient_accumulation_steps"],
            "gradient_clipping": plan["training"]["max_grad_norm"],
        }
    else:
        config["distributed_type"] = "MULTI_CPU" if on_cpu else "MULTI_GPU"
    return config


def write_accelerate_config(plan: dict, run_dir: str) -> str:
    """Write ``accelerate_config.yaml`` for ``plan`` into ``run_dir``; returns its path. Raises OSError."""
    import yaml

    path = os.path.join(run_dir, "accelerate_config.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("# written by `decide train` for a multi-GPU plan; launch with launch.sh (accelerate or torchrun)\n")
        yaml.safe_dump(accelerate_config(plan), fh, sort_keys=False)
    return path


def launch_command(config_path: str, output: str) -> str:
    """Return the single-machine ``accelerate launch`` command line that trains the staged plan of ``output``."""
    parts = ["accelerate", "launch", "--config_file", config_path, "-m", "executors.runner", "--output", output,
             "--launched"]
    return " ".join(shlex.quote(p) for p in parts)


LAUNCH_SCRIPT = """#!/usr/bin/env bash
# Written by `decide train` for a multi-GPU plan. Run it on every machine of the run (the run
# directory must be on storage they all share):
#   launch.sh [--launcher accelerate|torchrun] [--num-machines N] [--machine-rank R]
#             [--main-process-ip IP] [--main-process-port PORT] [--processes-per-machine P]
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
PYTHON="${{PYTHON:-{python}}}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
LAUNCHER=accelerate
NUM_MACHINES=1
MACHINE_RANK=0
MAIN_IP=127.0.0.1
MAIN_PORT=29500
PER_MACHINE={processes}
while [ $# -gt 0 ]; do
  case "$1" in
    --launcher) LAUNCHER="$2"; shift 2 ;;
    --num-machines) NUM_MACHINES="$2"; shift 2 ;;
    --machine-rank) MACHINE_RANK="$2"; shift 2 ;;
    --main-process-ip) MAIN_IP="$2"; shift 2 ;;
    --main-process-port) MAIN_PORT="$2"; shift 2 ;;
    --processes-per-machine) PER_MACHINE="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "launch.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
OUTPUT={output}
case "$LAUNCHER" in
  accelerate)
    exec "$PYTHON" -m accelerate.commands.launch --config_file "$HERE/accelerate_config.yaml" \\
      --num_machines "$NUM_MACHINES" --machine_rank "$MACHINE_RANK" --main_process_ip "$MAIN_IP" \\
      --main_process_port "$MAIN_PORT" --num_processes "$((NUM_MACHINES * PER_MACHINE))" \\
      -m executors.runner --output "$OUTPUT" --launched ;;
  torchrun)
    exec "$PYTHON" -m torch.distributed.run --nnodes "$NUM_MACHINES" --node_rank "$MACHINE_RANK" \\
      --master_addr "$MAIN_IP" --master_port "$MAIN_PORT" --nproc_per_node "$PER_MACHINE" \\
      -m executors.runner --output "$OUTPUT" --launched ;;
  *) echo "launch.sh: --launcher must be accelerate or torchrun" >&2; exit 2 ;;
esac
"""


def write_launch_script(plan: dict, run_dir: str, output: str) -> str:
    """Write the executable ``launch.sh`` (accelerate or torchrun, one or several machines); returns its path."""
    dist = plan["distributed"]
    path = os.path.join(run_dir, "launch.sh")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(LAUNCH_SCRIPT.format(python=shlex.quote(sys.executable), output=shlex.quote(output),
                                      processes=int(dist.get("processes") or dist["gpu_count"])))
    os.chmod(path, 0o755)
    return path


def extra_requirements(plan: dict) -> list[str]:
    """Return the packages the launch needs beyond the training extra (``deepspeed`` for ZeRO plans)."""
    return ["deepspeed"] if plan["distributed"]["strategy"].startswith("deepspeed") else []
