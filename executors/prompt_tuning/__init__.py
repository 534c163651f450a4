"""Prompt tuning executor (method ``prompt_tuning``): trained soft-prompt embeddings."""

from __future__ import annotations

from ..base import Executor, PlanContext
from ..errors import positive_int


def virtual_tokens(verdict: dict) -> int:
    """Return the verdict's ``num_virtual_tokens``; raises PlanError when missing or not positive."""
    return positive_int(verdict, "num_virtual_tokens", "plan-bad-virtual-tokens",
                        "set training.num_virtual_tokens in the facts, or --num-virtual-tokens")


class PromptTuningExecutor(Executor):
    """Prompt tuning (Lester et al.): ``num_virtual_tokens`` trained embeddings prepended to the input."""

    method = "prompt_tuning"

    peft_config_class = "PromptTuningConfig"
    can_merge = False

    def peft_kwargs(self, verdict: dict, ctx: PlanContext) -> dict:
        """Return the PromptTuningConfig kwargs (random init of the virtual token embeddings)."""
        return {"num_virtual_tokens": virtual_tokens(verdict), "prompt_tuning_init": "RANDOM"}


__all__ = ["PromptTuningExecutor", "virtual_tokens"]
