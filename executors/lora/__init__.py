"""LoRA executor (registers ``lora``)."""

from .executor import LoraExecutor

__all__ = ["LoraExecutor"]
