"""Model-side helpers: the device, the model built on the meta device, loading the base for training.

Everything here imports torch/transformers/peft inside the functions, so importing this module is
cheap; ``decide plan`` calls :func:`inspect_model` and :func:`count_trainable` only after the
decision is made.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

from .errors import Diagnostic, Location, PlanError
from .model_info import ModelInfo

_ATTENTION_PARENTS = ("attn", "attention")
_MLP_PARENTS = ("mlp", "feed_forward", "ffn", "ff")


def detect_device(requested: str = "auto") -> dict[str, Any]:
    """Return the device training would use: ``{"type", "count", "name", "bf16", "fp16"}``.

    ``requested`` is ``auto`` (CUDA when available), ``cpu`` or ``cuda``. Raises PlanError when
    ``cuda`` is requested and no CUDA device is available.
    """
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise PlanError([Diagnostic("plan-bad-device", f"unknown device `{requested}`", Location("--device"),
                                    "use auto, cpu or cuda")])
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return {"type": "cuda", "count": torch.cuda.device_count(), "name": torch.cuda.get_device_name(0),
                "bf16": bool(torch.cuda.is_bf16_supported()), "fp16": True}
    if requested == "cuda":
        raise PlanError([Diagnostic("plan-no-cuda", "--device cuda was requested but torch sees no CUDA device",
                                    Location("--device"), "use --device cpu or auto")])
    import platform

    return {"type": "cpu", "count": 1, "name": platform.processor() or platform.machine(), "bf16": False,
            "fp16": False}


def read_config(model_path: str) -> dict:
    """Return the parsed ``config.json`` of the model directory ``model_path``.

    Raises PlanError when the directory or its config.json is missing or not JSON.
    """
    path = os.path.join(model_path, "config.json")
    if not os.path.isfile(path):
        raise PlanError([Diagnostic("plan-no-model-config", f"no config.json in {model_path}", Location("--model"),
                                    "give a Hugging Face model directory (config.json + weights); for a demo run "
                                    "`decide make-tiny-model ./tiny-model`")])
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise PlanError([Diagnostic("plan-bad-model-config", f"config.json is not valid JSON: {exc.msg}",
                                    Location(path, exc.lineno, exc.colno))]) from None


def _meta_model(model_path: str) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    read_config(model_path)
    try:
        config = AutoConfig.from_pretrained(model_path)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError) as exc:
        raise PlanError([Diagnostic("plan-unsupported-model", f"cannot build a causal LM from {model_path}: {exc}",
                                    Location("--model"), "the executors train AutoModelForCausalLM models")]) from None


def inspect_model(model_path: str) -> ModelInfo:
    """Return the ModelInfo of the model at ``model_path``, built on the meta device (no weights read).

    Raises PlanError when the model cannot be built.
    """
    import torch

    model = _meta_model(model_path)
    config = model.config
    out_emb = model.get_output_embeddings()
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    linear: set[str] = set()
    attention: set[str] = set()
    mlp: set[str] = set()
    feedforward: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is out_emb:
            continue
        parts = name.split(".")
        leaf = parts[-1]
        linear.add(leaf)
        parents = [p.lower() for p in parts[:-1]]
        if any(any(p.endswith(a) or p == a for a in _ATTENTION_PARENTS) for p in parents):
            attention.add(leaf)
        elif any(p in _MLP_PARENTS for p in parents):
            mlp.add(leaf)
            if module.out_features == hidden and module.in_features != hidden:
                feedforward.add(leaf)
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))
    return ModelInfo(
        model_type=str(config.model_type), architecture=type(model).__name__, num_layers=layers,
        hidden_size=hidden, vocab_size=int(config.vocab_size),
        max_position_embeddings=getattr(config, "max_position_embeddings", None),
        total_params=sum(p.numel() for p in model.parameters()),
        linear_modules=sorted(linear), attention_modules=sorted(attention), mlp_modules=sorted(mlp),
        feedforward_modules=sorted(feedforward), no_split_modules=sorted(getattr(model, "_no_split_modules", None) or []),
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


def count_trainable(model_path: str, peft_section: dict | None) -> int:
    """Return the number of trainable parameters of the plan's model, counted by peft on the meta device.

    ``peft_section`` is the plan's ``peft`` entry (``{"class", "kwargs"}``) or None for full
    fine-tuning (every parameter trains). Raises PlanError when peft rejects the config.
    """
    model = _meta_model(model_path)
    if peft_section is None:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    import peft
    import torch

    cls = getattr(peft, peft_section["class"])
    try:
        config = cls(task_type="CAUSAL_LM", **peft_section["kwargs"])
        with torch.device("meta"), warnings.catch_warnings():
            # adapter weights created outside the meta context would differ (AdaLoRA's ranknum)
            warnings.filterwarnings("ignore", category=FutureWarning)
            wrapped = peft.get_peft_model(model, config)
    except (ValueError, TypeError) as exc:
        raise PlanError([Diagnostic("plan-peft-rejected", f"peft rejected the {peft_section['class']}: {exc}",
                                    Location("<plan>"), "check the verdict's method settings")]) from None
    trainable, _total = wrapped.get_nb_trainable_parameters()
    return int(trainable)


def torch_dtype(name: str) -> Any:
    """Return the torch dtype named ``name`` (``float32``, ``bfloat16``, ``float16``); raises AttributeError."""
    import torch

    return getattr(torch, name)


def bnb_config(plan: dict) -> Any:
    """Return the transformers BitsAndBytesConfig of the plan's quantization, or None."""
    quant = plan.get("quantization")
    if quant is None:
        return None
    from transformers import BitsAndBytesConfig

    kwargs = dict(quant["bitsandbytes"])
    kwargs["bnb_4bit_compute_dtype"] = torch_dtype(kwargs["bnb_4bit_compute_dtype"])
    return BitsAndBytesConfig(**kwargs)


def load_base_model(plan: dict, quantize: bool = True) -> Any:
    """Return the plan's base model loaded for training: the plan's dtype, 4-bit when planned and ``quantize``.

    Raises OSError when the weights cannot be read.
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(plan["model"]["dtype"])}
    quant = bnb_config(plan) if quantize else None
    if quant is not None:
        kwargs["quantization_config"] = quant
        if plan["device"]["type"] == "cuda":
            import torch

            kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(plan["model"]["path"], **kwargs)
    if quant is not None and plan["device"]["type"] == "cpu":
        disable_cpu_weight_packing(model)
    return model


def disable_cpu_weight_packing(model: Any) -> int:
    """Keep bitsandbytes from repacking 4-bit weights for its CPU inference kernel; returns the layers changed.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 converts a ``Linear4bit`` weight in place the first
    time it runs in eval mode without gradients (absmax rounded to bfloat16), and converts it back
    when the state dict is read. An evaluation before training would then silently perturb the
    frozen base, and eval losses would come from a different kernel than training. With packing off,
    training, evaluation and a reloaded adapter all use the same dequantize-and-matmul path.
    """
    import bitsandbytes as bnb

    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def load_tokenizer(model_path: str) -> Any:
    """Return the tokenizer of ``model_path`` with a pad token (EOS when it has none).

    Raises PlanError when the directory has no tokenizer.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise PlanError([Diagnostic("plan-no-tokenizer", f"cannot load a tokenizer from {model_path}: {exc}",
                                    Location("--model"), "save the tokenizer next to the model")]) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
