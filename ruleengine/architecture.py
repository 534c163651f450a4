"""Model architecture: read from a Hugging Face ``config.json`` or inferred from a parameter count.

The memory model needs more than a parameter count: the width of every linear layer (LoRA and
IA3 counts, activation sizes), the vocabulary (logits), which parameters are linear layers (only
those are 4-bit quantized by QLoRA) and the number of layers. This module computes all of it from
a config, with no download and without torch: parameter counts are exact for the supported
families and equal ``sum(p.numel() for p in model.parameters())`` of the transformers model
(tests/ruleengine/test_architecture.py builds each fixture on the meta device to check).

Supported ``model_type`` values: llama, mistral, qwen2, qwen3 (gated SwiGLU MLP, RMSNorm, rotary
positions) and opt (plain fc1/fc2 MLP, LayerNorm with bias, learned positions).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

GATED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_MODEL_TYPES = GATED_FAMILIES + ("opt",)

# Modules per decoder layer, in forward order, with the peft/HF names.
GATED_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
GATED_MLP = ("gate_proj", "up_proj", "down_proj")
OPT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
OPT_MLP = ("fc1", "fc2")

# Smallest parameter count infer_from_params accepts: below it the embeddings of any plausible
# vocabulary would be most of the model and the inferred shape would be meaningless.
MIN_INFER_PARAMS = 5e7


class ArchitectureError(ValueError):
    """A config that cannot be turned into an Architecture; ``field`` names the offending JSON key."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.message} (field `{self.field}`)" if self.field else self.message


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer as the memory model sees it.

    ``params`` is the exact total parameter count (for ``source == "config"``) or the count the user
    gave (for ``source == "inferred"``; the shape then only approximates it, see
    :func:`infer_from_params` and :meth:`param_breakdown`).
    """

    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    mlp: str  # "gated" (SwiGLU gate/up/down) | "plain" (fc1/fc2)
    model_type: str
    params: int
    source: str  # "config" | "inferred"
    attention_bias: bool = False  # q/k/v carry a bias (qwen2: always; llama: config.attention_bias)
    output_bias: bool = False  # o_proj/out_proj carries a bias
    mlp_bias: bool = False
    norm: str = "rmsnorm"  # "rmsnorm" (weight only) | "layernorm" (weight and bias)
    qk_norm: bool = False  # qwen3: RMSNorm over head_dim on q and k
    word_embed_proj_dim: int = 0  # opt: embedding width when it differs from hidden_size (0 = same)
    position_embeddings: int = 0  # opt: rows of the learned position table (max positions + 2)
    final_norm: bool = True

    # --- shapes -------------------------------------------------------------------------------

    @property
    def q_dim(self) -> int:
        """Return the output width of the query projection (heads x head_dim)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Return the output width of the key and of the value projection (kv heads x head_dim)."""
        return self.num_kv_heads * self.head_dim

    @property
    def embed_dim(self) -> int:
        """Return the width of the token embedding and of the lm_head input."""
        return self.word_embed_proj_dim or self.hidden_size

    def attention_modules(self) -> tuple[str, ...]:
        """Return the names of the attention linear layers (q, k, v, output projection)."""
        return GATED_ATTENTION if self.mlp == "gated" else OPT_ATTENTION

    def mlp_modules(self) -> tuple[str, ...]:
        """Return the names of the MLP linear layers."""
        return GATED_MLP if self.mlp == "gated" else OPT_MLP

    def feedforward_modules(self) -> tuple[str, ...]:
        """Return the modules peft's IA3 treats as feed-forward by default (scale the input, not the output)."""
        return ("down_proj",) if self.mlp == "gated" else ("fc2",)

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """Return the linear layers of one decoder layer as ``{name: (d_in, d_out)}`` in forward order.

        Names are the ones peft and transformers use, so they are valid ``target_modules``.
        """
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.q_dim, self.kv_dim
        attn = self.attention_modules()
        out: dict[str, tuple[int, int]] = {attn[0]: (h, q), attn[1]: (h, kv), attn[2]: (h, kv), attn[3]: (q, h)}
        if self.mlp == "gated":
            out.update({"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)})
        else:
            out.update({"fc1": (h, i), "fc2": (i, h)})
        return out

    # --- parameter counts ---------------------------------------------------------------------

    def layer_linear_params(self) -> int:
        """Return the weight elements (no biases) of the linear layers of one decoder layer."""
        return sum(d_in * d_out for d_in, d_out in self.linear_modules().values())

    def layer_params(self) -> int:
        """Return all parameters of one decoder layer: linear weights, biases and norms."""
        h, q, kv, i = self.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size
        n = self.layer_linear_params()
        if self.attention_bias:
            n += q + 2 * kv
        if self.output_bias:
            n += h
        if self.mlp_bias:
            n += 2 * i + h if self.mlp == "gated" else i + h
        n += 2 * {"layernorm": 2 * h, "rmsnorm": h}.get(self.norm, 0)
        if self.qk_norm:
            n += 2 * self.head_dim
        return n

    def param_breakdown(self) -> dict[str, int]:
        """Return ``{"linear", "embedding", "other"}`` parameter counts that sum to ``params``.

        ``linear``: weights of the decoder layers' linear layers (what QLoRA quantizes to 4 bits);
        ``embedding``: token embedding plus an untied lm_head; ``other``: biases, norms, learned
        positions, OPT's project_in/out. For an inferred architecture the embedding and other parts
        come from the shape and the rest of the given count is taken as linear weights.
        """
        linear = self.num_layers * self.layer_linear_params()
        embedding = self.vocab_size * self.embed_dim * (1 if self.tie_word_embeddings else 2)
        other = self.params - linear - embedding
        if self.source == "inferred":
            other = shape_params(self) - embedding - self.num_layers * self.layer_linear_params()
            linear = max(self.params - embedding - other, 0)
        return {"linear": int(linear), "embedding": int(embedding), "other": int(other)}


# --- from a config --------------------------------------------------------------------------

# transformers' defaults for keys a config.json may leave out (configuration_<family>.py)
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False},
    "mistral": {"tie_word_embeddings": False},
    "qwen2": {"tie_word_embeddings": False},
    "qwen3": {"tie_word_embeddings": False, "attention_bias": False, "head_dim": 128},
    "opt": {"tie_word_embeddings": True, "enable_bias": True, "do_layer_norm_before": True,
            "layer_norm_elementwise_affine": True, "_remove_final_layer_norm": False},
}


def _int_field(config: dict, key: str, origin: str, *, default: int | None = None, minimum: int = 1) -> int:
    if key not in config or config[key] is None:
        if default is not None:
            return default
        raise ArchitectureError(f"{origin}: required key `{key}` is missing", key)
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArchitectureError(f"{origin}: `{key}` must be an integer, got {value!r}", key)
    if value < minimum:
        raise ArchitectureError(f"{origin}: `{key}` must be >= {minimum}, got {value}", key)
    return value


def _bool_field(config: dict, key: str, origin: str, default: bool) -> bool:
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ArchitectureError(f"{origin}: `{key}` must be true or false, got {value!r}", key)
    return value


def from_hf_config(config: dict, origin: str = "<config>") -> Architecture:
    """Return the Architecture a Hugging Face ``config.json`` mapping describes, counting parameters exactly.

    ``origin`` names the config in error messages. Raises ArchitectureError (with the offending key
    in ``field``) when ``model_type`` is missing or unsupported, a required key is missing, or a
    value has the wrong type or an impossible value (e.g. heads not dividing the hidden size).
    """
    if not isinstance(config, dict):
        raise ArchitectureError(f"{origin}: a config must be a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ArchitectureError(f"{origin}: required key `model_type` is missing "
                                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})", "model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ArchitectureError(f"{origin}: unsupported model_type `{model_type}`; supported: "
                                f"{', '.join(SUPPORTED_MODEL_TYPES)}", "model_type")
    cfg = {**_FAMILY_DEFAULTS[model_type], **{k: v for k, v in config.items() if v is not None}}
    if model_type == "opt":
        return _opt(cfg, origin)
    return _gated(cfg, model_type, origin)


def _gated(cfg: dict, model_type: str, origin: str) -> Architecture:
    h = _int_field(cfg, "hidden_size", origin)
    layers = _int_field(cfg, "num_hidden_layers", origin)
    inter = _int_field(cfg, "intermediate_size", origin)
    heads = _int_field(cfg, "num_attention_heads", origin)
    kv = _int_field(cfg, "num_key_value_heads", origin, default=heads)
    vocab = _int_field(cfg, "vocab_size", origin)
    if "head_dim" in cfg:
        head_dim = _int_field(cfg, "head_dim", origin)
    else:
        if h % heads:
            raise ArchitectureError(f"{origin}: hidden_size {h} is not divisible by num_attention_heads {heads}",
                                    "num_attention_heads")
        head_dim = h // heads
    if heads % kv:
        raise ArchitectureError(f"{origin}: num_attention_heads {heads} is not a multiple of "
                                f"num_key_value_heads {kv}", "num_key_value_heads")
    tie = _bool_field(cfg, "tie_word_embeddings", origin, False)
    if model_type == "qwen2":
        attn_bias, out_bias, mlp_bias = True, False, False
    elif model_type == "mistral":
        attn_bias = out_bias = mlp_bias = False
    else:  # llama, qwen3: q/k/v/o all follow attention_bias; llama also has mlp_bias
        attn_bias = out_bias = _bool_field(cfg, "attention_bias", origin, False)
        mlp_bias = _bool_field(cfg, "mlp_bias", origin, False) if model_type == "llama" else False
    arch = Architecture(
        hidden_size=h, num_layers=layers, intermediate_size=inter, num_attention_heads=heads, num_kv_heads=kv,
        head_dim=head_dim, vocab_size=vocab, tie_word_embeddings=tie, mlp="gated", model_type=model_type,
        params=0, source="config", attention_bias=attn_bias, output_bias=out_bias, mlp_bias=mlp_bias,
        norm="rmsnorm", qk_norm=model_type == "qwen3",
    )
    return _with_params(arch, shape_params(arch))


def _opt(cfg: dict, origin: str) -> Architecture:
    h = _int_field(cfg, "hidden_size", origin)
    layers = _int_field(cfg, "num_hidden_layers", origin)
    ffn = _int_field(cfg, "ffn_dim", origin)
    heads = _int_field(cfg, "num_attention_heads", origin)
    vocab = _int_field(cfg, "vocab_size", origin)
    max_pos = _int_field(cfg, "max_position_embeddings", origin)
    proj = _int_field(cfg, "word_embed_proj_dim", origin, default=h)
    if h % heads:
        raise ArchitectureError(f"{origin}: hidden_size {h} is not divisible by num_attention_heads {heads}",
                                "num_attention_heads")
    bias = _bool_field(cfg, "enable_bias", origin, True)
    affine = _bool_field(cfg, "layer_norm_elementwise_affine", origin, True)
    pre_norm = _bool_field(cfg, "do_layer_norm_before", origin, True)
    final = pre_norm and not _bool_field(cfg, "_remove_final_layer_norm", origin, False)
    tie = _bool_field(cfg, "tie_word_embeddings", origin, True)
    arch = Architecture(
        hidden_size=h, num_layers=layers, intermediate_size=ffn, num_attention_heads=heads, num_kv_heads=heads,
        head_dim=h // heads, vocab_size=vocab, tie_word_embeddings=tie, mlp="plain", model_type="opt", params=0,
        source="config", attention_bias=bias, output_bias=bias, mlp_bias=bias,
        norm="layernorm" if affine else "none", word_embed_proj_dim=proj if proj != h else 0,
        position_embeddings=max_pos + 2, final_norm=final,
    )
    return _with_params(arch, shape_params(arch))


def _with_params(arch: Architecture, total: int) -> Architecture:
    return Architecture(**{**arch.__dict__, "params": int(total)})


def load_hf_config(path: str) -> Architecture:
    """Return the Architecture of the Hugging Face ``config.json`` at ``path`` (a file or a model directory).

    Raises ArchitectureError when the file is missing, is not JSON, or describes an unsupported or
    incomplete model (``field`` names the offending key; ``None`` for file-level problems).
    """
    import os

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


# --- inferred from a parameter count --------------------------------------------------------

# Known Llama-family shapes: (total params, hidden, layers, intermediate). The intermediate column is
# the running maximum so that every dimension grows with the parameter count (Llama-2-13B's 13824 is
# raised to Llama-3-8B's 14336); the inferred family must be monotone so that a larger model never
# gets a smaller estimate.
LLAMA_SHAPES: tuple[tuple[float, int, int, int], ...] = (
    (1.10e9, 2048, 22, 5632),     # TinyLlama-1.1B
    (3.21e9, 3072, 28, 8192),     # Llama-3.2-3B
    (6.74e9, 4096, 32, 11008),    # Llama-2-7B
    (8.03e9, 4096, 32, 14336),    # Llama-3-8B
    (13.0e9, 5120, 40, 14336),    # Llama-2-13B (intermediate 13824 raised, see above)
    (33.7e9, 8192, 48, 22016),    # CodeLlama-34B
    (69.0e9, 8192, 80, 28672),    # Llama-2-70B
    (405.9e9, 16384, 126, 53248),  # Llama-3.1-405B
)
INFERRED_HEAD_DIM = 128
INFERRED_MAX_KV_HEADS = 8
SMALL_VOCAB, LARGE_VOCAB = 32000, 128256  # Llama-2 and Llama-3 tokenizers
LARGE_VOCAB_FROM = 3e9  # Llama-3.2-3B and up use the 128k vocabulary
UNTIED_FROM = 1e9


def _interp(n: float, column: int) -> float:
    xs = [math.log(s[0]) for s in LLAMA_SHAPES]
    ys = [float(s[column]) for s in LLAMA_SHAPES]
    x = math.log(n)
    if x <= xs[0]:  # below TinyLlama: dimensions shrink like the cube root of the count
        return ys[0] * (n / LLAMA_SHAPES[0][0]) ** (1 / 3)
    if x >= xs[-1]:
        return ys[-1] * (n / LLAMA_SHAPES[-1][0]) ** (1 / 3)
    for k in range(len(xs) - 1):
        if xs[k] <= x <= xs[k + 1]:
            t = (x - xs[k]) / (xs[k + 1] - xs[k])
            return math.exp(math.log(ys[k]) + t * (math.log(ys[k + 1]) - math.log(ys[k])))
    raise AssertionError("unreachable")


def infer_from_params(n_params: float) -> Architecture:
    """Return a plausible Llama-family Architecture for a model of ``n_params`` parameters.

    Hidden size, layers and MLP width are interpolated (log-log) between known Llama shapes
    (:data:`LLAMA_SHAPES`) and rounded down (hidden to a multiple of 128, MLP width to 256), heads
    are 128 wide with at most 8 KV heads (GQA), the vocabulary is 128256 from 3B up and 32000 below,
    and embeddings are tied below 1B. Every dimension is non-decreasing in ``n_params``. The
    returned ``params`` is ``n_params`` itself (``source="inferred"``); the shape's own count is
    within 20% of it from 150M parameters up (tests/ruleengine/test_architecture.py), and
    :meth:`Architecture.param_breakdown` counts the difference as linear-layer weights. Raises ArchitectureError (field ``params``) for counts below 50M or not finite.
    """
    if not isinstance(n_params, (int, float)) or isinstance(n_params, bool) or not math.isfinite(n_params):
        raise ArchitectureError(f"cannot infer an architecture from {n_params!r} parameters", "params")
    if n_params < MIN_INFER_PARAMS:
        raise ArchitectureError(f"cannot infer an architecture for {n_params:.3g} parameters (minimum "
                                f"{MIN_INFER_PARAMS:.0e}); give model.config for small models", "params")
    h = max(256, int(_interp(n_params, 1) + 1e-6) // 128 * 128)
    layers = max(2, int(_interp(n_params, 2) + 1e-6))
    inter = max(512, int(_interp(n_params, 3) + 1e-6) // 256 * 256)
    heads = h // INFERRED_HEAD_DIM
    kv = min(INFERRED_MAX_KV_HEADS, heads)  # not necessarily a divisor of heads: only widths matter here
    vocab = LARGE_VOCAB if n_params >= LARGE_VOCAB_FROM else SMALL_VOCAB
    return Architecture(
        hidden_size=h, num_layers=layers, intermediate_size=inter, num_attention_heads=heads, num_kv_heads=kv,
        head_dim=INFERRED_HEAD_DIM, vocab_size=vocab, tie_word_embeddings=n_params < UNTIED_FROM, mlp="gated",
        model_type="llama", params=int(round(n_params)), source="inferred",
    )


def shape_params(arch: Architecture) -> int:
    """Return the parameter count the shape of ``arch`` implies (equals ``arch.params`` for a config).

    Counts the token embedding, an untied lm_head, every decoder layer (:meth:`Architecture.layer_params`),
    the final norm, and for OPT the learned positions and project_in/project_out.
    """
    h = arch.hidden_size
    total = arch.vocab_size * arch.embed_dim * (1 if arch.tie_word_embeddings else 2)
    total += arch.num_layers * arch.layer_params()
    total += arch.position_embeddings * h
    if arch.word_embed_proj_dim:
        total += 2 * h * arch.word_embed_proj_dim  # project_in and project_out, no bias
    if arch.final_norm:
        total += {"layernorm": 2 * h, "rmsnorm": h}.get(arch.norm, 0)
    return int(total)
