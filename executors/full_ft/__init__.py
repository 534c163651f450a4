"""Full fine-tuning executor (method ``full_ft``): every weight trains, no peft."""

from __future__ import annotations

import os
from typing import Any

from ..base import Executor, PlanContext, enable_activation_checkpointing
from ..errors import Diagnostic, Location


class FullFineTuneExecutor(Executor):
    """Full fine-tuning: all parameters train; the artifact is the whole model (``model/``)."""

    method = "full_ft"

    can_quantize = False
    can_merge = False  # the artifact is already the whole model
    artifact_dir = "model"

    def check(self, ctx: PlanContext) -> list[Diagnostic]:
        """Return a warning when --merge is given: a fully fine-tuned model has nothing to merge."""
        if ctx.merge:
            return [Diagnostic("plan-merge-noop", "full fine-tuning writes the whole model; --merge has no effect",
                               Location("--merge"), severity="warning")]
        return []

    def wrap(self, model: Any, plan: dict) -> Any:
        """Return ``model`` with every parameter trainable (and gradient checkpointing when planned)."""
        if plan["training"]["gradient_checkpointing"]:
            enable_activation_checkpointing(model)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def load_trained(self, output_dir: str, plan: dict) -> Any:
        """Return the fine-tuned model reloaded from ``output_dir/model``, in eval mode.

        Raises FileNotFoundError when it is missing.
        """
        from transformers import AutoModelForCausalLM

        from ..modeling import torch_dtype

        path = os.path.join(output_dir, self.artifact_dir)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no trained model at {path}")
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(plan["model"]["dtype"])).eval()


__all__ = ["FullFineTuneExecutor"]
