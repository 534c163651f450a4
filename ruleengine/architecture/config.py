"""Architecture from a Hugging Face ``config.json``: the closed form, exact for every family in the table.

No download and no torch: the parameter count and every linear layer's shape are computed from
the config with the rules of ruleengine/architecture/families.py. An unknown ``model_type`` that
has the common fields (hidden size, layers, heads, MLP width, vocabulary) is read as a Llama-style
decoder and the Architecture's ``warnings`` name what was assumed.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

from .families import (
    ALIASES,
    ASSUMED_FAMILY,
    ASSUMPTIONS,
    EXPERTS,
    FAMILIES,
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    KV_HEADS,
    LAYERS,
    SIGLIP_DEFAULTS,
    SUPPORTED_MODEL_TYPES,
    VOCAB,
    Family,
    Moe,
)
from .model import Architecture, ArchitectureError, LayerGroup, Linear, name_groups, norm_params, shape_params

# Keys whose explicit ``null`` means something (not "use the default"): DeepSeek-V2-Lite's
# q_lora_rank null projects q directly; a null window means full attention.
NULLABLE = ("q_lora_rank", "sliding_window", "n_inner", "ffn_hidden_size", "num_ln_in_parallel_attn", "head_dim",
            "num_key_value_heads", "num_kv_heads")


class _Reader:
    """Typed access to a config mapping with family defaults; errors name the key and the file."""

    def __init__(self, config: dict, defaults: dict, origin: str) -> None:
        given = {k: v for k, v in config.items() if v is not None or k in NULLABLE}
        self.cfg = {**defaults, **given}
        self.origin = origin

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def integer(self, keys: str | tuple[str, ...], *, default: int | None = None, minimum: int = 1) -> int:
        names = (keys,) if isinstance(keys, str) else keys
        for key in names:
            value = self.cfg.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ArchitectureError(f"{self.origin}: `{key}` must be an integer, got {value!r}", key)
            if value < minimum:
                raise ArchitectureError(f"{self.origin}: `{key}` must be >= {minimum}, got {value}", key)
            return value
        if default is not None:
            return default
        also = f" (also read as {', '.join(names[1:])})" if len(names) > 1 else ""
        raise ArchitectureError(f"{self.origin}: required key `{names[0]}` is missing{also}", names[0])

    def flag(self, key: bool | str, default: bool = False) -> bool:
        if isinstance(key, bool):
            return key
        value = self.cfg.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ArchitectureError(f"{self.origin}: `{key}` must be true or false, got {value!r}", key)
        return value

    def number(self, key: str, default: float) -> float:
        value = self.cfg.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArchitectureError(f"{self.origin}: `{key}` must be a number, got {value!r}", key)
        return float(value)

    def int_list(self, key: str) -> tuple[int, ...]:
        value = self.cfg.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ArchitectureError(f"{self.origin}: `{key}` must be a list of layer indices, got {value!r}", key)
        return tuple(value)


def from_hf_config(config: dict, origin: str = "<config>") -> Architecture:
    """Return the Architecture a Hugging Face ``config.json`` mapping describes, counting parameters exactly.

    ``origin`` names the config in error messages. Every ``model_type`` of the family table
    (:data:`SUPPORTED_MODEL_TYPES`) is exact; any other ``model_type`` with the common fields is
    read as a Llama-style decoder, and the result's ``warnings`` say so. Raises ArchitectureError
    (with the offending key in ``field``) when ``model_type`` is missing, a required key is
    missing, or a value has the wrong type or an impossible value (e.g. heads not dividing the
    hidden size).
    """
    if not isinstance(config, dict):
        raise ArchitectureError(f"{origin}: a config must be a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ArchitectureError(f"{origin}: required key `model_type` is missing "
                                f"(known: {', '.join(SUPPORTED_MODEL_TYPES)})", "model_type")
    warnings: list[str] = []
    vision: dict | None = None
    key = ALIASES.get(model_type, model_type)
    if model_type == "gemma3":
        text = config.get("text_config") or {}
        if not isinstance(text, dict):
            raise ArchitectureError(f"{origin}: `text_config` must be an object", "text_config")
        vision = config.get("vision_config") or {}  # transformers builds SigLIP's defaults when absent
        if not isinstance(vision, dict):
            raise ArchitectureError(f"{origin}: `vision_config` must be an object", "vision_config")
        tie = config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
        config = {**text, "model_type": "gemma3_text", "tie_word_embeddings": tie}
        origin = f"{origin} (text_config)"
        warnings.append("gemma3: the vision tower and projector are counted as frozen parameters; LoRA targets "
                            "and activations cover the language model only")
    family = FAMILIES.get(key)
    if family is None:
        missing = [names[0] for names in (HIDDEN, LAYERS, HEADS, INTERMEDIATE, VOCAB)
                   if not any(config.get(n) is not None for n in names)]
        if missing:
            raise ArchitectureError(f"{origin}: unknown model_type `{model_type}` and the common key "
                                    f"`{missing[0]}` is missing, so no architecture can be assumed; known model "
                                    f"types: {', '.join(SUPPORTED_MODEL_TYPES)}", missing[0])
        family = FAMILIES[ASSUMED_FAMILY]
        moe_note = (" with routed experts (" + next(n for n in EXPERTS if config.get(n)) + ")"
                    if any(config.get(n) for n in EXPERTS) else "")
        warnings.append(f"unknown model_type `{model_type}`: assumed a Llama-style decoder{moe_note}: "
                        + "; ".join(ASSUMPTIONS) + "; give --exact (transformers) for an exact count")
        if moe_note:
            family = _assumed_moe_family(config)
    arch = _build(family, _Reader(config, family.defaults, origin), model_type, key)
    if vision is not None:
        extra = _siglip_params(_Reader(vision, SIGLIP_DEFAULTS, f"{origin} (vision_config)"), arch.hidden_size)
        arch = replace(arch, vision_params=extra, top_params=arch.top_params + extra,
                        params=arch.params + extra, model_type="gemma3")
    if warnings:
        arch = replace(arch, warnings=tuple(warnings) + arch.warnings)
    return arch


def _assumed_moe_family(config: dict) -> Family:
    experts = next(n for n in EXPERTS if config.get(n))
    width = "moe_intermediate_size" if config.get("moe_intermediate_size") else "intermediate_size"
    return replace(FAMILIES[ASSUMED_FAMILY], moe=Moe(experts, width))


def load_hf_config(path: str) -> Architecture:
    """Return the Architecture of the Hugging Face ``config.json`` at ``path`` (a file or a model directory).

    Raises ArchitectureError when the file is missing, is not JSON, or describes an incomplete
    model (``field`` names the offending key; ``None`` for file-level problems).
    """
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        with open(file, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ArchitectureError(f"{file}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ArchitectureError(f"{file}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except OSError as exc:
        raise ArchitectureError(f"{file}: cannot be read: {exc.strerror}") from None
    return from_hf_config(data, file)


# --- the builder ----------------------------------------------------------------------------


def _partial_rotary(family: Family, r: _Reader) -> float:
    rope = r.cfg.get("rope_parameters") or r.cfg.get("rope_scaling") or {}
    if isinstance(rope, dict) and isinstance(rope.get("partial_rotary_factor"), (int, float)):
        return float(rope["partial_rotary_factor"])
    if r.has("partial_rotary_factor"):
        return r.number("partial_rotary_factor", 1.0)
    if isinstance(family.partial_rotary, str):
        return r.number(family.partial_rotary, 1.0 if family.partial_rotary != "rotary_pct" else 0.25)
    return float(family.partial_rotary)


def _sliding(family: Family, r: _Reader, layers: int) -> tuple[int, int]:
    """Return (window, layers using it) from the family's window key, ``layer_types`` and Qwen's switch."""
    if not family.sliding_window or not r.has(family.sliding_window):
        return 0, 0
    if "use_sliding_window" in r.cfg and not r.flag("use_sliding_window"):
        return 0, 0
    window = r.integer(family.sliding_window, minimum=0)
    if window == 0:
        return 0, 0
    types = r.cfg.get("layer_types")
    if isinstance(types, list) and types:
        return window, sum(1 for t in types if t == "sliding_attention")
    if family is FAMILIES["gemma2"]:
        return window, layers // 2  # even layers slide (transformers' default layer_types)
    if family is FAMILIES["gemma3_text"]:
        pattern = r.integer("sliding_window_pattern", default=6)
        return window, sum(1 for i in range(layers) if (i + 1) % pattern)
    return window, layers


def _build(family: Family, r: _Reader, model_type: str, key: str) -> Architecture:
    h = r.integer(HIDDEN)
    layers = r.integer(LAYERS)
    heads = r.integer(HEADS)
    vocab = r.integer(VOCAB)
    if family.builder == "falcon":
        kv = heads
        if r.flag("new_decoder_architecture"):
            kv = r.integer(("num_kv_heads", "n_head_kv"), default=heads)
        elif r.flag("multi_query", True):
            kv = 1
    else:
        kv = r.integer(KV_HEADS, default=heads)
    if family.builder in ("falcon", "gpt2", "opt", "qwen") or not r.has("head_dim"):
        if h % heads:
            raise ArchitectureError(f"{r.origin}: hidden_size {h} is not divisible by num_attention_heads {heads}",
                                    "num_attention_heads")
        head_dim = h // heads
    else:
        head_dim = r.integer("head_dim")
    if family.builder == "qwen":
        head_dim = r.integer("kv_channels", default=head_dim)
    if heads % kv:
        raise ArchitectureError(f"{r.origin}: num_attention_heads {heads} is not a multiple of "
                                f"num_key_value_heads {kv}", KV_HEADS[0])
    inter = _intermediate(family, r, h)
    tie = r.flag("tie_word_embeddings", False)
    qkv_bias, o_bias, mlp_bias = r.flag(family.qkv_bias), r.flag(family.o_bias), r.flag(family.mlp_bias)
    if family.builder == "qwen":
        o_bias = mlp_bias = not r.flag("no_bias", True)
    parallel = r.flag(family.parallel)
    norm = family.norm
    norms = family.norms_per_layer
    if family.builder == "opt":
        if not r.flag("layer_norm_elementwise_affine", True):
            norm = "none"
        qkv_bias = o_bias = mlp_bias = r.flag("enable_bias", True)
    elif family.builder == "falcon":
        if not parallel:
            norms = 2
        elif r.flag("new_decoder_architecture"):
            norms = r.integer("num_ln_in_parallel_attn", default=2)
        else:
            norms = 1
    elif family is FAMILIES["stablelm"] and parallel:
        norms = 1
    qk_kind = family.qk_norm if family.qk_norm and r.flag(family.qk_norm_key) else ""

    # attention
    mla: dict[str, Any] = {}
    attn: list[Linear] = []
    q_dim, kv_dim = heads * head_dim, kv * head_dim
    if family.builder == "deepseek":
        mla = {"q_lora_rank": r.integer("q_lora_rank", default=0, minimum=0), "kv_lora_rank": r.integer("kv_lora_rank"),
               "qk_rope_head_dim": r.integer("qk_rope_head_dim"), "qk_nope_head_dim": r.integer("qk_nope_head_dim"),
               "v_head_dim": r.integer("v_head_dim")}
        qk = mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"]
        if mla["q_lora_rank"]:
            attn += [Linear("self_attn.q_a_proj", h, mla["q_lora_rank"], "q_a", qkv_bias),
                     Linear("self_attn.q_b_proj", mla["q_lora_rank"], heads * qk, "q_b")]
        else:
            attn.append(Linear("self_attn.q_proj", h, heads * qk, "q"))
        attn += [Linear("self_attn.kv_a_proj_with_mqa", h, mla["kv_lora_rank"] + mla["qk_rope_head_dim"], "kv_a",
                        qkv_bias),
                 Linear("self_attn.kv_b_proj", mla["kv_lora_rank"], heads * (mla["qk_nope_head_dim"] +
                                                                             mla["v_head_dim"]), "kv_b"),
                 Linear("self_attn.o_proj", heads * mla["v_head_dim"], h, "o", o_bias)]
        head_dim, kv, q_dim, kv_dim = qk, heads, heads * qk, heads * qk
    elif len(family.attention) == 4:
        q, k, v, o = family.attention
        attn = [Linear(q, h, q_dim, "q", qkv_bias), Linear(k, h, kv_dim, "k", qkv_bias),
                Linear(v, h, kv_dim, "v", qkv_bias), Linear(o, q_dim, h, "o", o_bias)]
    else:
        qkv, o = family.attention
        attn = [Linear(qkv, h, q_dim + 2 * kv_dim, "qkv", qkv_bias), Linear(o, q_dim, h, "o", o_bias)]

    # norms of one layer
    other = norms * norm_params(norm, h)
    other += {"head": 2 * head_dim, "head_ln": 4 * head_dim, "per_head": q_dim + kv_dim,
              "full": q_dim + kv_dim, "": 0}[qk_kind]
    if mla:
        other += mla["q_lora_rank"] + mla["kv_lora_rank"]  # q_a_layernorm, kv_a_layernorm (RMSNorm)

    dense_mlp = _dense_mlp(family, h, inter, mlp_bias)
    groups: list[LayerGroup] = []
    moe_fields: dict[str, Any] = {}
    if family.moe is None:
        groups.append(LayerGroup("dense", tuple(range(layers)), tuple(attn + dense_mlp), other))
    else:
        moe = family.moe
        experts = r.integer(moe.experts)
        top_k = r.integer(moe.top_k, default=experts if family.builder != "deepseek" else 1)
        width = r.integer(moe.width)
        moe_layers = _moe_layers(moe.layers, r, layers)
        shared: list[Linear] = []
        shared_width = 0
        n_shared = 0
        if moe.shared == "qwen2":
            shared_width, n_shared = r.integer("shared_expert_intermediate_size"), 1
            shared = [Linear("mlp.shared_expert_gate", h, 1, "shared_gate"),
                      *_gated("mlp.shared_expert.", h, shared_width, False)]
        elif moe.shared == "deepseek":
            n_shared = r.integer("n_shared_experts", default=0, minimum=0)
            shared_width = width * n_shared
            if n_shared:
                shared = _gated("mlp.shared_experts.", h, shared_width, False)
        routed = [Linear("mlp.gate", h, experts, "router", kind="router"),
                  Linear("mlp.experts.gate_up_proj", h, 2 * width, "gate_up", kind="expert", copies=experts),
                  Linear("mlp.experts.down_proj", width, h, "down", kind="expert", copies=experts)]
        dense_idx = tuple(i for i in range(layers) if i not in moe_layers)
        if dense_idx:
            groups.append(LayerGroup("dense", dense_idx, tuple(attn + dense_mlp), other))
        if moe_layers:
            groups.append(LayerGroup("moe", tuple(sorted(moe_layers)), tuple(attn + routed[:1] + shared + routed[1:]),
                                     other))
        moe_fields = {"num_experts": experts, "num_experts_per_tok": min(top_k, experts),
                      "num_shared_experts": n_shared, "moe_intermediate_size": width,
                      "shared_expert_intermediate_size": shared_width}

    # outside the layers
    final = family.final_norm and norm != "none"
    positions = 0
    proj = 0
    lm_head_bias = family.lm_head_bias
    if family.builder == "opt":
        final = r.flag("do_layer_norm_before", True) and not r.flag("_remove_final_layer_norm", False)
        final = final and norm != "none"
        positions = r.integer("max_position_embeddings") + 2
        proj = r.integer("word_embed_proj_dim", default=h)
        proj = 0 if proj == h else proj
    elif family.builder == "gpt2":
        positions = r.integer(("n_positions", "max_position_embeddings"))
    top = (norm_params(norm, h) if final else 0) + positions * h + 2 * h * proj
    if lm_head_bias:
        top += vocab
    window, window_layers = _sliding(family, r, layers)
    positions_kind = family.positions
    if family.builder == "falcon" and r.flag("alibi"):
        positions_kind = "alibi"
    arch = Architecture(
        hidden_size=h, num_layers=layers, intermediate_size=inter, num_attention_heads=heads, num_kv_heads=kv,
        head_dim=head_dim, vocab_size=vocab, tie_word_embeddings=tie,
        mlp="plain" if family.mlp == "plain" else "gated", model_type=model_type, params=0, source="config",
        attention_bias=qkv_bias, output_bias=o_bias, mlp_bias=mlp_bias, norm=norm, qk_norm=bool(qk_kind),
        norms_per_layer=norms,
        word_embed_proj_dim=proj, position_embeddings=positions,
        final_norm=final,
        layer_groups=name_groups(groups), top_params=top, family=key,
        attention="mla" if mla else "mha", parallel_attention=parallel,
        partial_rotary_factor=_partial_rotary(family, r) if positions_kind == "rotary" else 0.0,
        positions=positions_kind, sliding_window=window, sliding_window_layers=window_layers,
        lm_head_bias=lm_head_bias, **moe_fields, **mla,
    )
    return arch.with_params(shape_params(arch))


def _intermediate(family: Family, r: _Reader, h: int) -> int:
    if family.builder == "gpt2":
        return r.integer(("n_inner",), default=4 * h)
    if family.builder == "falcon":
        return r.integer(("ffn_hidden_size",), default=4 * h)
    if family.builder == "qwen":
        return r.integer(("intermediate_size",)) // 2  # w1 and w2 are each half of intermediate_size
    keys = family.intermediate if family.intermediate != INTERMEDIATE else INTERMEDIATE
    return r.integer(keys)


def _gated(prefix: str, h: int, width: int, bias: bool) -> list[Linear]:
    return [Linear(prefix + "gate_proj", h, width, "gate", bias), Linear(prefix + "up_proj", h, width, "up", bias),
            Linear(prefix + "down_proj", width, h, "down", bias)]


def _dense_mlp(family: Family, h: int, inter: int, bias: bool) -> list[Linear]:
    p = family.mlp_paths
    if family.builder == "qwen":  # out = c_proj(w1(x) * silu(w2(x)))
        return [Linear(p[0], h, inter, "up", bias), Linear(p[1], h, inter, "gate", bias),
                Linear(p[2], inter, h, "down", bias)]
    if family.mlp == "gated":
        return [Linear(p[0], h, inter, "gate", bias), Linear(p[1], h, inter, "up", bias),
                Linear(p[2], inter, h, "down", bias)]
    if family.mlp == "gated_fused":
        return [Linear(p[0], h, 2 * inter, "gate_up", bias), Linear(p[1], inter, h, "down", bias)]
    return [Linear(p[0], h, inter, "up", bias), Linear(p[1], inter, h, "down", bias)]


def _moe_layers(rule: str, r: _Reader, layers: int) -> set[int]:
    if rule == "first_k_dense":
        first = r.integer("first_k_dense_replace", default=0, minimum=0)
        return set(range(first, layers))
    if rule == "sparse_step":
        step = r.integer("decoder_sparse_step", default=1)
        only_mlp = set(r.int_list("mlp_only_layers"))
        return {i for i in range(layers) if i not in only_mlp and (i + 1) % step == 0}
    return set(range(layers))


def _siglip_params(v: _Reader, text_hidden: int) -> int:
    """Return SigLIP's vision tower plus Gemma 3's projector (mm_input_projection, mm_soft_emb_norm)."""
    h, inter, layers = v.integer("hidden_size"), v.integer("intermediate_size"), v.integer("num_hidden_layers")
    channels, image, patch = v.integer("num_channels"), v.integer("image_size"), v.integer("patch_size")
    total = channels * patch * patch * h + h + (image // patch) ** 2 * h  # patch conv + positions
    per_layer = 4 * (h * h + h) + (h * inter + inter) + (inter * h + h) + 2 * 2 * h
    total += layers * per_layer + 2 * h  # post_layernorm
    if v.flag("vision_use_head", True):
        total += h + (3 * h * h + 3 * h) + (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h)
    return total + h * text_hidden + h
