"""What a fine-tuning method is to the decision core: one ``MethodSpec`` per method.

A method's entry (``ruleengine/methods/<name>.py``) holds everything that differs between methods:
the verdict fields it uses (its vocabulary), its trainable-parameter rule, its memory terms, its
cost terms and the executor that trains it. The memory model, the cost model, candidate resolution,
the CLI choices and the executors' registry read these entries; none of them branches on a
method's name.

This module imports nothing of the project but the architecture type (for annotations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..architecture import Architecture

#: verdict fields a method may use besides method/training (DESIGN.md, "Verdict")
HYPERPARAMETERS = ("rank", "alpha", "dropout", "target_modules", "init_rank", "num_virtual_tokens",
                   "adapter_size", "quantization")


@dataclass(frozen=True)
class MethodConfig:
    """The method and its hyperparameters that change trainable parameters, memory and cost.

    ``rank`` is LoRA's r (AdaLoRA: init_r); ``dropout`` the adapter dropout (None = the policy's
    ``memory.lora.default_dropout``); ``use_dora`` turns lora/qlora into DoRA; ``double_quant``
    applies to 4-bit bases.
    """

    method: str
    rank: int | None = None
    target_modules: Any = "all-linear"
    num_virtual_tokens: int | None = None
    adapter_size: int | None = None
    dropout: float | None = None
    use_dora: bool = False
    double_quant: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):  # a list of module names is kept as a tuple: hashable
            object.__setattr__(self, "target_modules", tuple(self.target_modules))


#: (arch, group layout, cfg, setup, constants, dtypes) -> (bytes per token in one layer, input groups kept)
LayerTerm = Callable[..., tuple[float, frozenset[str]]]


@dataclass(frozen=True)
class MemoryTerms:
    """A method's own terms of the per-GPU memory model (ruleengine/memory.py adds the shared ones).

    ``base``: how the frozen or trained base weights are stored, ``"dense"`` (the training
    precision) or ``"nf4"`` (4-bit NF4 on the decoder's ``nn.Linear`` layers, the rest unquantized).
    ``trains_base``: the base weights train (gradients, master weights and states per parameter,
    every linear input and norm output kept for backward); otherwise the trainable parameters are
    adapter parameters (``memory.adapter`` dtypes).
    ``layer``: per layer group (``methods.terms.GroupLayout``), the extra activation bytes per token
    the method keeps in one layer, and which linear-layer input groups it needs for its own gradients.
    ``layer_fixed``: bytes one layer keeps for backward that do not scale with the tokens (merged
    expert weights of LoRA on routed experts).
    ``tokens``: ``(queries, keys)`` per sequence of ``seq_len`` tokens (soft prompts lengthen one or both).
    ``sequence_extra``: bytes per sequence that do not scale with tokens (prefix keys/values).
    ``workspace``: transient bytes of the largest working buffer (dequantization, weight norms).
    ``optimizer_extra``: extra fp32 copies per trainable parameter kept by the method's own state.
    ``recompute``: whether gradient checkpointing can be used (a note explains when it cannot).
    ``residual_bytes``: bytes per element of the residual stream when the method changes it (a k-bit
    base prepared by peft keeps it fp32): the checkpointed layer inputs and the MLP internals.
    """

    base: str = "dense"
    trains_base: bool = False
    layer: LayerTerm | None = None
    layer_fixed: Callable[..., float] | None = None
    tokens: Callable[[MethodConfig, int], tuple[int, int]] | None = None
    sequence_extra: Callable[..., float] | None = None
    workspace: Callable[..., float] | None = None
    optimizer_extra: Callable[..., float] | None = None
    recompute: Callable[..., tuple[bool, str]] | None = None
    residual_bytes: Callable[..., float] | None = None


@dataclass(frozen=True)
class CostTerms:
    """A method's own terms of the cost model (ruleengine/cost.py).

    ``trains_base``: backward computes weight gradients of the base (6·N FLOPs per token instead of
    4·N plus the adapter's); ``slowdowns``: keys of the policy's ``cost.slowdown`` that stretch the
    time (QLoRA dequantization, DoRA weight norms); ``extra_tokens``: virtual tokens processed per
    sequence; ``recompute``: whether gradient checkpointing's extra forward is paid.
    """

    trains_base: bool = False
    slowdowns: tuple[str, ...] = ()
    extra_tokens: Callable[[MethodConfig], int] | None = None
    recompute: bool = True


@dataclass(frozen=True)
class MethodSpec:
    """One fine-tuning method: vocabulary, trainable rule, memory and cost terms, executor.

    ``hyperparameters``: which verdict fields (HYPERPARAMETERS) the method uses; ``defaults``: their
    fallback values when neither the facts, the rule, the use-case row nor the policy's
    ``defaults.methods`` give one; ``trainable(arch, cfg)``: the trainable-parameter count (equal to
    peft's for peft methods); ``executor``: ``"module:Class"`` of the executor that trains it (imported
    only by ``executors``); ``order``: its position in listings (estimate tables, CLI choices).
    """

    name: str
    label: str
    summary: str
    order: int
    hyperparameters: frozenset[str]
    trainable: Callable[[Architecture, MethodConfig], int]
    memory: MemoryTerms
    cost: CostTerms
    executor: str
    colour: str
    defaults: dict[str, Any] = field(default_factory=dict)
    peft_type: str | None = None
    dora: bool = False  # the method is DoRA (magnitude vectors on every adapted layer)

    def uses(self, field_name: str) -> bool:
        """Return True when the verdict field ``field_name`` (e.g. ``rank``) applies to this method."""
        return field_name in self.hyperparameters

    @property
    def ranked(self) -> bool:
        """Return True for methods with a rank (the LoRA family)."""
        return "rank" in self.hyperparameters
