"""AdaLoRA checkpoint state: what peft's checkpoint lacks to continue a run exactly.

Imported only when a run saves or resumes an AdaLoRA checkpoint (imports torch).
"""

from __future__ import annotations

import os
from typing import Any

import torch


def _peft_model(model: Any) -> Any:
    while hasattr(model, "module") and not hasattr(model, "base_model"):
        model = model.module  # DDP / accelerate wrappers
    return model


def _full(tensor: Any) -> Any:
    """Return a full CPU copy of a parameter (gathering a sharded FSDP2 DTensor: every process must call it)."""
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu", copy=True)


def save_state(model: Any, path: str, write: bool = True) -> None:
    """Write the adapter tensors (unpruned), the rank pattern and the rank allocator's scores to ``path`` atomically."""
    peft_model = _peft_model(model)
    adalora = peft_model.base_model
    adapter = adalora.trainable_adapter_name
    tensors = {name: _full(p) for name, p in peft_model.named_parameters() if f".{adapter}" in name}
    if not write:
        return
    allocator = adalora.rankallocator
    state = {
        "tensors": tensors,
        "rank_pattern": adalora.peft_config[adapter].rank_pattern,
        "allocator": {key: {n: t.detach().to("cpu", copy=True) for n, t in getattr(allocator, key).items()}
                      for key in ("ipt", "exp_avg_ipt", "exp_avg_unc")},
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(model: Any, path: str) -> None:
    """Restore the state :func:`save_state` wrote into ``model``; raises KeyError when a tensor is missing."""
    peft_model = _peft_model(model)
    adalora = peft_model.base_model
    adapter = adalora.trainable_adapter_name
    state = torch.load(path, map_location="cpu", weights_only=False)
    tensors = state["tensors"]
    params = {name: p for name, p in peft_model.named_parameters() if f".{adapter}" in name}
    missing = sorted(set(params) - set(tensors))
    if missing:
        raise KeyError(f"{path} lacks {len(missing)} adapter tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(p.device, p.dtype))
    adalora.peft_config[adapter].rank_pattern = state["rank_pattern"]
    allocator = adalora.rankallocator
    for key, values in state["allocator"].items():
        current = getattr(allocator, key)
        current.clear()
        for n, t in values.items():
            current[n] = t.to(params[next(iter(params))].device)
