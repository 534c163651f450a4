"""DoRA executor (registers ``dora``): LoRA with weight decomposition, ``LoraConfig(use_dora=True)``."""

from .. import register
from ..lora.executor import LoraExecutor


@register("dora")
class DoraExecutor(LoraExecutor):
    """DoRA (Liu et al.): LoRA on the direction plus a trained magnitude vector per output feature."""

    use_dora = True


__all__ = ["DoraExecutor"]
