"""DoRA executor (method ``dora``): LoRA with weight decomposition, ``LoraConfig(use_dora=True)``."""

from ..lora.executor import LoraExecutor


class DoraExecutor(LoraExecutor):
    """DoRA (Liu et al.): LoRA on the direction plus a trained magnitude vector per output feature."""

    method = "dora"

    use_dora = True


__all__ = ["DoraExecutor"]
