"""AdaLoRA executor (registers ``adalora``)."""

from .executor import AdaLoraExecutor, adalora_schedule

__all__ = ["AdaLoraExecutor", "adalora_schedule"]
