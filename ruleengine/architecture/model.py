"""The Architecture object: a decoder-only transformer as the memory model sees it.

An Architecture holds the scalar shape (hidden size, layers, heads, ...) that the memory model's
formulas use, and the exact structure behind it: groups of identical decoder layers
(:class:`LayerGroup`), each with its linear layers (:class:`Linear`: peft name, shape, bias,
instances per layer) and its other parameters (norms). Dense models have one group; a
mixture-of-experts model has a group of MoE layers and, where the family has them, a group of
dense layers (DeepSeek's first ``first_k_dense_replace`` layers, Qwen-MoE's ``mlp_only_layers``).

Every parameter count here is computed, never looked up: ``params`` equals
``sum(p.numel() for p in model.parameters())`` of the transformers model (checked per family in
tests/ruleengine/test_architecture.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

T = TypeVar("T")

# Roles of linear layers. Attention: separate q/k/v/o, fused qkv, DeepSeek MLA's low-rank
# projections. MLP: gate/up/down (gate_up when fused), fc1/fc2 of a plain MLP ("up"/"down"),
# a MoE block's router and Qwen-MoE's shared-expert gate.
ATTENTION_ROLES = ("q", "k", "v", "qkv", "o", "q_a", "q_b", "kv_a", "kv_b")
MLP_ROLES = ("router", "shared_gate", "gate", "up", "gate_up", "down")
KINDS = ("linear", "expert", "router")


class ArchitectureError(ValueError):
    """A config that cannot be turned into an Architecture; ``field`` names the offending JSON key."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.message} (field `{self.field}`)" if self.field else self.message


def _memo(method: Callable[[Any], T]) -> Callable[[Any], T]:
    """Compute a no-argument method of a frozen Architecture once per instance (read the result, never mutate it)."""
    name = "_memo_" + method.__name__

    @functools.wraps(method)
    def wrapper(self: Any) -> T:
        try:
            return self.__dict__[name]
        except KeyError:
            value = method(self)
            object.__setattr__(self, name, value)  # frozen dataclass: fields stay untouched, this is a cache
            return value

    return wrapper


@dataclass(frozen=True)
class Linear:
    """One linear map of a decoder layer.

    ``path`` is the module path inside a decoder layer as transformers names it
    (``self_attn.q_proj``, ``mlp.experts.gate_up_proj``); ``name`` the shortest suffix of it that is
    unique among the model's layer paths, which is a valid peft ``target_modules`` entry (peft
    matches a name against the end of the full module path). ``kind``:

    - ``linear``: an ``nn.Linear`` (or GPT-2's ``Conv1D``): what peft's ``all-linear`` and
      bitsandbytes' 4-bit quantization act on.
    - ``expert``: the routed experts of a MoE layer, one 3-D parameter ``(copies, d_out, d_in)``
      in transformers 5 (``MixtralExperts.gate_up_proj``). peft adapts it through
      ``target_parameters`` with one LoRA pair per expert; bitsandbytes does not quantize it.
    - ``router``: a MoE router's ``(experts, hidden)`` weight on a module that is not an
      ``nn.Linear`` (transformers 5's ``TopKRouter``); no adapter can target it.

    ``copies`` is the number of instances per layer: the routed experts for ``expert``, 1 otherwise.
    """

    path: str
    d_in: int
    d_out: int
    role: str
    bias: bool = False
    kind: str = "linear"
    copies: int = 1
    name: str = ""

    @property
    def block(self) -> str:
        """Return ``attention`` or ``mlp``: the sub-block of the decoder layer this map belongs to."""
        return "attention" if self.role in ATTENTION_ROLES else "mlp"

    @property
    def weight_params(self) -> int:
        """Return the weight elements of all ``copies`` (no bias)."""
        return self.copies * self.d_in * self.d_out

    @property
    def bias_params(self) -> int:
        """Return the bias elements of all ``copies`` (0 without bias)."""
        return self.copies * self.d_out if self.bias else 0


@dataclass(frozen=True)
class LayerGroup:
    """Decoder layers with identical parameters: ``kind`` ``dense`` or ``moe``, their 0-based ``layers``.

    ``other_params`` counts what is not a linear map: norms (input/post-attention/pre- and
    post-feed-forward), q/k norms, MLA's latent norms.
    """

    kind: str
    layers: tuple[int, ...]
    linears: tuple[Linear, ...]
    other_params: int

    @property
    def count(self) -> int:
        """Return how many decoder layers this group holds."""
        return len(self.layers)

    def linear_weight_params(self) -> int:
        """Return the weight elements of one layer's linear maps (experts and routers included, no biases)."""
        return sum(m.weight_params for m in self.linears)

    def params(self) -> int:
        """Return every parameter of one layer of this group."""
        return sum(m.weight_params + m.bias_params for m in self.linears) + self.other_params


def short_names(paths: list[tuple[str, str]]) -> dict[str, str]:
    """Return ``{path: name}``: for each ``(path, kind)`` the shortest dotted suffix no other path ends with.

    A suffix ``s`` of ``a.b.c`` is ``c``, ``b.c`` or ``a.b.c``; it is ambiguous when another distinct
    path equals it or ends with ``.s``. Expert parameters keep at least two components
    (``experts.down_proj``) so that they never read as a module name.
    """
    return dict(_short_names(tuple(paths)))


@functools.lru_cache(maxsize=256)  # a few layouts per family: every model size of a family has the same paths
def _short_names(paths: tuple[tuple[str, str], ...]) -> dict[str, str]:
    distinct = sorted({p for p, _ in paths})
    kinds = dict(paths)
    out: dict[str, str] = {}
    for path in distinct:
        parts = path.split(".")
        start = min(len(parts), 2) if kinds[path] == "expert" else 1
        for k in range(start, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if not any(o != path and (o == suffix or o.endswith("." + suffix)) for o in distinct):
                out[path] = suffix
                break
        else:
            out[path] = path
    return out


def name_groups(groups: list[LayerGroup]) -> tuple[LayerGroup, ...]:
    """Return ``groups`` with every Linear's ``name`` set by :func:`short_names` over all groups."""
    names = _short_names(tuple((m.path, m.kind) for g in groups for m in g.linears))
    return tuple(LayerGroup(g.kind, g.layers, tuple(Linear(m.path, m.d_in, m.d_out, m.role, m.bias, m.kind, m.copies,
                                                           names[m.path]) for m in g.linears), g.other_params)
                 for g in groups)


def norm_params(kind: str, width: int) -> int:
    """Return the parameters of one norm over ``width`` features: RMSNorm weight, LayerNorm weight + bias."""
    return {"rmsnorm": width, "layernorm": 2 * width, "layernorm_nobias": width}.get(kind, 0)


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer as the memory model sees it.

    ``params`` is the exact total parameter count (``source`` ``config``: closed form from the
    config; ``exact``: counted on a transformers model built on the meta device) or the count the
    user gave (``inferred``; the shape then only approximates it, see :func:`infer_from_params`
    and :meth:`param_breakdown`).

    The scalar fields describe a typical (the largest) decoder layer and are what the memory
    model's formulas read; ``layer_groups`` holds the exact per-layer structure. For a
    mixture-of-experts model ``intermediate_size`` is the width of a dense layer's MLP, or of one
    routed expert when every layer is MoE (Mixtral); ``moe_intermediate_size`` is one routed
    expert's width. For DeepSeek's MLA (``attention == "mla"``) ``head_dim`` is the query/key
    head width ``qk_nope_head_dim + qk_rope_head_dim`` and ``num_kv_heads`` equals the heads
    (the latent is expanded per head); ``v_head_dim`` is the value head width.

    ``warnings`` lists what was assumed rather than read (an unknown ``model_type``, a vision
    tower not modelled, ...); derive.py surfaces them as notes.
    """

    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    mlp: str  # "gated" (gate/up/down, also fused gate_up) | "plain" (fc1/fc2)
    model_type: str
    params: int
    source: str  # "config" | "exact" | "inferred"
    attention_bias: bool = False  # q/k/v carry a bias
    output_bias: bool = False  # the attention output projection carries a bias
    mlp_bias: bool = False
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm" (weight and bias) | "layernorm_nobias" | "none"
    norms_per_layer: int = 2  # normalizations in one decoder layer, with or without weights (gemma2/3: 4; parallel
    #                           blocks with one shared norm: 1)
    qk_norm: bool = False  # a norm over q and k (qwen3, gemma3, olmo2, ...)
    word_embed_proj_dim: int = 0  # opt: embedding width when it differs from hidden_size (0 = same)
    position_embeddings: int = 0  # rows of a learned position table (opt: max positions + 2; gpt2: n_positions)
    final_norm: bool = True
    # --- structure (exact per layer) -----------------------------------------------------------
    layer_groups: tuple[LayerGroup, ...] = ()  # empty: synthesized from the scalar fields
    top_params: int = -1  # parameters outside the layers and the embedding/lm_head weights (-1: from scalars)
    family: str = ""  # row of the family table (ruleengine/architecture/families.py)
    # --- what the family does (metadata for the memory model) ----------------------------------
    attention: str = "mha"  # "mha" (MHA, GQA and MQA) | "mla" (DeepSeek multi-head latent attention)
    parallel_attention: bool = False  # attention and MLP read the same input (GPT-J/NeoX, Falcon, Phi, Cohere)
    partial_rotary_factor: float = 1.0  # share of each head rotated by RoPE (0 = no rotary positions)
    positions: str = "rotary"  # "rotary" | "learned" | "alibi"
    sliding_window: int = 0  # tokens; 0 = full attention in every layer
    sliding_window_layers: int = 0  # layers that use the window
    lm_head_bias: bool = False
    vision_params: int = 0  # parameters of a vision tower + projector counted in ``params`` (gemma3)
    # --- mixture of experts --------------------------------------------------------------------
    num_experts: int = 0  # routed experts per MoE layer (0 = dense model)
    num_experts_per_tok: int = 0  # experts each token is routed to (top-k)
    num_shared_experts: int = 0  # experts every token passes through (Qwen-MoE: 1; DeepSeek: n_shared_experts)
    moe_intermediate_size: int = 0  # width of one routed expert
    shared_expert_intermediate_size: int = 0  # total width of the shared expert(s)
    # --- multi-head latent attention (DeepSeek-V2/V3) -------------------------------------------
    q_lora_rank: int = 0  # 0: q is projected directly
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    warnings: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.layer_groups:
            object.__setattr__(self, "layer_groups", _scalar_groups(self))
        if self.top_params < 0:
            object.__setattr__(self, "top_params", _scalar_top_params(self))

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

    @_memo
    def linears(self) -> dict[str, Linear]:
        """Return every distinct linear map of the decoder layers by peft name, in forward order.

        A model with dense and MoE layers lists the union; :meth:`module_counts` says how many
        instances of each exist.
        """
        out: dict[str, Linear] = {}
        for group in self.layer_groups:
            for m in group.linears:
                out.setdefault(m.name, m)
        return out

    @_memo
    def attention_modules(self) -> tuple[str, ...]:
        """Return the names of the attention linear layers in forward order (q, k, v, output projection)."""
        return tuple(n for n, m in self.linears().items() if m.block == "attention")

    @_memo
    def mlp_modules(self) -> tuple[str, ...]:
        """Return the names of the MLP linear layers; the last one is an output (down) projection."""
        mlp = [n for n, m in self.linears().items() if m.block == "mlp"]
        downs = [n for n in mlp if self.linears()[n].role == "down"]
        return tuple([n for n in mlp if n not in downs] + downs)

    @_memo
    def feedforward_modules(self) -> tuple[str, ...]:
        """Return the modules peft's IA3 treats as feed-forward by default (scale the input, not the output)."""
        return tuple(n for n, m in self.linears().items() if m.role == "down" and m.kind == "linear")

    @_memo
    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """Return the linear layers of one decoder layer as ``{name: (d_in, d_out)}`` in forward order.

        Names are the ones peft and transformers use, so they are valid ``target_modules``. For a
        MoE model the routed experts appear once (``experts.gate_up_proj``: the shape of one
        expert) and so does the router; see :meth:`module_counts` for the instances.
        """
        return {n: (m.d_in, m.d_out) for n, m in self.linears().items()}

    @_memo
    def module_counts(self) -> dict[str, int]:
        """Return ``{name: instances in the whole model}``: layers holding it x copies per layer (experts)."""
        out: dict[str, int] = {}
        for group in self.layer_groups:
            for m in group.linears:
                out[m.name] = out.get(m.name, 0) + group.count * m.copies
        return out

    @_memo
    def active_module_counts(self) -> dict[str, float]:
        """Return ``{name: instances one token passes through in the whole model}``.

        Routed experts count ``num_experts_per_tok`` per MoE layer instead of all of them; this is
        what activations (and forward FLOPs) scale with.
        """
        out: dict[str, float] = {}
        for group in self.layer_groups:
            for m in group.linears:
                per_layer = min(m.copies, self.num_experts_per_tok or m.copies) if m.kind == "expert" else m.copies
                out[m.name] = out.get(m.name, 0.0) + group.count * per_layer
        return out

    # --- mixture of experts -------------------------------------------------------------------

    @property
    def is_moe(self) -> bool:
        """Return True for a mixture-of-experts model (some layer has routed experts)."""
        return any(g.kind == "moe" for g in self.layer_groups)

    @property
    def num_moe_layers(self) -> int:
        """Return the number of decoder layers with routed experts."""
        return sum(g.count for g in self.layer_groups if g.kind == "moe")

    @property
    def num_dense_layers(self) -> int:
        """Return the number of decoder layers with a dense MLP."""
        return sum(g.count for g in self.layer_groups if g.kind == "dense")

    @_memo
    def expert_params(self) -> int:
        """Return the weights of all routed experts of all layers (what top-k routing leaves mostly idle)."""
        return sum(g.count * m.weight_params for g in self.layer_groups for m in g.linears if m.kind == "expert")

    @property
    def active_params(self) -> int:
        """Return the parameters one token uses: all but the routed experts it is not sent to (= params if dense)."""
        if not self.is_moe or not self.num_experts:
            return int(self.params)
        idle = self.expert_params() * (1 - min(self.num_experts_per_tok, self.num_experts) / self.num_experts)
        return int(round(self.params - idle))

    # --- parameter counts ---------------------------------------------------------------------

    @_memo
    def layer_linear_params(self) -> int:
        """Return the linear weight elements (no biases) of the largest decoder layer."""
        return max(g.linear_weight_params() for g in self.layer_groups)

    @_memo
    def layer_params(self) -> int:
        """Return all parameters of the largest decoder layer (what ZeRO-3/FSDP gathers at once)."""
        return max(g.params() for g in self.layer_groups)

    @_memo
    def layers_params(self) -> int:
        """Return the parameters of all decoder layers together."""
        return sum(g.count * g.params() for g in self.layer_groups)

    def embedding_params(self) -> int:
        """Return the token embedding plus an untied lm_head (their weights)."""
        return self.vocab_size * self.embed_dim * (1 if self.tie_word_embeddings else 2)

    @_memo
    def param_breakdown(self) -> dict[str, int]:
        """Return ``{"linear", "embedding", "other"}`` parameter counts that sum to ``params``.

        ``linear``: weights of the decoder layers' linear maps, routed experts included (what
        QLoRA quantizes to 4 bits; see :class:`Linear` for transformers 5's fused experts);
        ``embedding``: token embedding plus an untied lm_head; ``other``: biases, norms, routers,
        learned positions, OPT's project_in/out, a vision tower. For an inferred architecture
        the embedding and other parts come from the shape and the rest of the given count is
        taken as linear weights.
        """
        linear = sum(g.count * m.weight_params for g in self.layer_groups for m in g.linears if m.kind != "router")
        embedding = self.embedding_params()
        other = self.params - linear - embedding
        if self.source == "inferred":
            other = shape_params(self) - embedding - linear
            linear = max(self.params - embedding - other, 0)
        return {"linear": int(linear), "embedding": int(embedding), "other": int(other)}

    def memo(self, kind: str) -> dict:
        """Return this instance's cache for results computed from it (``kind`` names what is cached).

        For pure functions of an architecture and other hashable inputs (targets resolved for a
        preset, trainable counts, per-layer activation bytes): the architecture is immutable, so the
        entries stay valid for its lifetime and are dropped with it.
        """
        key = "_memo_dict_" + kind
        found = self.__dict__.get(key)
        if found is None:
            found = {}
            object.__setattr__(self, key, found)
        return found

    def with_params(self, total: int) -> Architecture:
        """Return a copy with ``params`` set to ``total``."""
        return replace(self, params=int(total))

    def summary(self) -> dict[str, Any]:
        """Return a JSON-safe description: family, counts, MoE and attention kind, warnings."""
        return {
            "model_type": self.model_type, "family": self.family or self.model_type, "source": self.source,
            "params": int(self.params), "active_params": self.active_params, "layers": self.num_layers,
            "hidden_size": self.hidden_size, "attention": self.attention, "moe": self.is_moe,
            "experts": self.num_experts, "experts_per_token": self.num_experts_per_tok,
            "warnings": list(self.warnings),
        }


def _scalar_groups(arch: Architecture) -> tuple[LayerGroup, ...]:
    """Return the one layer group the scalar fields describe (Llama-style gated or OPT-style plain)."""
    h, i, q, kv = arch.hidden_size, arch.intermediate_size, arch.q_dim, arch.kv_dim
    if arch.mlp == "gated":
        attn = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
        mlp = [Linear("mlp.gate_proj", h, i, "gate", arch.mlp_bias), Linear("mlp.up_proj", h, i, "up", arch.mlp_bias),
               Linear("mlp.down_proj", i, h, "down", arch.mlp_bias)]
    else:
        attn = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
        mlp = [Linear("fc1", h, i, "up", arch.mlp_bias), Linear("fc2", i, h, "down", arch.mlp_bias)]
    linears = [Linear(attn[0], h, q, "q", arch.attention_bias), Linear(attn[1], h, kv, "k", arch.attention_bias),
               Linear(attn[2], h, kv, "v", arch.attention_bias), Linear(attn[3], q, h, "o", arch.output_bias), *mlp]
    other = 2 * norm_params(arch.norm, h) + (2 * arch.head_dim if arch.qk_norm else 0)
    return name_groups([LayerGroup("dense", tuple(range(arch.num_layers)), tuple(linears), other)])


def _scalar_top_params(arch: Architecture) -> int:
    """Return learned positions, OPT's projections and the final norm as the scalar fields describe them."""
    h = arch.hidden_size
    total = arch.position_embeddings * h
    if arch.word_embed_proj_dim:
        total += 2 * h * arch.word_embed_proj_dim  # project_in and project_out, no bias
    if arch.final_norm:
        total += norm_params(arch.norm, h)
    return total


def shape_params(arch: Architecture) -> int:
    """Return the parameter count the shape of ``arch`` implies (equals ``arch.params`` unless inferred).

    Counts the token embedding, an untied lm_head, every decoder layer of every group, and the
    parameters outside the layers (final norm, learned positions, projections, lm_head bias,
    vision tower).
    """
    return int(arch.embedding_params() + arch.layers_params() + arch.top_params)
