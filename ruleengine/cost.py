"""Training compute and cost per method: FLOPs, GPU-hours, wall-clock hours and dollars.

FLOPs follow the standard dense-transformer count (Kaplan et al. 2020; Hoffmann et al. 2022):
a forward pass costs 2·N FLOPs per token and a backward pass 4·N (2·N for the input gradients,
2·N for the weight gradients), so full fine-tuning costs 6·N·T. A frozen base skips the weight
gradients: 4·N·T, plus 6 FLOPs per trainable adapter parameter per token. Gradient
checkpointing repeats the forward: +2·N·T. Time = FLOPs / (peak TFLOP/s x MFU), stretched by
QLoRA's dequantization and DoRA's weight-norm slowdowns and by the multi-GPU scaling efficiency.
All constants are the policy's ``cost:`` mapping (policies/default/memory.yaml). No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import methods
from .architecture import Architecture
from .memory import TrainingSetup, merged_section
from .methods import MethodConfig


@dataclass(frozen=True)
class CostConstants:
    """The ``cost:`` constants: FLOPs multipliers, MFU, slowdowns and multi-GPU efficiencies."""

    raw: dict

    @classmethod
    def from_policy(cls, section: dict | None) -> CostConstants:
        """Return the constants of a policy's ``cost:`` mapping, omitted keys taken from the bundled default.

        Raises ValueError when ``mfu`` is not in (0, 1] or a FLOPs multiplier is missing.
        """
        data = merged_section("cost", section)
        mfu = data.get("mfu")
        if isinstance(mfu, bool) or not isinstance(mfu, (int, float)) or not 0 < mfu <= 1:
            raise ValueError(f"cost constant `mfu` must be in (0, 1], got {mfu!r}")
        for key in ("full", "frozen", "recompute", "adapter"):
            if key not in (data.get("flops_per_token") or {}):
                raise ValueError(f"cost constant `flops_per_token.{key}` is missing")
        return cls(data)


@dataclass
class Cost:
    """Compute and cost of one training run."""

    flops: float
    tokens: float  # tokens processed, all epochs, virtual tokens included
    gpu_hours: float
    wall_hours: float
    dollars: float
    mfu: float
    slowdown: float

    def scaled(self, factor: float) -> Cost:
        """Return the cost of ``factor`` times the tokens (compute, hours and dollars are linear in them)."""
        return Cost(flops=self.flops * factor, tokens=self.tokens * factor, gpu_hours=self.gpu_hours * factor,
                    wall_hours=self.wall_hours * factor, dollars=self.dollars * factor, mfu=self.mfu,
                    slowdown=self.slowdown)

    def scaled_dict(self, factor: float) -> dict[str, Any]:
        """Return ``scaled(factor).to_dict()`` without building the intermediate Cost."""
        return {"flops": float(self.flops * factor), "tokens": float(self.tokens * factor),
                "gpu_hours": round(self.gpu_hours * factor, 4), "wall_hours": round(self.wall_hours * factor, 4),
                "dollars": round(self.dollars * factor, 4), "mfu": float(self.mfu), "slowdown": float(self.slowdown)}

    def to_dict(self) -> dict[str, Any]:
        """Return the cost as a JSON-safe dict (hours and dollars rounded to 4 decimals)."""
        return {"flops": float(self.flops), "tokens": float(self.tokens), "gpu_hours": round(self.gpu_hours, 4),
                "wall_hours": round(self.wall_hours, 4), "dollars": round(self.dollars, 4),
                "mfu": float(self.mfu), "slowdown": float(self.slowdown)}


def estimate_cost(arch: Architecture, cfg: MethodConfig, setup: TrainingSetup, *, tokens_total: float,
                  epochs: float, gpu_tflops: float, price_per_hour: float, constants: CostConstants,
                  trainable: int | None = None) -> Cost:
    """Return the FLOPs, GPU-hours, wall-clock hours and dollars of training ``cfg`` on ``tokens_total`` x ``epochs``.

    ``gpu_tflops`` is one GPU's dense peak in the training dtype, ``price_per_hour`` one GPU's price.
    Prompt and prefix tuning process ``num_virtual_tokens`` extra tokens per ``seq_len`` tokens
    (prefix tuning cannot use gradient checkpointing in peft, so it never pays the recompute).
    ``trainable`` is the method's trainable-parameter count when already known (else counted here).
    Raises ValueError for an unknown method, negative tokens/epochs/price or non-positive TFLOP/s.
    """
    spec = methods.get(cfg.method)
    if tokens_total < 0 or epochs < 0 or price_per_hour < 0:
        raise ValueError("tokens_total, epochs and price_per_hour must be >= 0")
    if gpu_tflops <= 0:
        raise ValueError(f"gpu_tflops must be > 0, got {gpu_tflops}")
    setup.validate()
    c = constants.raw
    fpt = c["flops_per_token"]
    n = float(arch.active_params)  # a MoE token passes through its top-k experts only
    tokens = float(tokens_total) * float(epochs)
    extra = spec.cost.extra_tokens(cfg) if spec.cost.extra_tokens is not None else 0
    if extra:
        tokens *= (setup.seq_len + extra) / setup.seq_len
    recompute = setup.gradient_checkpointing and spec.cost.recompute
    if spec.cost.trains_base:
        flops = (fpt["full"] + fpt["recompute"] * recompute) * n * tokens
    else:
        if trainable is None:
            trainable = spec.trainable(arch, cfg)
        flops = (fpt["frozen"] + fpt["recompute"] * recompute) * n * tokens + fpt["adapter"] * trainable * tokens
    slowdown = 1.0
    for key in spec.cost.slowdowns:
        slowdown *= float(c["slowdown"][key])
    if cfg.use_dora and not spec.dora:
        slowdown *= float(c["slowdown"]["dora"])
    efficiency = float(c["multi_gpu_efficiency"][setup.sharding]) if setup.gpu_count > 1 else 1.0
    mfu = float(c["mfu"])
    gpu_seconds = flops / (gpu_tflops * 1e12 * mfu) * slowdown / efficiency
    gpu_hours = gpu_seconds / 3600.0
    return Cost(flops=flops, tokens=tokens, gpu_hours=gpu_hours, wall_hours=gpu_hours / setup.gpu_count,
                dollars=gpu_hours * float(price_per_hour), mfu=mfu, slowdown=slowdown)
