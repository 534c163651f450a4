"""IA3 (Liu et al. 2022): learned vectors that rescale keys, values and the feed-forward input."""

from __future__ import annotations

from typing import Any

from ..trainable import count_ia3, resolve_targets
from .spec import CostTerms, MemoryTerms, MethodConfig, MethodSpec


def ia3_layer(arch: Any, cfg: MethodConfig, setup: Any, c: Any, scale: float) -> tuple[float, frozenset[str]]:
    """Return the tensors IA3 keeps per token and layer: each one it scales (the input of feed-forward modules)."""
    a = c.get("activations")
    modules = arch.linear_modules()
    ff = set(arch.feedforward_modules())
    extra = sum((modules[t][0] if t in ff else modules[t][1]) for t in resolve_targets(arch, cfg.method, cfg.target_modules))
    return extra * a["ia3_per_element"] * scale, frozenset()


SPEC = MethodSpec(
    name="ia3", label="IA3", order=5,
    summary="learned rescaling vectors on keys, values and feed-forward inputs",
    hyperparameters=frozenset({"target_modules"}),
    trainable=count_ia3,
    memory=MemoryTerms(layer=ia3_layer),
    cost=CostTerms(),
    executor="executors.ia3:IA3Executor",
    colour="#2ca02c", peft_type="IA3",
)
