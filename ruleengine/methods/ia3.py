"""IA3 (Liu et al. 2022): learned vectors that rescale keys, values and the feed-forward input."""

from __future__ import annotations

from typing import Any

from ..trainable import count_ia3
from .spec import CostTerms, MemoryTerms, MethodConfig, MethodSpec
from .terms import Dtypes, GroupLayout, targets_of


def ia3_layer(arch: Any, group: GroupLayout, cfg: MethodConfig, setup: Any, c: Any,
              dt: Dtypes) -> tuple[float, frozenset[str]]:
    """Return the tensors IA3 keeps per token in one layer: each tensor it scales, for the vector's gradient.

    peft multiplies the layer's output (activation dtype) by the vector, or, for feed-forward modules,
    the layer's input after casting it to the vector's dtype (fp32 by default), keeping that copy.
    """
    ff = set(arch.feedforward_modules())
    extra = 0.0
    for t in targets_of(arch, cfg):
        if t not in group.active:
            continue
        m = group.by_name[t]
        extra += group.active[t] * (m.d_in * dt.adapter if t in ff else m.d_out * dt.act)
    return extra, frozenset()


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
