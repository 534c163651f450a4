"""Memory terms shared by several methods' entries (the LoRA family, IA3, soft prompts, bottleneck adapters).

Each function is one mechanism, written once; a method's entry (``ruleengine/methods/<name>.py``)
picks the ones that apply to it. Constants come from the policy's ``memory:`` mapping
(``MemoryConstants``, duck-typed here as anything with ``get(*path)``). Bytes are per element
unless stated otherwise; ``scale`` is the training precision's activation bytes / 2.
"""

from __future__ import annotations

from typing import Any

from ..trainable import resolve_targets
from .spec import MethodConfig

GROUPS = ("attn_in", "o_in", "mlp_in", "down_in")


def input_group(arch: Any, module: str) -> str:
    """Return which activation tensor feeds ``module`` (q/k/v share one input, gate/up another).

    Raises ValueError for a module the architecture does not have.
    """
    attn, mlp = arch.attention_modules(), arch.mlp_modules()
    if module in attn[:3]:
        return "attn_in"
    if module == attn[3]:
        return "o_in"
    if module == mlp[-1]:
        return "down_in"
    if module in mlp:
        return "mlp_in"
    raise ValueError(f"unknown module {module} (have {', '.join(arch.linear_modules())})")


def all_groups(arch: Any) -> frozenset[str]:
    """Return the input group of every linear layer of a decoder layer."""
    return frozenset(input_group(arch, m) for m in arch.linear_modules())


def lora_layer(arch: Any, cfg: MethodConfig, setup: Any, c: Any, scale: float, *,
               dora: bool = False) -> tuple[float, frozenset[str]]:
    """Return what LoRA adapters keep per token and layer: their inputs, dropout outputs and masks, DoRA's parts.

    With dropout every adapted layer applies its own dropout, so its output and mask are kept per
    layer; without dropout the adapters read the layer inputs (kept once per input group). DoRA also
    keeps ``base_result`` and ``lora_result`` (``d_out`` each). Raises ValueError for unknown targets.
    """
    a = c.get("activations")
    modules = arch.linear_modules()
    targets = resolve_targets(arch, cfg.method, cfg.target_modules)
    dropout = c.get("lora", "default_dropout") if cfg.dropout is None else cfg.dropout
    extra = 0.0
    groups: frozenset[str] = frozenset()
    if dropout > 0:
        extra += sum(modules[t][0] for t in targets) * (a["linear_input"] * scale + a["dropout_mask"])
    else:
        groups = frozenset(input_group(arch, t) for t in targets)
    if dora or cfg.use_dora:
        extra += sum(modules[t][1] for t in targets) * a["dora_per_output"] * scale
    return extra, groups


def nf4_lora_layer(arch: Any, cfg: MethodConfig, setup: Any, c: Any, scale: float, *,
                   dora: bool = False) -> tuple[float, frozenset[str]]:
    """Return ``lora_layer`` plus the 4-bit layers' own saved inputs where bitsandbytes keeps them.

    bitsandbytes <= 0.41's MatMul4Bit kept its input for backward (``quantization.saves_input``).
    """
    extra, groups = lora_layer(arch, cfg, setup, c, scale, dora=dora)
    if c.get("quantization", "saves_input"):
        groups |= all_groups(arch)
    return extra, groups


def dora_workspace(arch: Any, cfg: MethodConfig, c: Any, *, dora: bool = False) -> float:
    """Return DoRA's transient weight-norm buffer (the largest adapted weight), or 0 without DoRA."""
    if not (dora or cfg.use_dora):
        return 0.0
    modules = arch.linear_modules()
    targets = resolve_targets(arch, cfg.method, cfg.target_modules)
    return float(c.get("dora", "weight_norm_bytes") * max(modules[t][0] * modules[t][1] for t in targets))


def dequant_workspace(arch: Any, cfg: MethodConfig, c: Any) -> float:
    """Return the bf16 buffers of the largest linear weight dequantized from NF4 in forward and backward."""
    largest = max(d_in * d_out for d_in, d_out in arch.linear_modules().values())
    return float(c.get("quantization", "dequant_buffers") * largest * 2)


def nf4_workspace(arch: Any, cfg: MethodConfig, c: Any, *, dora: bool = False) -> float:
    """Return the dequantization buffers plus DoRA's weight-norm buffer when DoRA runs on the 4-bit base."""
    return dequant_workspace(arch, cfg, c) + dora_workspace(arch, cfg, c, dora=dora)


def fp32_residual_floor(c: Any) -> float:
    """Return the bytes per checkpointed hidden element when the embeddings stay fp32 (kbit preparation)."""
    return float(c.get("quantization", "residual_stream_bytes"))
