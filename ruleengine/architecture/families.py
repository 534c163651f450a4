"""The family table: how each ``model_type`` names and builds its decoder layers.

One row per Hugging Face ``model_type``. Columns say which config keys give the shape (with the
transformers default for keys a ``config.json`` may omit, from ``configuration_<family>.py``),
how attention and the MLP are laid out (module paths inside a decoder layer, as transformers
names them), which projections carry biases, the norm and how many per layer, q/k norms, tied
embeddings, parallel attention, positions (rotary with a partial factor, learned, ALiBi), the
sliding window and, for mixture-of-experts families, the expert layout. A column holding a
string that names a config key is read from the config (``qkv_bias="attention_bias"``); a bool
is a constant of the family.

tests/ruleengine/test_architecture.py builds every family with transformers on the meta device
and checks the closed form against it, so a row that disagrees with transformers fails a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Config keys for the common fields, in the order they are tried (GPT-2 and older Falcon/OPT
# configs use their own names; transformers maps them through ``attribute_map``).
HIDDEN = ("hidden_size", "n_embd", "d_model", "n_embed", "dim")
LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num", "n_kv_heads")
INTERMEDIATE = ("intermediate_size", "ffn_hidden_size", "n_inner", "ffn_dim", "d_ff")
VOCAB = ("vocab_size", "padded_vocab_size")
EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")

LLAMA_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
GATED_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class Moe:
    """How a family lays out its mixture-of-experts layers.

    ``experts``/``top_k``/``width``: config keys for the routed experts per layer, the experts
    per token and one expert's width. ``shared``: ``""`` (none), ``qwen2`` (one shared expert of
    ``shared_expert_intermediate_size`` plus a sigmoid gate ``shared_expert_gate``, h -> 1) or
    ``deepseek`` (``n_shared_experts`` fused into one MLP of ``moe_intermediate_size *
    n_shared_experts``). ``layers``: which layers are MoE: ``all``, ``sparse_step`` (layer i when
    ``(i + 1) % decoder_sparse_step == 0`` and i is not in ``mlp_only_layers``) or
    ``first_k_dense`` (from ``first_k_dense_replace`` on).
    """

    experts: str
    width: str
    top_k: str = "num_experts_per_tok"
    shared: str = ""
    layers: str = "all"


@dataclass(frozen=True)
class Family:
    """One row of the family table (see the module docstring for the columns)."""

    label: str
    defaults: dict[str, Any]
    attention: tuple[str, ...] = LLAMA_ATTN  # 4 paths: q, k, v, o; 2 paths: fused qkv, o; () = MLA
    mlp: str = "gated"  # "gated" (gate, up, down) | "gated_fused" (gate_up, down) | "plain" (up, down)
    mlp_paths: tuple[str, ...] = GATED_MLP
    qkv_bias: bool | str = False
    o_bias: bool | str = False
    mlp_bias: bool | str = False
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm" | "layernorm_nobias" | "none"
    norms_per_layer: int = 2  # parallel-residual families override this in the builder
    final_norm: bool = True
    qk_norm: str = ""  # "" | "head" (RMSNorm over head_dim) | "head_ln" (LayerNorm over head_dim, bias)
    #                    | "per_head" (one weight per head and dim) | "full" (RMSNorm over all heads)
    qk_norm_key: bool | str = True  # config key that switches the q/k norm on, or a constant
    parallel: bool | str = False
    positions: str = "rotary"  # "rotary" | "learned" | "alibi"
    partial_rotary: float | str = 1.0  # constant or the config key of the rotated share
    sliding_window: str = ""  # config key of the window ("" = none)
    lm_head_bias: bool = False
    intermediate: tuple[str, ...] = INTERMEDIATE
    moe: Moe | None = None
    builder: str = "standard"  # "standard" | "opt" | "gpt2" | "falcon" | "qwen" | "deepseek"
    # peft's defaults when target_modules is None (peft utils/constants.py), keyed by method
    peft_defaults: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _peft(lora: tuple[str, ...] | None = ("q_proj", "v_proj"), ia3: tuple[str, ...] | None = None,
          adalora: tuple[str, ...] | None = None) -> dict[str, tuple[str, ...]]:
    out = {}
    if lora:
        out["lora"] = lora
    if ia3:
        out["ia3"] = ia3
    if adalora:
        out["adalora"] = adalora
    return out


QV = ("q_proj", "v_proj")
_LLAMA_LIKE_PEFT = _peft(QV, ("k_proj", "v_proj", "down_proj"), QV)
_QWEN_LIKE_PEFT = _peft(QV, ("q_proj", "v_proj", "down_proj"), QV)

FAMILIES: dict[str, Family] = {
    "llama": Family("Llama 1/2/3, CodeLlama, TinyLlama, Yi, DeepSeek (dense)",
                    {"tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False},
                    qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias",
                    peft_defaults=_LLAMA_LIKE_PEFT),
    "mistral": Family("Mistral 7B, Mistral-Nemo, Ministral", {"tie_word_embeddings": False, "num_key_value_heads": 8},
                      sliding_window="sliding_window", peft_defaults=_peft(QV, ("k_proj", "v_proj", "down_proj"))),
    "mixtral": Family("Mixtral 8x7B / 8x22B (MoE)",
                      {"tie_word_embeddings": False, "num_key_value_heads": 8, "num_local_experts": 8,
                       "num_experts_per_tok": 2},
                      sliding_window="sliding_window", moe=Moe("num_local_experts", "intermediate_size"),
                      peft_defaults=_peft(QV, ("k_proj", "v_proj"))),  # peft's IA3 row names v4's `w2`
    "qwen": Family("Qwen (v1) 1.8B-72B (remote code)",
                   {"tie_word_embeddings": False, "no_bias": True},
                   attention=("attn.c_attn", "attn.c_proj"), mlp_paths=("mlp.w1", "mlp.w2", "mlp.c_proj"),
                   qkv_bias=True, builder="qwen"),
    "qwen2": Family("Qwen1.5, Qwen2, Qwen2.5", {"tie_word_embeddings": False, "num_key_value_heads": 32},
                    qkv_bias=True, sliding_window="sliding_window", peft_defaults=_QWEN_LIKE_PEFT),
    "qwen2_moe": Family("Qwen1.5-MoE, Qwen2-MoE",
                        {"tie_word_embeddings": False, "num_key_value_heads": 16, "qkv_bias": True,
                         "num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
                         "shared_expert_intermediate_size": 5632, "decoder_sparse_step": 1, "mlp_only_layers": []},
                        qkv_bias="qkv_bias", sliding_window="sliding_window",
                        moe=Moe("num_experts", "moe_intermediate_size", shared="qwen2", layers="sparse_step")),
    "qwen3": Family("Qwen3 (dense)",
                    {"tie_word_embeddings": False, "attention_bias": False, "head_dim": 128, "num_key_value_heads": 32},
                    qkv_bias="attention_bias", o_bias="attention_bias", qk_norm="head",
                    sliding_window="sliding_window", peft_defaults=_QWEN_LIKE_PEFT),
    "qwen3_moe": Family("Qwen3-MoE (30B-A3B, 235B-A22B)",
                        {"tie_word_embeddings": False, "attention_bias": False, "num_key_value_heads": 4,
                         "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                         "decoder_sparse_step": 1, "mlp_only_layers": []},
                        qkv_bias="attention_bias", o_bias="attention_bias", qk_norm="head",
                        sliding_window="sliding_window",
                        moe=Moe("num_experts", "moe_intermediate_size", layers="sparse_step")),
    "phi": Family("Phi-1, Phi-1.5, Phi-2", {"tie_word_embeddings": False, "qk_layernorm": False},
                  attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense"),
                  mlp="plain", mlp_paths=("mlp.fc1", "mlp.fc2"), qkv_bias=True, o_bias=True, mlp_bias=True,
                  norm="layernorm", norms_per_layer=1, qk_norm="head_ln", qk_norm_key="qk_layernorm",
                  parallel=True, partial_rotary=0.5, lm_head_bias=True,
                  peft_defaults=_peft(("q_proj", "v_proj", "fc1", "fc2"), ("q_proj", "v_proj", "fc2"))),
    "phi3": Family("Phi-3, Phi-3.5-mini, Phi-4(-mini)", {"tie_word_embeddings": False},
                   attention=("self_attn.qkv_proj", "self_attn.o_proj"), mlp="gated_fused",
                   mlp_paths=("mlp.gate_up_proj", "mlp.down_proj"), sliding_window="sliding_window"),
    "gemma": Family("Gemma 1 (2B, 7B)",
                    {"tie_word_embeddings": True, "attention_bias": False, "head_dim": 256, "num_key_value_heads": 16},
                    qkv_bias="attention_bias", o_bias="attention_bias", peft_defaults=_QWEN_LIKE_PEFT),
    "gemma2": Family("Gemma 2 (2B, 9B, 27B)",
                     {"tie_word_embeddings": True, "attention_bias": False, "head_dim": 256, "num_key_value_heads": 4},
                     qkv_bias="attention_bias", o_bias="attention_bias", norms_per_layer=4,
                     sliding_window="sliding_window", peft_defaults=_QWEN_LIKE_PEFT),
    "gemma3_text": Family("Gemma 3 text-only (1B) and the language model of Gemma 3",
                          {"tie_word_embeddings": True, "attention_bias": False, "head_dim": 256,
                           "num_key_value_heads": 4},
                          qkv_bias="attention_bias", o_bias="attention_bias", norms_per_layer=4, qk_norm="head",
                          sliding_window="sliding_window", peft_defaults=_QWEN_LIKE_PEFT),
    "gpt_neox": Family("GPT-NeoX-20B, Pythia, RedPajama-INCITE",
                       {"tie_word_embeddings": False, "attention_bias": True, "use_parallel_residual": True},
                       attention=("attention.query_key_value", "attention.dense"), mlp="plain",
                       mlp_paths=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"), qkv_bias="attention_bias",
                       o_bias="attention_bias", mlp_bias=True, norm="layernorm", parallel="use_parallel_residual",
                       partial_rotary="rotary_pct",
                       peft_defaults=_peft(("query_key_value",), ("query_key_value", "dense_4h_to_h"),
                                           ("query_key_value",))),
    "stablelm": Family("StableLM-2, StableLM-3B-4E1T, StableCode",
                       {"tie_word_embeddings": False, "num_key_value_heads": 32, "use_qkv_bias": False,
                        "qk_layernorm": False, "use_parallel_residual": False},
                       qkv_bias="use_qkv_bias", norm="layernorm", qk_norm="per_head", qk_norm_key="qk_layernorm",
                       parallel="use_parallel_residual", partial_rotary=0.25, peft_defaults=_peft(QV)),
    "falcon": Family("Falcon 7B/40B/180B, Falcon2-11B",
                     {"tie_word_embeddings": True, "parallel_attn": True, "bias": False, "multi_query": True,
                      "new_decoder_architecture": False, "alibi": False},
                     attention=("self_attention.query_key_value", "self_attention.dense"), mlp="plain",
                     mlp_paths=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"), qkv_bias="bias", o_bias="bias",
                     mlp_bias="bias", norm="layernorm", parallel="parallel_attn", builder="falcon",
                     intermediate=("ffn_hidden_size",),
                     peft_defaults=_peft(("query_key_value",), ("query_key_value", "dense_4h_to_h"))),
    "gpt2": Family("GPT-2, DistilGPT-2", {"tie_word_embeddings": True, "n_positions": 1024},
                   attention=("attn.c_attn", "attn.c_proj"), mlp="plain", mlp_paths=("mlp.c_fc", "mlp.c_proj"),
                   qkv_bias=True, o_bias=True, mlp_bias=True, norm="layernorm", positions="learned",
                   partial_rotary=0.0, intermediate=("n_inner",), builder="gpt2",
                   peft_defaults=_peft(("c_attn",), ("c_attn", "mlp.c_proj"), ("c_attn",))),
    "starcoder2": Family("StarCoder2 3B/7B/15B",
                         {"tie_word_embeddings": True, "num_key_value_heads": 2, "use_bias": True},
                         mlp="plain", mlp_paths=("mlp.c_fc", "mlp.c_proj"), qkv_bias="use_bias", o_bias="use_bias",
                         mlp_bias="use_bias", norm="layernorm", sliding_window="sliding_window"),
    "olmo": Family("OLMo 1 (1B, 7B)", {"tie_word_embeddings": False, "attention_bias": False},
                   qkv_bias="attention_bias", o_bias="attention_bias", norm="none", final_norm=False),
    "olmo2": Family("OLMo 2 (7B, 13B, 32B)", {"tie_word_embeddings": False, "attention_bias": False},
                    qkv_bias="attention_bias", o_bias="attention_bias", qk_norm="full"),
    "cohere": Family("Command-R, Command-R+, Aya-23",
                     {"tie_word_embeddings": True, "attention_bias": False, "use_qk_norm": False},
                     qkv_bias="attention_bias", o_bias="attention_bias", norm="layernorm_nobias", norms_per_layer=1,
                     qk_norm="per_head", qk_norm_key="use_qk_norm", parallel=True),
    "deepseek_v2": Family("DeepSeek-V2, DeepSeek-V2-Lite, DeepSeek-Coder-V2 (MoE + MLA)",
                          {"tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
                           "first_k_dense_replace": 0, "kv_lora_rank": 512, "q_lora_rank": 1536,
                           "n_routed_experts": 64, "n_shared_experts": 2, "qk_nope_head_dim": 128,
                           "qk_rope_head_dim": 64, "v_head_dim": 128, "moe_intermediate_size": 1407},
                          attention=(), qkv_bias="attention_bias", o_bias="attention_bias", builder="deepseek",
                          moe=Moe("n_routed_experts", "moe_intermediate_size", shared="deepseek",
                                  layers="first_k_dense")),
    "deepseek_v3": Family("DeepSeek-V3, DeepSeek-R1, Kimi-K2 (MoE + MLA)",
                          {"tie_word_embeddings": False, "attention_bias": False, "num_key_value_heads": 128,
                           "first_k_dense_replace": 3, "kv_lora_rank": 512, "q_lora_rank": 1536,
                           "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
                           "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
                           "moe_intermediate_size": 2048},
                          attention=(), qkv_bias="attention_bias", o_bias="attention_bias", builder="deepseek",
                          moe=Moe("n_routed_experts", "moe_intermediate_size", shared="deepseek",
                                  layers="first_k_dense")),
    "opt": Family("OPT 125M-66B",
                  {"tie_word_embeddings": True, "enable_bias": True, "do_layer_norm_before": True,
                   "layer_norm_elementwise_affine": True, "_remove_final_layer_norm": False},
                  attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
                  mlp="plain", mlp_paths=("fc1", "fc2"), norm="layernorm", positions="learned", partial_rotary=0.0,
                  intermediate=("ffn_dim",), builder="opt",
                  peft_defaults=_peft(QV, ("q_proj", "k_proj", "fc2"),
                                      ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))),
}
# Model types that reuse a row: Gemma 3's multimodal config holds a gemma3_text config in text_config.
ALIASES = {"gemma3": "gemma3_text"}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted((*FAMILIES, *ALIASES)))

# SigLIP vision tower defaults (transformers SiglipVisionConfig) for Gemma 3's vision_config.
SIGLIP_DEFAULTS: dict[str, Any] = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                                   "num_channels": 3, "image_size": 224, "patch_size": 16, "vision_use_head": True}

# The family assumed for an unknown model_type that has the common fields, and what that assumes.
ASSUMED_FAMILY = "llama"
ASSUMPTIONS = ("separate q/k/v/o projections without biases", "a gated (SwiGLU) MLP gate_proj/up_proj/down_proj",
               "two RMSNorms per layer and a final norm", "rotary positions (no learned position table)")
