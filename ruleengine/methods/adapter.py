"""Bottleneck adapters (Houlsby et al. 2019): small down/up projections after attention and the MLP."""

from __future__ import annotations

from typing import Any

from ..trainable import count_adapter
from .spec import CostTerms, MemoryTerms, MethodConfig, MethodSpec


def adapter_layer(arch: Any, group: Any, cfg: MethodConfig, setup: Any, c: Any, dt: Any) -> tuple[float, frozenset[str]]:
    """Return what two bottleneck adapters keep per token and layer: their input and the bottleneck activations."""
    m = cfg.adapter_size or 0
    return 2 * (arch.hidden_size + 2 * m) * c.get("activations", "adapter_per_element") * dt.scale, frozenset()


SPEC = MethodSpec(
    name="adapter", label="bottleneck adapters", order=8,
    summary="Houlsby/Pfeiffer bottleneck adapters (not in peft)",
    hyperparameters=frozenset({"adapter_size"}),
    trainable=count_adapter,
    memory=MemoryTerms(layer=adapter_layer),
    cost=CostTerms(),
    executor="executors.adapter:BottleneckAdapterExecutor",
    colour="#e377c2", defaults={"adapter_size": 64},
)
