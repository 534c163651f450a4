"""Memory terms shared by several methods' entries (the LoRA family, IA3), and the decoder-layer layout they read.

:func:`layer_layout` turns an Architecture's layer groups into what activation memory depends on:
per group of identical layers, the tensors one token feeds into each linear layer (``input groups``:
q/k/v share the attention input, gate/up the MLP input, each down projection has its own), how many
instances of each linear a token passes through (a MoE layer's routed experts: top-k, not all), the
MLP width the token activates, and the router's outputs. Roles come from ``Linear.role`` and
``Linear.kind`` (fused qkv, MLA's latent projections, routed experts), never from a layer's position.

Each term function is one mechanism, written once; a method's entry (``ruleengine/methods/<name>.py``)
picks the ones that apply to it. Constants come from the policy's ``memory:`` mapping
(``MemoryConstants``, duck-typed here as anything with ``get(*path)``); element sizes of the run
(activation dtype, adapter dtype, autocast) come as a :class:`Dtypes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..trainable import resolve_targets
from .spec import MethodConfig

ATTENTION_INPUT_ROLES = ("q", "k", "v", "qkv", "q_a", "kv_a")
MLP_INPUT_ROLES = ("gate", "up", "gate_up", "router", "shared_gate")


@dataclass(frozen=True)
class Dtypes:
    """Element sizes of one run: what a saved tensor costs per element.

    ``act``: activations (2 at 16-bit); ``scale``: ``act / 2`` (activation constants are given at
    16 bits); ``autocast``: the forward runs under torch.autocast (mixed precision), so a matmul
    saves a 16-bit copy of an fp32 input; ``adapter``: bytes of an adapter weight (peft keeps them
    fp32 by default); ``cast``: the adapter dtype differs from the activations', so every adapted
    layer casts its input (peft ``_cast_input_dtype``) instead of sharing the layer's input tensor;
    ``adapter_input``: bytes per element of the input copy an adapter keeps (16-bit under autocast,
    else the adapter dtype).
    """

    act: float
    scale: float
    autocast: bool
    adapter: float
    cast: bool
    adapter_input: float

    @classmethod
    def of(cls, precision: Mapping[str, Any], adapter_bytes: float) -> Dtypes:
        """Return the dtypes of a precision constant mapping and the adapter weight bytes."""
        return _dtypes(float(precision["activation_bytes"]), bool(precision.get("autocast", False)),
                       float(adapter_bytes))


@lru_cache(maxsize=64)
def _dtypes(act: float, autocast: bool, adapter: float) -> Dtypes:
    cast = adapter != act
    return Dtypes(act, act / 2.0, autocast, adapter, cast, act if (autocast or not cast) else adapter)


@dataclass(frozen=True)
class GroupLayout:
    """What one token meets in one decoder layer of a group of identical layers.

    ``active``: instances of each linear (by peft name) a token passes through per layer (1, or
    top-k for routed experts); ``module_group``: the input group of each linear; ``inputs``: the
    width of each input group per token (routed experts: top-k copies of the hidden state; down
    projections: their own input, times the active instances); ``mlp_width``: the intermediate
    width the token activates (dense MLP, shared experts, top-k routed experts); ``router_width``:
    router outputs per token; ``top_k``: routed experts per token (0 in a dense layer);
    ``shared_gate``: a sigmoid gate scales the shared expert's output (Qwen-MoE).
    """

    kind: str
    count: int
    linears: tuple[Any, ...]
    by_name: Mapping[str, Any]
    active: Mapping[str, float]
    module_group: Mapping[str, str]
    inputs: Mapping[str, float]
    mlp_width: float
    router_width: float
    top_k: int
    shared_gate: bool




def _module_group(arch: Any, m: Any) -> str:
    shared_norm = arch.parallel_attention and arch.norms_per_layer == 1
    if m.role in ATTENTION_INPUT_ROLES:
        return "attn_in"
    if m.role == "q_b":
        return "q_latent"
    if m.role == "kv_b":
        return "kv_latent"
    if m.role == "o":
        return "o_in"
    if m.role == "down":
        return f"down_in:{m.name}"
    if m.kind == "expert":
        return "expert_in"
    return "attn_in" if shared_norm else "mlp_in"


def layer_layout(arch: Any) -> tuple[GroupLayout, ...]:
    """Return one :class:`GroupLayout` per layer group of ``arch`` (dense and MoE layers differ).

    Remembered per Architecture object, so the decision hot path computes it once per model.
    """
    memo: dict = arch.__dict__.setdefault("_memo", {})
    if "layout" in memo:
        return memo["layout"]
    out = []
    for g in arch.layer_groups:
        top_k = 0
        active: dict[str, float] = {}
        groups: dict[str, str] = {}
        inputs: dict[str, float] = {}
        mlp_width = router = 0.0
        for m in g.linears:
            per = float(min(m.copies, arch.num_experts_per_tok or m.copies)) if m.kind == "expert" else float(m.copies)
            if m.kind == "expert":
                top_k = max(top_k, int(per))
            active[m.name] = per
            key = _module_group(arch, m)
            groups[m.name] = key
            width = float(m.d_in) * (per if key.startswith("down_in") or key == "expert_in" else 1.0)
            inputs[key] = max(inputs.get(key, 0.0), width)
            if m.role == "down":
                mlp_width += per * m.d_in
            if m.kind == "router":
                router += m.d_out
        out.append(GroupLayout(g.kind, g.count, g.linears, {m.name: m for m in g.linears}, active, groups, inputs,
                               mlp_width, router, top_k,
                               any(m.role == "shared_gate" for m in g.linears)))
    layout = tuple(out)
    memo["layout"] = layout
    return layout


def targets_of(arch: Any, cfg: MethodConfig) -> tuple[str, ...]:
    """Return ``resolve_targets(arch, cfg.method, cfg.target_modules)`` (remembered per Architecture object).

    Raises ValueError for bad target modules (see ``resolve_targets``).
    """
    return resolve_targets(arch, cfg.method, cfg.target_modules)


def input_group(arch: Any, module: str) -> str:
    """Return which activation tensor feeds ``module``: ``attn_in`` (q/k/v, fused qkv, MLA's down
    projections), ``q_latent``/``kv_latent`` (MLA's up projections), ``o_in``, ``mlp_in`` (gate/up,
    routers, shared experts), ``expert_in`` (routed experts: top-k copies) or ``down_in:<name>``.

    Raises ValueError for a module the architecture does not have.
    """
    infos = arch.linears()
    if module not in infos:
        raise ValueError(f"unknown module {module} (have {', '.join(infos)})")
    return _module_group(arch, infos[module])


def all_groups(arch: Any) -> frozenset[str]:
    """Return the input group of every linear layer of the decoder layers (all groups)."""
    return frozenset(input_group(arch, m) for m in arch.linears())


def lora_layer(arch: Any, group: GroupLayout, cfg: MethodConfig, setup: Any, c: Any, dt: Dtypes, *,
               dora: bool = False) -> tuple[float, frozenset[str]]:
    """Return what LoRA adapters keep per token in one layer of ``group``, and the input groups they share.

    Per adapted layer instance a token passes through: with dropout, the dropout mask (1 B) and the
    copy of the input ``lora_A`` keeps (``dt.adapter_input`` bytes: 16-bit under autocast, the
    adapter dtype otherwise); without dropout, that copy when the adapter dtype differs from the
    activations' (peft casts the input per layer), else nothing but the layer's own input (shared,
    returned as an input group); and ``lora_A``'s output (rank wide). DoRA also keeps
    ``base_result`` (activation dtype) and ``lora_result`` (``d_out`` each). Raises ValueError for
    unknown targets.
    """
    a = c.get("activations")
    targets = targets_of(arch, cfg)
    dropout = c.get("lora", "default_dropout") if cfg.dropout is None else cfg.dropout
    rank = float(cfg.rank or 0)
    extra = 0.0
    shared: set[str] = set()
    for t in targets:
        if t not in group.active:
            continue
        per = group.active[t]
        m = group.by_name[t]
        if m.kind == "expert":  # peft target_parameters: the merged weight trains, so the matmul keeps its input
            shared.add(group.module_group[t])
            continue
        if dropout > 0:
            extra += per * m.d_in * (dt.adapter_input + a["dropout_mask"])
        elif dt.cast:
            extra += per * m.d_in * dt.adapter_input
        else:
            shared.add(group.module_group[t])
        extra += per * rank * dt.adapter_input
        if dora or cfg.use_dora:
            extra += per * m.d_out * (dt.act + dt.adapter_input)
    return extra, frozenset(shared)


def lora_layer_fixed(arch: Any, group: GroupLayout, cfg: MethodConfig, c: Any, dt: Dtypes) -> float:
    """Return the bytes one layer of ``group`` keeps for backward independently of the tokens.

    LoRA on routed experts (peft ``target_parameters``) parametrizes the 3-D expert weight: the merged
    weight ``W + B@A`` of every expert is computed in forward (in the wider of the activation and
    adapter dtypes) and kept by the expert matmuls for backward.
    """
    total = 0.0
    for t in targets_of(arch, cfg):
        m = group.by_name.get(t)
        if m is not None and m.kind == "expert":
            total += float(m.copies) * m.d_in * m.d_out * max(dt.act, dt.adapter)
    return total


def nf4_lora_layer(arch: Any, group: GroupLayout, cfg: MethodConfig, setup: Any, c: Any, dt: Dtypes, *,
                   dora: bool = False) -> tuple[float, frozenset[str]]:
    """Return ``lora_layer`` plus the 4-bit layers' own saved inputs where bitsandbytes keeps them.

    bitsandbytes <= 0.41's MatMul4Bit kept its input for backward (``quantization.saves_input``).
    """
    extra, groups = lora_layer(arch, group, cfg, setup, c, dt, dora=dora)
    if c.get("quantization", "saves_input"):
        groups |= frozenset(group.module_group[m.name] for m in group.linears if m.kind == "linear")
    return extra, groups


def dora_workspace(arch: Any, cfg: MethodConfig, c: Any, *, dora: bool = False) -> float:
    """Return DoRA's transient weight-norm buffer (the largest adapted weight), or 0 without DoRA."""
    if not (dora or cfg.use_dora):
        return 0.0
    infos = arch.linears()
    return float(c.get("dora", "weight_norm_bytes") * max(infos[t].d_in * infos[t].d_out for t in targets_of(arch, cfg)))


def dequant_workspace(arch: Any, cfg: MethodConfig, c: Any) -> float:
    """Return the bf16 buffers of the largest linear weight dequantized from NF4 in forward and backward.

    Only ``nn.Linear`` layers are 4-bit (bitsandbytes leaves transformers 5's fused experts 16-bit).
    """
    largest = max((m.d_in * m.d_out for m in arch.linears().values() if m.kind == "linear"), default=0)
    return float(c.get("quantization", "dequant_buffers") * largest * 2)


def nf4_workspace(arch: Any, cfg: MethodConfig, c: Any, *, dora: bool = False) -> float:
    """Return the dequantization buffers plus DoRA's weight-norm buffer when DoRA runs on the 4-bit base."""
    return dequant_workspace(arch, cfg, c) + dora_workspace(arch, cfg, c, dora=dora)


def kbit_residual_bytes(c: Any) -> float:
    """Return the bytes per hidden element of the residual stream on a k-bit base.

    ``prepare_model_for_kbit_training`` makes embeddings and norms fp32, so the residual stream (what
    checkpointing keeps per layer) is fp32, and bitsandbytes casts each 4-bit layer's output back to
    its input's dtype, so the MLP's internals are fp32 too.
    """
    return float(c.get("quantization", "residual_stream_bytes"))
