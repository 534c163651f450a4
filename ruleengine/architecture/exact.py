"""``--exact``: the Architecture of any model transformers can build, counted on the meta device.

The closed form (ruleengine/architecture/config.py) knows the families of its table; transformers
knows many more. :func:`exact_architecture` builds the model from the config with
``torch.device("meta")`` (no memory, no download), counts ``sum(p.numel())`` and reads every
decoder layer's linear maps, expert parameters, routers and norms from the module tree. It
imports torch and transformers lazily: they are in the ``train`` extra.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

from .config import from_hf_config
from .families import HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, LAYERS, VOCAB
from .model import Architecture, ArchitectureError, LayerGroup, Linear, name_groups

EXTRA_HINT = "install the training extra: pip install 'finetune-policy[train]' (torch and transformers)"


class TrainExtraMissing(ArchitectureError):
    """Exact counting needs torch and transformers (the ``train`` extra), which are not installed."""

# Module path fragments -> role, tried in order on the last path component.
_ROLES = (("q_a_proj", "q_a"), ("q_b_proj", "q_b"), ("kv_a_proj", "kv_a"), ("kv_b_proj", "kv_b"),
          ("query_key_value", "qkv"), ("qkv_proj", "qkv"), ("c_attn", "qkv"), ("Wqkv", "qkv"),
          ("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("o_proj", "o"), ("out_proj", "o"),
          ("shared_expert_gate", "shared_gate"), ("gate_up_proj", "gate_up"), ("gate_proj", "gate"),
          ("up_proj", "up"), ("down_proj", "down"), ("dense_h_to_4h", "up"), ("dense_4h_to_h", "down"),
          ("fc1", "up"), ("fc2", "down"), ("c_fc", "up"), ("w1", "up"), ("w3", "up"), ("w2", "gate"))
_ATTENTION_PARENTS = ("self_attn", "attn", "attention", "self_attention", "mixer")


def exact_architecture(config: dict, origin: str = "<config>") -> Architecture:
    """Return the Architecture of ``config`` as transformers builds it: exact for any model_type it knows.

    Parameters are counted on the meta device (``sum(p.numel() for p in model.parameters())``,
    tied weights once) and each decoder layer's linear maps come from its modules; scalar fields
    come from the closed form when the family is in the table, else from the transformers config
    (whose ``attribute_map`` resolves e.g. GPT-2's ``n_embd``). ``source`` is ``exact``. Raises
    ArchitectureError when torch/transformers are missing (the message names the extra), when
    transformers does not know the ``model_type`` (remote-code models such as Qwen v1), or when
    the model cannot be built from this config (TrainExtraMissing, a subclass, when the extra is missing).
    """
    try:
        import torch
        import transformers
    except ImportError:
        raise TrainExtraMissing(f"{origin}: exact counting needs torch and transformers; {EXTRA_HINT}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ArchitectureError(f"{origin}: required key `model_type` is missing", "model_type")
    try:
        hf_config = transformers.AutoConfig.for_model(**config)
    except (ValueError, KeyError) as exc:
        raise ArchitectureError(f"{origin}: transformers {transformers.__version__} does not know model_type "
                                f"`{config['model_type']}` ({exc}); remote-code models cannot be built exactly",
                                "model_type") from None
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = transformers.AutoModelForCausalLM.from_config(hf_config)
    except Exception as exc:  # noqa: BLE001 - any failure of a third-party constructor is bad input here
        raise ArchitectureError(f"{origin}: transformers cannot build this config: {exc}") from None
    return _from_model(model, hf_config, config, origin)


def _from_model(model: Any, hf_config: Any, config: dict, origin: str) -> Architecture:
    import torch

    total = sum(p.numel() for p in model.parameters())
    text = getattr(hf_config, "text_config", None) or hf_config
    n_layers = int(_attr(text, LAYERS))
    layer_list = _decoder_layers(model, n_layers)
    transformers_linear = _linear_types()
    signatures: dict[tuple, list[int]] = {}
    contents: dict[tuple, tuple[list[Linear], int]] = {}
    for index, layer in enumerate(layer_list):
        linears: list[Linear] = []
        claimed: set[int] = set()
        module: Any
        for path, module in layer.named_modules():
            if isinstance(module, transformers_linear):
                w: Any = getattr(module, "weight")  # noqa: B009 - typed Any for mypy
                d_out, d_in = (w.shape[1], w.shape[0]) if type(module).__name__ == "Conv1D" else tuple(w.shape)
                has_bias = getattr(module, "bias", None) is not None
                linears.append(Linear(path, int(d_in), int(d_out), _role(path), has_bias))
                claimed.update(id(p) for p in getattr(module, "parameters")(recurse=False))  # noqa: B009
                continue
            for pname, param in module.named_parameters(recurse=False):
                full = f"{path}.{pname}" if path else pname
                if param.dim() == 3:  # fused experts: (experts, out, in) unless the module says transposed
                    e, a, b = param.shape
                    d_in, d_out = (a, b) if getattr(module, "is_transposed", False) else (b, a)
                    linears.append(Linear(full, int(d_in), int(d_out), _role(pname), kind="expert", copies=int(e)))
                    claimed.add(id(param))
                elif param.dim() == 2 and pname == "weight" and "norm" not in path.lower():
                    linears.append(Linear(path, int(param.shape[1]), int(param.shape[0]), "router", kind="router"))
                    claimed.add(id(param))
        other = sum(p.numel() for p in layer.parameters() if id(p) not in claimed)
        kind = "moe" if any(m.kind == "expert" for m in linears) else "dense"
        sig = (kind, tuple((m.path, m.d_in, m.d_out, m.bias, m.kind, m.copies) for m in linears), other)
        signatures.setdefault(sig, []).append(index)
        contents[sig] = (linears, other)
    groups = [LayerGroup(sig[0], tuple(idx), tuple(contents[sig][0]), contents[sig][1])
              for sig, idx in signatures.items()]
    named = name_groups(groups)
    layers_total = sum(g.count * g.params() for g in named)
    try:
        base = from_hf_config(config, origin)
    except ArchitectureError:
        base = _scalars(text, config, origin)
    tie = bool(getattr(hf_config, "tie_word_embeddings", False))
    embed = getattr(model.get_input_embeddings(), "weight", None)
    vocab, width = (int(embed.shape[0]), int(embed.shape[1])) if isinstance(embed, torch.Tensor) else (
        base.vocab_size, base.embed_dim)
    embedding = vocab * width * (1 if tie else 2)
    top = int(total - layers_total - embedding)
    return replace(base, params=int(total), source="exact", layer_groups=named, top_params=top,
                   tie_word_embeddings=tie, vocab_size=vocab)


def _linear_types() -> tuple[type, ...]:
    import torch

    types: list[type] = [torch.nn.Linear]
    try:
        from transformers.pytorch_utils import Conv1D

        types.append(Conv1D)
    except ImportError:  # pragma: no cover - every transformers 4/5 has it
        pass
    return tuple(types)


def _decoder_layers(model: Any, n_layers: int) -> list[Any]:
    """Return the ModuleList of decoder layers: the first one as long as ``num_hidden_layers`` outside vision."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and "vision" not in name:
            return list(module)
    raise ArchitectureError(f"cannot find the {n_layers} decoder layers in {type(model).__name__}")


def _role(path: str) -> str:
    parts = path.split(".")
    for fragment, role in _ROLES:
        if parts[-1] == fragment:
            return role
    in_attention = any(p in _ATTENTION_PARENTS for p in parts[:-1])
    if parts[-1] in ("dense", "c_proj", "wo", "out"):
        return "o" if in_attention else "down"
    return "qkv" if in_attention else "up"


def _attr(cfg: Any, names: tuple[str, ...], default: Any = None) -> Any:
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return value
    return default


def _scalars(text: Any, config: dict, origin: str) -> Architecture:
    """Return the scalar fields from a transformers config whose family is not in the table."""
    h = int(_attr(text, HIDDEN))
    heads = int(_attr(text, HEADS))
    head_dim = int(_attr(text, ("head_dim",), h // heads))
    inter = int(_attr(text, INTERMEDIATE, 4 * h))
    experts = int(_attr(text, ("num_local_experts", "num_experts", "n_routed_experts"), 0) or 0)
    return Architecture(
        hidden_size=h, num_layers=int(_attr(text, LAYERS)), intermediate_size=inter, num_attention_heads=heads,
        num_kv_heads=int(_attr(text, KV_HEADS, heads)), head_dim=head_dim, vocab_size=int(_attr(text, VOCAB)),
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)), mlp="gated",
        model_type=str(config["model_type"]), params=0, source="exact", family="",
        num_experts=experts, num_experts_per_tok=int(_attr(text, ("num_experts_per_tok",), 0) or 0),
        moe_intermediate_size=int(_attr(text, ("moe_intermediate_size",), 0) or 0),
        warnings=(f"{origin}: model_type `{config['model_type']}` is not in the family table; counted exactly by "
                  "transformers, the activation terms assume a Llama-style layer",),
    )
