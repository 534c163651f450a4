"""QLoRA executor (method ``qlora``): the LoRA recipe on a 4-bit NF4 base (bitsandbytes)."""

from ..lora.executor import LoraExecutor


class QLoraExecutor(LoraExecutor):
    """QLoRA (Dettmers et al.): LoRA on a frozen 4-bit NF4 base with double quantization.

    Only the quantization differs from LoRA: the plan always carries a BitsAndBytesConfig, and the
    base is prepared with ``prepare_model_for_kbit_training`` (see ``Executor.wrap``).
    """

    method = "qlora"

    always_quantized = True


__all__ = ["QLoraExecutor"]
