"""AdaLoRA executor (method ``adalora``)."""

from .executor import AdaLoraExecutor, adalora_schedule

__all__ = ["AdaLoraExecutor", "adalora_schedule"]
