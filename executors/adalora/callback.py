"""The Trainer callback AdaLoRA needs: rank reallocation after every optimizer step.

peft's AdaLoRA example loop is ``loss.backward(); optimizer.step();
model.base_model.update_and_allocate(step); optimizer.zero_grad()``. The HF Trainer fires
``on_optimizer_step`` between ``optimizer.step()`` and ``zero_grad()``, while the gradients that
the importance scores need are still there. This module imports transformers at import time; the
executor imports it only when training starts.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


class AdaLoraAllocationCallback(TrainerCallback):
    """Calls ``model.base_model.update_and_allocate(global_step)`` after every optimizer step."""

    def __init__(self) -> None:
        self.calls = 0

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Reallocate the rank budget for the step that just ran (``state.global_step`` is 0-based here)."""
        target = model
        while hasattr(target, "module") and not hasattr(target, "base_model"):
            target = target.module  # unwrap DDP/accelerate wrappers
        target.base_model.update_and_allocate(state.global_step)
        self.calls += 1
