"""Full fine-tuning: every parameter trains (gradients, master weights and optimizer states for all)."""

from __future__ import annotations

from ..trainable import count_full
from .spec import CostTerms, MemoryTerms, MethodSpec

SPEC = MethodSpec(
    name="full_ft", label="full fine-tuning", order=1,
    summary="all weights train",
    hyperparameters=frozenset(),
    trainable=count_full,
    memory=MemoryTerms(trains_base=True),
    cost=CostTerms(trains_base=True),
    executor="executors.full_ft:FullFineTuneExecutor",
    colour="#d62728",
)
