"""Prefix tuning executor (method ``prefix_tuning``): trained key/value prefixes in every layer."""

from __future__ import annotations

from ..base import Executor, PlanContext
from ..prompt_tuning import virtual_tokens


class PrefixTuningExecutor(Executor):
    """Prefix tuning (Li & Liang): ``num_virtual_tokens`` trained key/value pairs per layer."""

    method = "prefix_tuning"

    peft_config_class = "PrefixTuningConfig"
    can_merge = False
    supports_gradient_checkpointing = False  # peft raises "PREFIX_TUNING does not work with gradient checkpointing"

    def peft_kwargs(self, verdict: dict, ctx: PlanContext) -> dict:
        """Return the PrefixTuningConfig kwargs (no reparameterisation MLP)."""
        return {"num_virtual_tokens": virtual_tokens(verdict), "prefix_projection": False}


__all__ = ["PrefixTuningExecutor"]
