"""The executor contract: what every method provides at plan time and at training time.

Plan time (no torch): :meth:`Executor.quantization`, :meth:`Executor.peft_kwargs`,
:meth:`Executor.check`, :meth:`Executor.unsupported_reason`. They see the verdict, the plan
options and a :class:`ModelInfo` (module names read from the model built on the meta device).

Training time (torch, transformers, peft imported inside the methods): load the base model, wrap
it, the Trainer callbacks the method needs, method-specific checkpoint state, reload the artifact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import Diagnostic, Location, PlanError
from .model_info import ModelInfo

TARGET_PRESETS = ("all-linear", "attention", "mlp")


@dataclass
class PlanContext:
    """Everything an executor's plan-time checks may look at."""

    verdict: dict
    info: ModelInfo | None
    quantization: dict | None  # the requested quantization ({"bits": 4, ...}) or None
    merge: bool
    total_steps: int | None
    where: str = "<plan>"  # what to name in diagnostics (a flag or the plan file)


def peft_default_targets(method: str, model_type: str) -> list[str]:
    """Return peft's default target modules for ``model_type`` (its LoRA or IA3 table; [] when unknown)."""
    from peft.utils import constants

    table = (constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING if method == "ia3"
             else constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
    return list(table.get(model_type, []))


def resolve_target_modules(spec: Any, info: ModelInfo, where: str = "--target-modules",
                           method: str = "lora") -> list[str]:
    """Return the concrete module names (sorted) that ``spec`` selects in this model.

    ``spec`` is ``"all-linear"``, ``"attention"``, ``"mlp"``, a list of module names (leaf names
    such as ``q_proj``), or None for peft's default for this model family (``method`` picks the
    LoRA or the IA3 table). Raises PlanError naming the unknown names and listing the valid ones.
    """
    if spec is None:
        defaults = peft_default_targets(method, info.model_type)
        return sorted(n for n in defaults if n in info.linear_modules) or sorted(info.linear_modules)
    if spec == "all-linear":
        return sorted(info.linear_modules)
    if spec == "attention":
        names = info.attention_modules
    elif spec == "mlp":
        names = info.mlp_modules
    elif isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
        return resolve_target_modules(spec, info, where, method)
    else:
        names = list(spec)
        unknown = [n for n in names if n not in info.linear_modules]
        if unknown:
            valid = ", ".join(sorted(info.linear_modules))
            raise PlanError([Diagnostic(
                "plan-unknown-target-module",
                f"unknown target module(s) {', '.join(f'`{u}`' for u in unknown)} for this model "
                f"({info.architecture})", Location(where),
                f"valid module names: {valid}; or one of the presets {', '.join(TARGET_PRESETS)}")])
    if not names:
        raise PlanError([Diagnostic("plan-no-target-modules", f"the preset `{spec}` selects no linear module in "
                                    f"this model ({info.architecture})", Location(where),
                                    "valid module names: " + ", ".join(sorted(info.linear_modules)))])
    return sorted(set(names))


def enable_activation_checkpointing(model: Any) -> None:
    """Turn on non-reentrant activation (gradient) checkpointing on a transformers model.

    The executors enable it on the model themselves (the Trainer's flag stays off) so that peft's
    k-bit preparation and plain models are handled the same way.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # pragma: no cover - older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.enable_input_require_grads()


class Executor:
    """Base class of all executors. A subclass sets ``method``; its method's registry entry names it."""

    method: ClassVar[str] = ""
    #: the peft config class name (``LoraConfig`` ...) or None for full fine-tuning
    peft_config_class: ClassVar[str | None] = None
    #: whether the trained artifact can be merged into the base weights
    can_merge: ClassVar[bool] = True
    #: whether the base may be loaded in 4-bit (bitsandbytes) for this method
    can_quantize: ClassVar[bool] = True
    #: whether the method always loads a quantized base (QLoRA)
    always_quantized: ClassVar[bool] = False
    #: whether peft allows gradient checkpointing with this method (prefix tuning: no)
    supports_gradient_checkpointing: ClassVar[bool] = True
    #: the folder of the output directory holding the trained artifact
    artifact_dir: ClassVar[str] = "adapter"

    # ----------------------------------------------------------------------------- plan time

    def unsupported_reason(self) -> str | None:
        """Return why this method cannot run in this environment, or None when it can."""
        return None

    def quantization(self, verdict: dict, load_in_4bit: bool) -> dict | None:
        """Return the requested base quantization (``{"bits", "quant_type", "double_quant",
        "compute_dtype"}``) or None for a 16/32-bit base. Raises PlanError for a method that cannot
        train on a quantized base."""
        quant = verdict.get("quantization")
        if quant is None and (load_in_4bit or self.always_quantized):
            quant = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
        if quant is not None and not self.can_quantize:
            raise PlanError([Diagnostic(
                "plan-quantized-base-unsupported", f"{self.method} cannot train a 4-bit (quantized) base model",
                Location("--load-in-4bit"), "drop --load-in-4bit, or use --method qlora")])
        if quant is not None:
            quant = {"bits": int(quant.get("bits", 4)), "quant_type": quant.get("quant_type", "nf4"),
                     "double_quant": bool(quant.get("double_quant", True)),
                     "compute_dtype": quant.get("compute_dtype", "bfloat16")}
            if quant["bits"] != 4 or quant["quant_type"] not in ("nf4", "fp4"):
                raise PlanError([Diagnostic(
                    "plan-unsupported-quantization",
                    f"quantization bits={quant['bits']} quant_type={quant['quant_type']} is not supported",
                    Location("<verdict>"), "the executors train on 4-bit bases only: bits 4, quant_type nf4 or fp4")])
        return quant

    def peft_kwargs(self, verdict: dict, ctx: PlanContext) -> dict | None:
        """Return the keyword arguments of the peft config (JSON-safe), or None for full fine-tuning.

        Raises PlanError when the verdict cannot be expressed for this model.
        """
        return None

    def check(self, ctx: PlanContext) -> list[Diagnostic]:
        """Return the diagnostics of incompatible combinations (merge on this method, quantized merge ...)."""
        diags: list[Diagnostic] = []
        if ctx.merge and not self.can_merge and self.peft_config_class is not None:
            diags.append(Diagnostic(
                "plan-merge-unsupported", f"{self.method} cannot be merged into the model weights",
                Location("--merge"), f"drop --merge: {self.method} keeps its own parameters and is loaded with "
                "PeftModel.from_pretrained at inference"))
        return diags

    # ----------------------------------------------------------------------------- training time

    def make_peft_config(self, plan: dict) -> Any:
        """Return the peft config object of ``plan`` (None for full fine-tuning)."""
        if plan.get("peft") is None:
            return None
        import peft

        cls = getattr(peft, plan["peft"]["class"])
        return cls(task_type="CAUSAL_LM", **plan["peft"]["kwargs"])

    def wrap(self, model: Any, plan: dict) -> Any:
        """Return ``model`` ready to train: k-bit preparation when quantized, then the peft wrapper."""
        from peft import get_peft_model, prepare_model_for_kbit_training

        gc = bool(plan["training"]["gradient_checkpointing"])
        if plan.get("quantization") is not None:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        elif gc:
            enable_activation_checkpointing(model)
        return get_peft_model(model, self.make_peft_config(plan))

    def callbacks(self, plan: dict) -> list[Any]:
        """Return the extra transformers TrainerCallbacks this method needs (none by default)."""
        return []

    def save_checkpoint_state(self, model: Any, folder: str, write: bool = True) -> None:
        """Write method-specific state into a Trainer checkpoint folder before the Trainer writes its files.

        Called on every process (``write`` on the one that saves). Nothing by default: the Trainer's
        own checkpoint (weights, optimizer, scheduler, RNG) is enough.
        """
        return None

    def load_checkpoint_state(self, model: Any, folder: str) -> bool:
        """Restore the model from a checkpoint the method's own way; return False to let the Trainer load it."""
        return False

    def load_trained(self, output_dir: str, plan: dict) -> Any:
        """Return the trained model reloaded from ``output_dir`` (base + adapter, the base as trained), in eval mode.

        Raises FileNotFoundError when the artifact is missing.
        """
        from peft import PeftModel

        from .modeling import load_base_model

        path = os.path.join(output_dir, self.artifact_dir)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no trained artifact at {path}")
        base = load_base_model(plan)
        return PeftModel.from_pretrained(base, path).eval()
