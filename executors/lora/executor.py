"""LoRA: low-rank adapters (peft ``LoraConfig``) on the verdict's target modules."""

from __future__ import annotations

from importlib import metadata

from ..base import Executor, PlanContext, resolve_target_modules
from ..errors import Diagnostic, Location, positive_int

#: first peft release whose bitsandbytes 4-bit LoRA layer supports DoRA (peft#1518)
PEFT_DORA_4BIT = (0, 10, 0)


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def peft_supports_dora_on_4bit() -> bool:
    """Return True when the installed peft applies DoRA to bitsandbytes 4-bit layers (peft >= 0.10)."""
    try:
        return _version_tuple(metadata.version("peft")) >= PEFT_DORA_4BIT
    except metadata.PackageNotFoundError:
        return False


def rank_of(verdict: dict, key: str = "rank") -> int:
    """Return the verdict's rank as a positive int; raises PlanError when it is missing or not positive."""
    return positive_int(verdict, key, "plan-bad-rank", "set training.lora_rank in the facts, or --lora-rank")


class LoraExecutor(Executor):
    """LoRA (Hu et al.): ``W + (alpha/r)·B·A`` on every target module; the base stays frozen."""

    method = "lora"

    peft_config_class = "LoraConfig"
    use_dora = False

    def peft_kwargs(self, verdict: dict, ctx: PlanContext) -> dict:
        """Return the LoraConfig kwargs: r, lora_alpha, lora_dropout, concrete target_modules, use_dora.

        Raises PlanError for a missing rank or unknown target modules.
        """
        assert ctx.info is not None
        rank = rank_of(verdict)
        alpha = verdict.get("alpha")
        dropout = verdict.get("dropout")
        return {
            "r": rank,
            "lora_alpha": float(alpha) if alpha is not None else float(2 * rank),
            "lora_dropout": float(dropout) if dropout is not None else 0.0,
            "target_modules": resolve_target_modules(verdict.get("target_modules"), ctx.info),
            "use_dora": bool(self.use_dora or verdict.get("use_dora")),
            "bias": "none",
        }

    def check(self, ctx: PlanContext) -> list[Diagnostic]:
        """Return the base checks plus DoRA on a 4-bit base when the installed peft refuses it."""
        diags = super().check(ctx)
        dora = self.use_dora or bool(ctx.verdict.get("use_dora"))
        if dora and ctx.quantization is not None and not peft_supports_dora_on_4bit():
            diags.append(Diagnostic(
                "plan-dora-4bit-unsupported", "the installed peft cannot apply DoRA to a 4-bit (bitsandbytes) base",
                Location("--load-in-4bit"), "upgrade peft to >= 0.10, or train DoRA on a 16-bit base"))
        return diags
