"""Trainable-parameter counts per fine-tuning method, equal to what peft reports.

Each ``count_*`` function is the rule of one method family; the method registry
(``ruleengine/methods``) names the rule of each method, and ``ruleengine.methods.trainable_params``
dispatches to it. Together they reproduce ``get_peft_model(model, config).get_nb_trainable_parameters()[0]``
for the peft methods (checked in tests/ruleengine/test_trainable.py against models built on the
meta device) without importing torch or peft. The formulas, per adapted linear layer (d_in, d_out):

- LoRA / QLoRA: ``r * (d_in + d_out)`` (lora_A is r x d_in, lora_B is d_out x r; bias="none").
- DoRA: LoRA plus the magnitude vector, ``d_out`` per adapted layer (peft ``lora_magnitude_vector``).
- AdaLoRA: ``r * d_in + d_out * r + r`` (lora_A, lora_B and the singular values lora_E, r x 1) with
  r = init_r; peft's ``ranknum`` is a frozen buffer-like parameter and is not trainable.
- IA3: one vector per adapted layer, ``d_out`` long, or ``d_in`` long for feed-forward layers
  (peft scales the input of the modules in ``feedforward_modules``; down_proj / fc2 by default).
- Prompt tuning: ``num_virtual_tokens * hidden_size`` (peft's PromptEmbedding).
- Prefix tuning (no prefix_projection): ``num_virtual_tokens * num_layers * 2 * kv_dim``; for GQA
  models peft sets ``token_dim = num_key_value_heads * head_dim`` (peft utils/other.py,
  ``_prepare_prompt_learning_config``, "For grouped-query attention, see #1901").
- Bottleneck adapters (Houlsby et al. 2019; not in peft): two adapters per decoder layer (after
  attention and after the MLP), each a down projection h -> m and an up projection m -> h with
  biases: ``num_layers * 2 * (2*m*h + m + h)``.
- Full fine-tuning: every parameter.

Mixture-of-experts models (transformers 5 fuses each layer's routed experts into one 3-D
parameter): ``all-linear`` adapts the ``nn.Linear`` layers only, as peft does (attention, dense
and shared-expert MLPs); routed experts are adapted only when named (``experts.gate_up_proj``,
``experts.down_proj``), with one LoRA pair per expert as peft's ``target_parameters`` does.
Counts sum over the layers that hold each module (DeepSeek's dense first layers, Qwen-MoE's
``mlp_only_layers``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .architecture import Architecture

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .methods.spec import MethodConfig

TARGET_PRESETS = ("all-linear", "attention", "mlp")
ADAPTER_KINDS = ("linear", "expert")  # routers cannot carry an adapter
# peft (utils/transformers_weight_conversion.py) rewrites LoRA target names of MoE models whose layout
# changed in transformers 5: a listed leaf name that is a key here becomes the routed experts' (or the
# router's) parameter, and that module is no longer adapted; gate_proj + up_proj (w1 + w3) fuse into
# gate_up_proj at twice the rank. qwen2_moe itself has no entry in peft's table, so it is not rewritten.
_PEFT_MOE_REWRITE: dict[str, dict[str, str]] = {
    "mixtral": {"gate": "router", "w1": "gate_up", "w3": "gate_up", "w2": "down"},
    **{mt: {"gate": "router", "gate_proj": "gate_up", "up_proj": "gate_up", "down_proj": "down"}
       for mt in ("qwen3_moe", "deepseek_v2", "deepseek_v3")},
}


def adaptable_modules(arch: Architecture) -> list[str]:
    """Return the names of the modules (per decoder layer) an adapter may target, in forward order."""
    infos = arch.linears()
    return [n for n in infos if infos[n].kind in ADAPTER_KINDS]


def _peft_default(arch: Architecture, method: str) -> tuple[str, ...] | None:
    """Return peft's default target_modules for ``method`` on this family (peft utils/constants.py), or None."""
    from .architecture.families import ALIASES, FAMILIES

    family = FAMILIES.get(arch.family or ALIASES.get(arch.model_type, arch.model_type))
    if family is None or arch.model_type == "gemma3":  # peft has no row for the multimodal gemma3
        return None
    key = method if method in ("ia3", "adalora") else "lora"
    return family.peft_defaults.get(key)


def _matches(name: str, wanted: str) -> bool:
    """Return True when peft's ``target_modules`` entry ``wanted`` selects the module named ``name``."""
    return name == wanted or name.endswith("." + wanted)


def resolve_targets(arch: Architecture, method: str, target_modules: str | Iterable[str] | None) -> tuple[str, ...]:
    """Return the names of the linear layers (per decoder layer) ``target_modules`` selects, in forward order.

    ``target_modules`` is ``"all-linear"`` (every ``nn.Linear`` of the decoder layers, as peft's
    preset: a MoE model's fused experts and routers are not ``nn.Linear`` in transformers 5),
    ``"attention"`` (q, k, v, output projection, or their fused/MLA forms), ``"mlp"`` (the MLP's
    ``nn.Linear`` layers, a MoE model's shared experts included), an explicit list of names, or
    None for peft's default for this model family and method. A listed name selects every module
    whose name ends with it (peft's suffix match: ``c_proj`` selects GPT-2's ``attn.c_proj`` and
    ``mlp.c_proj``); routed experts (``experts.gate_up_proj``, ``experts.down_proj``) are selected
    only by their own name, as peft's ``target_parameters`` does, with one adapter per expert.
    Raises ValueError for an unknown preset, a name matching no module (the message lists the
    valid names), a router, or None where peft has no default.

    Remembered per Architecture object (the decision hot path resolves the same targets per estimate).
    """
    key = (method, tuple(target_modules) if isinstance(target_modules, list) else target_modules)
    memo = arch.memo("targets")
    found = memo.get(key)
    if found is None:
        found = memo[key] = _resolve_targets(arch, method, target_modules)
    return found


def _resolve_targets(arch: Architecture, method: str, target_modules: str | Iterable[str] | None) -> tuple[str, ...]:
    """Resolve ``target_modules`` against ``arch`` (uncached; see :func:`resolve_targets`)."""
    infos = arch.linears()
    modules = list(infos)
    adaptable = [n for n in modules if infos[n].kind in ADAPTER_KINDS]
    if target_modules is None:
        default = _peft_default(arch, method)
        if default is None:
            raise ValueError(f"peft has no default target_modules for {method} on {arch.model_type}; give a "
                             f"preset ({', '.join(TARGET_PRESETS)}) or module names ({', '.join(adaptable)})")
        wanted = set(default)
        chosen = {n for n in modules if infos[n].kind == "linear" and any(_matches(n, w) for w in wanted)}
    elif isinstance(target_modules, str):
        linear = [n for n in modules if infos[n].kind == "linear"]
        if target_modules == "all-linear":
            chosen = set(linear)
        elif target_modules == "attention":
            chosen = {n for n in linear if infos[n].block == "attention"}
        elif target_modules == "mlp":
            chosen = {n for n in linear if infos[n].block == "mlp"}
        else:
            raise ValueError(f"unknown target_modules preset `{target_modules}`; use one of "
                             f"{', '.join(TARGET_PRESETS)} or a list of module names ({', '.join(adaptable)})")
        if not chosen:
            raise ValueError(f"the preset `{target_modules}` selects no nn.Linear layer of {arch.model_type}; name "
                             f"modules instead ({', '.join(adaptable)})")
    else:
        names = list(target_modules)
        if not names:
            raise ValueError("target_modules is an empty list; name at least one of " + ", ".join(adaptable))
        chosen = set()
        unknown = []
        for w in names:
            hits = {n for n in modules if (n == w if infos[n].kind == "expert" else _matches(n, w))}
            routers = [n for n in hits if infos[n].kind == "router"]
            if routers:
                raise ValueError(f"`{w}` is a MoE router of {arch.model_type}; routers cannot be adapted (valid "
                                 f"names: {', '.join(adaptable)})")
            if not hits:
                unknown.append(w)
            chosen |= hits
        if unknown:
            raise ValueError(f"unknown target module(s) {', '.join(unknown)} for {arch.model_type}; valid names: "
                             f"{', '.join(adaptable)}")
    return tuple(m for m in modules if m in chosen)


def _peft_moe_rewrite(arch: Architecture, targets: tuple[str, ...], ranks: dict[str, int]) -> dict[str, int]:
    """Return ``{target: rank multiplier}`` after peft's transformers-5 MoE rewrite of LoRA targets.

    The executor passes peft the leaf names of the chosen modules; for the model types of
    :data:`_PEFT_MOE_REWRITE` peft turns ``gate_proj``/``up_proj``/``down_proj`` (and ``gate``) into
    the routed experts' ``gate_up_proj`` (rank x2 when both halves are named) / ``down_proj`` (and the
    router's weight), dropping those modules (dense-layer and shared-expert MLPs included). Raises
    ValueError when only one half of a fused pair is named, as peft does.
    """
    rewrite = _PEFT_MOE_REWRITE.get(arch.model_type)
    if not rewrite:
        return ranks
    infos = arch.linears()
    by_role = {m.role: n for n, m in infos.items() if m.kind in ("expert", "router")}
    leaves = {t.rsplit(".", 1)[-1] for t in targets}
    hit = {leaf: rewrite[leaf] for leaf in leaves if leaf in rewrite}
    if not hit:
        return ranks
    out = {t: k for t, k in ranks.items() if t.rsplit(".", 1)[-1] not in hit}
    halves = sorted(leaf for leaf, role in hit.items() if role == "gate_up")
    pair = sorted(leaf for leaf, role in rewrite.items() if role == "gate_up")
    if halves and halves != pair:
        missing = ", ".join(sorted(set(pair) - set(halves)))
        raise ValueError(f"peft cannot adapt {', '.join(halves)} of {arch.model_type} without also {missing}: they "
                         f"are fused into the experts' gate_up_proj in transformers 5")
    for role in sorted(set(hit.values())):
        if role in by_role:
            out[by_role[role]] = len(pair) if role == "gate_up" else 1
    order = list(infos)
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0])))


def _need(value: int | None, name: str, method: str) -> int:
    if value is None or isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{method} needs a positive integer {name}, got {value!r}")
    return int(value)


def count_full(arch: Architecture, cfg: MethodConfig) -> int:
    """Return full fine-tuning's trainable parameters: every parameter of the model."""
    return int(arch.params)


def _experts_refused(arch: Architecture, targets: tuple[str, ...], what: str) -> None:
    infos = arch.linears()
    experts = [t for t in targets if infos[t].kind in ("expert", "router")]
    if experts:
        raise ValueError(f"peft supports only plain LoRA on routed experts and routers ({', '.join(experts)}); "
                         f"{what} cannot adapt them")


def count_lora(arch: Architecture, cfg: MethodConfig, *, dora: bool = False, singular_values: bool = False) -> int:
    """Return the LoRA family's trainable parameters: ``r·(d_in + d_out)`` per adapted module instance.

    ``singular_values`` adds AdaLoRA's ``lora_E`` (r per module); ``dora`` (or ``cfg.use_dora``) adds
    DoRA's magnitude vector (``d_out`` per module). Each adapted module counts once per layer that has
    it and, for routed experts, once per expert (peft's ``target_parameters``: lora_A is
    ``experts*r x d_in``, lora_B ``d_out x experts*r``); plain LoRA targets of MoE models are
    rewritten as peft rewrites them. Raises ValueError for a missing or non-positive rank, bad target
    modules, or DoRA/AdaLoRA on routed experts (peft supports only plain LoRA there).
    """
    infos = arch.linears()
    targets = resolve_targets(arch, cfg.method, cfg.target_modules)
    counts = arch.module_counts()  # instances in the model: layers holding it x experts
    dora = dora or cfg.use_dora
    ranks = {t: 1 for t in targets}  # rank multiplier per target
    if not singular_values:  # peft_type LORA (LoRA, QLoRA, DoRA); AdaLoRA is not rewritten
        ranks = _peft_moe_rewrite(arch, targets, ranks)
        targets = tuple(ranks)
    if dora or singular_values:
        _experts_refused(arch, targets, "DoRA" if dora else cfg.method)
    r = _need(cfg.rank, "rank", cfg.method)
    total = 0
    for t in targets:
        d_in, d_out = infos[t].d_in, infos[t].d_out
        per = ranks[t] * r * (d_in + d_out)
        if singular_values:
            per += r
        if dora:
            per += d_out
        total += counts[t] * per
    return total


def count_ia3(arch: Architecture, cfg: MethodConfig) -> int:
    """Return IA3's trainable parameters: one vector per adapted module (its input width for feed-forward ones).

    Raises ValueError for bad target modules or routed experts (peft's IA3 cannot adapt them).
    """
    infos = arch.linears()
    targets = resolve_targets(arch, cfg.method, cfg.target_modules)
    _experts_refused(arch, targets, cfg.method)
    counts = arch.module_counts()
    ff = set(arch.feedforward_modules())
    return sum(counts[t] * (infos[t].d_in if t in ff else infos[t].d_out) for t in targets)


def count_prompt(arch: Architecture, cfg: MethodConfig) -> int:
    """Return prompt tuning's trainable parameters: ``num_virtual_tokens x embedding width``.

    Raises ValueError for a missing or non-positive num_virtual_tokens.
    """
    return _need(cfg.num_virtual_tokens, "num_virtual_tokens", cfg.method) * arch.embed_dim


def count_prefix(arch: Architecture, cfg: MethodConfig) -> int:
    """Return prefix tuning's trainable parameters: a key and a value prefix per layer (GQA width).

    Raises ValueError for a missing or non-positive num_virtual_tokens.
    """
    return _need(cfg.num_virtual_tokens, "num_virtual_tokens", cfg.method) * arch.num_layers * 2 * arch.kv_dim


def count_adapter(arch: Architecture, cfg: MethodConfig) -> int:
    """Return two bottleneck adapters per layer, each ``h -> m -> h`` with biases.

    Raises ValueError for a missing or non-positive adapter_size.
    """
    m = _need(cfg.adapter_size, "adapter_size", cfg.method)
    h = arch.hidden_size
    return arch.num_layers * 2 * (2 * m * h + m + h)
