"""AdaLoRA: LoRA whose rank budget is reallocated during training (peft ``AdaLoraConfig``)."""

from __future__ import annotations

import os
from typing import Any

from ..base import PlanContext, resolve_target_modules
from ..errors import Diagnostic, Location, PlanError
from ..lora.executor import LoraExecutor, rank_of


def adalora_schedule(total_step: int) -> dict[str, int]:
    """Return ``tinit``, ``tfinal`` and ``deltaT`` for ``total_step`` optimizer steps.

    10% warm-up without pruning (tinit), a final 20% at the target budget (tfinal), and about ten
    reallocations in between (deltaT); always satisfies peft's ``tinit < total_step - tfinal``.
    Raises ValueError for ``total_step < 1``.
    """
    if total_step < 1:
        raise ValueError("total_step must be >= 1")
    tinit = int(total_step * 0.1)
    tfinal = int(total_step * 0.2)
    while tinit >= total_step - tfinal and (tinit or tfinal):
        tinit, tfinal = max(0, tinit - 1), max(0, tfinal - 1)
    budget = total_step - tinit - tfinal
    return {"tinit": tinit, "tfinal": tfinal, "deltaT": max(1, budget // 10)}


class AdaLoraExecutor(LoraExecutor):
    """AdaLoRA (Zhang et al.): SVD-form adapters starting at ``init_r`` and pruned to ``target_r``.

    peft needs ``total_step`` up front and a call to ``update_and_allocate(global_step)`` after every
    optimizer step: the plan computes the step count from the data, and :meth:`callbacks` adds the
    callback that makes the call.
    """

    method = "adalora"

    peft_config_class = "AdaLoraConfig"

    def peft_kwargs(self, verdict: dict, ctx: PlanContext) -> dict:
        """Return the AdaLoraConfig kwargs: init_r, target_r, tinit, tfinal, deltaT, total_step, targets.

        Raises PlanError when the plan has no step count or the rank is missing.
        """
        assert ctx.info is not None
        if not ctx.total_steps:
            raise PlanError([Diagnostic(
                "plan-adalora-no-steps", "AdaLoRA needs the total number of optimizer steps (AdaLoraConfig.total_step), "
                "and this plan has none", Location("--data"),
                "give --data (the steps are computed from it and the epochs) or --max-steps")])
        target_r = rank_of(verdict)
        init_r = verdict.get("init_rank") or max(target_r, 12)
        if init_r < target_r:
            raise PlanError([Diagnostic("plan-adalora-bad-rank", f"init_rank {init_r} is below the target rank "
                                        f"{target_r}", Location("<verdict>"), "AdaLoRA prunes from init_r down to target_r")])
        alpha = verdict.get("alpha")
        dropout = verdict.get("dropout")
        return {
            "init_r": int(init_r), "target_r": target_r, "total_step": int(ctx.total_steps),
            **adalora_schedule(int(ctx.total_steps)),
            "lora_alpha": float(alpha) if alpha is not None else float(2 * target_r),
            "lora_dropout": float(dropout) if dropout is not None else 0.0,
            "target_modules": resolve_target_modules(verdict.get("target_modules"), ctx.info),
        }

    def check(self, ctx: PlanContext) -> list[Diagnostic]:
        """Return the base checks plus AdaLoRA's: no DoRA (peft raises)."""
        diags = super().check(ctx)
        if ctx.verdict.get("use_dora"):
            diags.append(Diagnostic("plan-adalora-dora", "AdaLoRA cannot be combined with DoRA (peft raises)",
                                    Location("<verdict>"), "use method dora or adalora, not both"))
        return diags

    def callbacks(self, plan: dict) -> list[Any]:
        """Return the callback calling ``update_and_allocate(global_step)`` after each optimizer step."""
        from .callback import AdaLoraAllocationCallback

        return [AdaLoraAllocationCallback()]

    def save_checkpoint_state(self, model: Any, folder: str, write: bool = True) -> None:
        """Write ``adalora_state.pt``: the unpruned adapter tensors, the rank pattern and the rank allocator's scores.

        peft saves an AdaLoRA adapter pruned to its current rank pattern, which cannot be loaded back
        into the training model (size mismatch), and keeps the allocator's importance scores only in
        memory; both are needed to continue a run exactly. Every process must call this (sharded
        parameters are gathered); only ``write`` ones write.
        """
        from .checkpoint import save_state

        save_state(model, os.path.join(folder, STATE_NAME), write)

    def load_checkpoint_state(self, model: Any, folder: str) -> bool:
        """Restore what :meth:`save_checkpoint_state` wrote; returns False when the checkpoint has no such file."""
        from .checkpoint import load_state

        path = os.path.join(folder, STATE_NAME)
        if not os.path.isfile(path):
            return False
        load_state(model, path)
        return True


STATE_NAME = "adalora_state.pt"
