"""AdaLoRA (Zhang et al. 2023): SVD-form LoRA whose rank budget is reallocated during training."""

from __future__ import annotations

from functools import partial

from ..trainable import count_lora
from .spec import CostTerms, MemoryTerms, MethodSpec
from .terms import lora_layer


def allocator_states(trainable: int, c: object) -> float:
    """Return the RankAllocator's fp32 importance copies (ipt, exp_avg_ipt, exp_avg_unc) for every parameter."""
    return float(trainable * c.get("adalora", "allocator_copies") * 4)  # type: ignore[attr-defined]


SPEC = MethodSpec(
    name="adalora", label="AdaLoRA", order=9,
    summary="adaptive-rank LoRA (SVD form, pruned to a budget)",
    hyperparameters=frozenset({"rank", "alpha", "dropout", "target_modules", "init_rank"}),
    trainable=partial(count_lora, singular_values=True),
    memory=MemoryTerms(layer=lora_layer, optimizer_extra=allocator_states),
    cost=CostTerms(),
    executor="executors.adalora:AdaLoraExecutor",
    colour="#ff7f0e", peft_type="ADALORA",
    defaults={"rank": 16, "alpha_per_rank": 2, "dropout": 0.05, "init_rank_floor": 12},
)
