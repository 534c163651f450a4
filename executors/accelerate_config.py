"""Multi-GPU launch configs: an ``accelerate`` config (DDP, FSDP2, or DeepSpeed ZeRO) for a plan.

The executors do not implement distributed training: for a plan with ``gpu_count > 1``,
``decide train`` writes ``accelerate_config.yaml`` into the run directory and prints the
``accelerate launch`` command; under it, the HF Trainer in ``executors.runner`` does the
distributed work (DDP, FSDP or DeepSpeed, from the config's environment).
"""

from __future__ import annotations

import os
import shlex
from typing import Any

MIXED = {"bf16_mixed": "bf16", "bf16_pure": "bf16", "fp16_mixed": "fp16", "fp32": "no"}


def accelerate_config(plan: dict) -> dict[str, Any]:
    """Return the accelerate config (as a dict) for a multi-GPU plan.

    ``fsdp`` -> FSDP2 with transformer-layer wrapping; ``zero2``/``zero3`` -> DeepSpeed;
    ``zero3_offload`` -> ZeRO-3 with optimizer and parameters offloaded to the CPU; ``none`` -> DDP.
    Raises ValueError for a single-GPU plan.
    """
    dist = plan["distributed"]
    if dist["gpu_count"] <= 1:
        raise ValueError("a single-GPU plan needs no accelerate config")
    precision = plan["training"]["precision"]
    # the plan was made where the run will be launched from; a CPU-made plan keeps the verdict's precision
    wanted = precision["used"] if plan["device"]["type"] == "cuda" else precision["requested"]
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": dist["gpu_count"],
        "gpu_ids": "all",
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "mixed_precision": MIXED.get(wanted, "no"),
        "use_cpu": False,
        "downcast_bf16": "no",
    }
    strategy = dist["strategy"]
    if strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": ",".join(dist.get("fsdp_wrap_modules") or []) or None,
            "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_offload_params": False,
            "fsdp_activation_checkpointing": bool(plan["training"]["gradient_checkpointing"]),
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
        config["distributed_type"] = "MULTI_GPU"
    return config


def write_accelerate_config(plan: dict, run_dir: str) -> str:
    """Write ``accelerate_config.yaml`` for ``plan`` into ``run_dir``; returns its path. Raises OSError."""
    import yaml

    path = os.path.join(run_dir, "accelerate_config.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("# written by `decide train` for a multi-GPU plan; launch with the command in launch.sh\n")
        yaml.safe_dump(accelerate_config(plan), fh, sort_keys=False)
    return path


def launch_command(config_path: str, output: str) -> str:
    """Return the ``accelerate launch`` command line that trains the staged plan of ``output``."""
    parts = ["accelerate", "launch", "--config_file", config_path, "-m", "executors.runner", "--output", output,
             "--launched"]
    return " ".join(shlex.quote(p) for p in parts)


def extra_requirements(plan: dict) -> list[str]:
    """Return the packages the launch needs beyond the training extra (``deepspeed`` for ZeRO plans)."""
    return ["deepspeed"] if plan["distributed"]["strategy"].startswith("deepspeed") else []

