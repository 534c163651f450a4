"""IA3 executor (method ``ia3``): learned rescaling vectors (peft ``IA3Config``)."""

from __future__ import annotations

from ..base import Executor, PlanContext, resolve_target_modules


class IA3Executor(Executor):
    """(IA)³ (Liu et al.): one learned vector per target module scales its output, or for the
    feed-forward modules (the MLP's down projection) its input."""

    method = "ia3"

    peft_config_class = "IA3Config"

    def peft_kwargs(self, verdict: dict, ctx: PlanContext) -> dict:
        """Return the IA3Config kwargs: concrete target_modules and the feedforward subset of them.

        Raises PlanError for unknown target modules.
        """
        assert ctx.info is not None
        targets = resolve_target_modules(verdict.get("target_modules"), ctx.info, method="ia3")
        feedforward = [t for t in targets if t in ctx.info.feedforward_modules]
        return {"target_modules": targets, "feedforward_modules": feedforward}


__all__ = ["IA3Executor"]
