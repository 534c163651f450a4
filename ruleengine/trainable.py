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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .architecture import Architecture

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .methods.spec import MethodConfig

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


def count_full(arch: Architecture, cfg: MethodConfig) -> int:
    """Return full fine-tuning's trainable parameters: every parameter of the model."""
    return int(arch.params)


def count_lora(arch: Architecture, cfg: MethodConfig, *, dora: bool = False, singular_values: bool = False) -> int:
    """Return the LoRA family's trainable parameters: ``r·(d_in + d_out)`` per adapted layer.

    ``singular_values`` adds AdaLoRA's ``lora_E`` (r per layer); ``dora`` (or ``cfg.use_dora``) adds
    DoRA's magnitude vector (``d_out`` per layer). Raises ValueError for a missing or non-positive
    rank and for bad target modules.
    """
    r = _need(cfg.rank, "rank", cfg.method)
    modules = arch.linear_modules()
    per_layer = 0
    for t in resolve_targets(arch, cfg.method, cfg.target_modules):
        d_in, d_out = modules[t]
        per_layer += r * (d_in + d_out)
        if singular_values:
            per_layer += r
        if dora or cfg.use_dora:
            per_layer += d_out
    return arch.num_layers * per_layer


def count_ia3(arch: Architecture, cfg: MethodConfig) -> int:
    """Return IA3's trainable parameters: one vector per adapted layer (its input width for feed-forward modules).

    Raises ValueError for bad target modules.
    """
    modules = arch.linear_modules()
    ff = set(arch.feedforward_modules())
    targets = resolve_targets(arch, cfg.method, cfg.target_modules)
    return arch.num_layers * sum(modules[t][0] if t in ff else modules[t][1] for t in targets)


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
