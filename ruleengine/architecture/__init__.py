"""Model architecture: from a Hugging Face ``config.json``, counted by transformers, or inferred from a count.

The memory model needs more than a parameter count: the width of every linear layer (LoRA and
IA3 counts, activation sizes), the vocabulary (logits), which parameters are linear layers (only
those are 4-bit quantized by QLoRA), the number of layers and, for mixture-of-experts models,
which weights are routed experts. This package computes all of it:

- :func:`from_hf_config` / :func:`load_hf_config`: the closed form, without torch, exact for every
  family of the table in :mod:`.families` (:data:`SUPPORTED_MODEL_TYPES`), and an estimate with
  ``warnings`` for an unknown ``model_type`` that has the common fields;
- :func:`exact_architecture`: any model transformers can build, counted on the meta device
  (needs the ``train`` extra);
- :func:`infer_from_params`: a plausible Llama shape for a bare parameter count.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - the names as type checkers see them
    from .config import from_hf_config, load_hf_config
    from .exact import TrainExtraMissing, exact_architecture
    from .families import FAMILIES, SUPPORTED_MODEL_TYPES
    from .infer import LLAMA_SHAPES, MIN_INFER_PARAMS, infer_from_params
    from .model import Architecture, ArchitectureError, LayerGroup, Linear, shape_params

# name -> submodule: imported on first use (PEP 562), so a decision that infers its shape from a
# parameter count never loads the config reader and the family table
_EXPORTS = {
    "from_hf_config": "config", "load_hf_config": "config", "exact_architecture": "exact",
    "TrainExtraMissing": "exact",
    "FAMILIES": "families", "SUPPORTED_MODEL_TYPES": "families", "LLAMA_SHAPES": "infer",
    "MIN_INFER_PARAMS": "infer", "infer_from_params": "infer", "Architecture": "model",
    "ArchitectureError": "model", "LayerGroup": "model", "Linear": "model", "shape_params": "model",
}

__all__ = [
    "FAMILIES", "LLAMA_SHAPES", "MIN_INFER_PARAMS", "SUPPORTED_MODEL_TYPES", "Architecture", "ArchitectureError",
    "LayerGroup", "Linear", "exact_architecture", "from_hf_config", "infer_from_params", "load_hf_config",
    "TrainExtraMissing", "shape_params",
]


def __getattr__(name: str) -> Any:
    """Return an exported name, importing its submodule on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
