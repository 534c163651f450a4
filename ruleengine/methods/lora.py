"""LoRA (Hu et al. 2021): low-rank updates ``B·A`` on frozen linear layers (peft ``LoraConfig``)."""

from __future__ import annotations

from ..trainable import count_lora
from .spec import CostTerms, MemoryTerms, MethodSpec
from .terms import dora_workspace, lora_layer, lora_layer_fixed

SPEC = MethodSpec(
    name="lora", label="LoRA", order=2,
    summary="low-rank adapters on frozen linear layers",
    hyperparameters=frozenset({"rank", "alpha", "dropout", "target_modules"}),
    trainable=count_lora,
    memory=MemoryTerms(layer=lora_layer, layer_fixed=lora_layer_fixed, workspace=dora_workspace),
    cost=CostTerms(slowdowns=()),
    executor="executors.lora:LoraExecutor",
    colour="#1f77b4", peft_type="LORA",
    defaults={"rank": 16, "alpha_per_rank": 2, "dropout": 0.05},
)
