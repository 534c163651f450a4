"""Trainable-parameter counts per fine-tuning method, equal to what peft reports.

``trainable_params`` reproduces ``get_peft_model(model, config).get_nb_trainable_parameters()[0]``
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
"""

from __future__ import annotations

from collections.abc import Iterable

from .architecture import Architecture

PEFT_METHODS = ("lora", "qlora", "dora", "adalora", "ia3", "prompt_tuning", "prefix_tuning", "adapter")
ALL_METHODS = ("full_ft",) + PEFT_METHODS
TARGET_PRESETS = ("all-linear", "attention", "mlp")
# peft's per-family defaults when target_modules is None (peft utils/constants.py)
_DEFAULT_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "lora": {"llama": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj"), "qwen2": ("q_proj", "v_proj"),
             "qwen3": ("q_proj", "v_proj"), "opt": ("q_proj", "v_proj")},
    "adalora": {"llama": ("q_proj", "v_proj"), "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"),
                "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")},  # none for mistral
    "ia3": {"llama": ("k_proj", "v_proj", "down_proj"), "mistral": ("k_proj", "v_proj", "down_proj"),
            "qwen2": ("q_proj", "v_proj", "down_proj"), "qwen3": ("q_proj", "v_proj", "down_proj"),
            "opt": ("q_proj", "k_proj", "fc2")},
}


def resolve_targets(arch: Architecture, method: str, target_modules: str | Iterable[str] | None) -> tuple[str, ...]:
    """Return the names of the linear layers (per decoder layer) ``target_modules`` selects, in forward order.

    ``target_modules`` is ``"all-linear"``, ``"attention"`` (q, k, v, output projection), ``"mlp"``,
    an explicit list of module names, or None for peft's default for this model family and method
    (peft utils/constants.py: LoRA q_proj, v_proj; IA3 and AdaLoRA their own mappings). Raises
    ValueError for an unknown preset, a module name this architecture does not have (the message
    lists the valid names), or None where peft has no default (AdaLoRA on mistral).
    """
    modules = arch.linear_modules()
    if target_modules is None:
        key = method if method in ("ia3", "adalora") else "lora"
        if arch.model_type not in _DEFAULT_TARGETS[key]:
            raise ValueError(f"peft has no default target_modules for {method} on {arch.model_type}; give a "
                             f"preset ({', '.join(TARGET_PRESETS)}) or module names ({', '.join(modules)})")
        chosen: Iterable[str] = _DEFAULT_TARGETS[key][arch.model_type]
    elif isinstance(target_modules, str):
        if target_modules == "all-linear":
            chosen = modules
        elif target_modules == "attention":
            chosen = arch.attention_modules()
        elif target_modules == "mlp":
            chosen = arch.mlp_modules()
        else:
            raise ValueError(f"unknown target_modules preset `{target_modules}`; use one of "
                             f"{', '.join(TARGET_PRESETS)} or a list of module names ({', '.join(modules)})")
    else:
        chosen = list(target_modules)
        if not chosen:
            raise ValueError("target_modules is an empty list; name at least one of " + ", ".join(modules))
        unknown = [m for m in chosen if m not in modules]
        if unknown:
            raise ValueError(f"unknown target module(s) {', '.join(unknown)} for {arch.model_type}; valid names: "
                             f"{', '.join(modules)}")
    wanted = set(chosen)
    return tuple(m for m in modules if m in wanted)


def _need(value: int | None, name: str, method: str) -> int:
    if value is None or isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{method} needs a positive integer {name}, got {value!r}")
    return int(value)


def trainable_params(arch: Architecture, method: str, *, rank: int | None = None,
                     target_modules: str | Iterable[str] | None = "all-linear",
                     num_virtual_tokens: int | None = None, adapter_size: int | None = None,
                     use_dora: bool = False) -> int:
    """Return the number of trainable parameters of ``method`` on ``arch`` (peft's count for peft methods).

    ``rank`` is LoRA's r (QLoRA, DoRA) or AdaLoRA's init_r; ``use_dora`` adds DoRA's magnitude
    vectors to lora/qlora; ``target_modules`` as in :func:`resolve_targets` (ignored by full_ft,
    prompt/prefix tuning and adapters). Raises ValueError for an unknown method, a missing or
    non-positive rank / num_virtual_tokens / adapter_size, or bad target modules.
    """
    if method == "full_ft":
        return int(arch.params)
    if method not in PEFT_METHODS:
        raise ValueError(f"unknown method `{method}`; use one of {', '.join(ALL_METHODS)}")
    layers = arch.num_layers
    if method == "prompt_tuning":
        return _need(num_virtual_tokens, "num_virtual_tokens", method) * arch.embed_dim
    if method == "prefix_tuning":
        return _need(num_virtual_tokens, "num_virtual_tokens", method) * layers * 2 * arch.kv_dim
    if method == "adapter":
        m = _need(adapter_size, "adapter_size", method)
        h = arch.hidden_size
        return layers * 2 * (2 * m * h + m + h)
    modules = arch.linear_modules()
    targets = resolve_targets(arch, method, target_modules)
    if method == "ia3":
        ff = set(arch.feedforward_modules())
        return layers * sum(modules[t][0] if t in ff else modules[t][1] for t in targets)
    r = _need(rank, "rank", method)
    per_layer = 0
    for t in targets:
        d_in, d_out = modules[t]
        per_layer += r * (d_in + d_out)
        if method == "adalora":
            per_layer += r
        if method == "dora" or (use_dora and method in ("lora", "qlora")):
            per_layer += d_out
    return layers * per_layer
