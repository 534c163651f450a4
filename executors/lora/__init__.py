"""LoRA executor (method ``lora``)."""

from .executor import LoraExecutor

__all__ = ["LoraExecutor"]
