"""DoRA (Liu et al. 2024): LoRA on the weight's direction plus a trained magnitude per output feature."""

from __future__ import annotations

from functools import partial

from ..trainable import count_lora
from .spec import CostTerms, MemoryTerms, MethodSpec
from .terms import dora_workspace, lora_layer

SPEC = MethodSpec(
    name="dora", label="DoRA", order=4,
    summary="weight-decomposed LoRA (direction + magnitude)",
    hyperparameters=frozenset({"rank", "alpha", "dropout", "target_modules"}),
    trainable=partial(count_lora, dora=True),
    memory=MemoryTerms(layer=partial(lora_layer, dora=True), workspace=partial(dora_workspace, dora=True)),
    cost=CostTerms(slowdowns=("dora",)),
    executor="executors.dora:DoraExecutor",
    colour="#9467bd", peft_type="LORA",
    defaults={"rank": 16, "alpha_per_rank": 2, "dropout": 0.05}, dora=True,
)
