"""QLoRA (Dettmers et al. 2023): LoRA on a frozen 4-bit NF4 base with double quantization (bitsandbytes)."""

from __future__ import annotations

from ..trainable import count_lora
from .spec import CostTerms, MemoryTerms, MethodSpec
from .terms import kbit_residual_bytes, lora_layer_fixed, nf4_lora_layer, nf4_workspace

SPEC = MethodSpec(
    name="qlora", label="QLoRA", order=3,
    summary="LoRA on a 4-bit NF4-quantized frozen base",
    hyperparameters=frozenset({"rank", "alpha", "dropout", "target_modules", "quantization"}),
    trainable=count_lora,
    memory=MemoryTerms(base="nf4", layer=nf4_lora_layer, layer_fixed=lora_layer_fixed, workspace=nf4_workspace,
                       residual_bytes=kbit_residual_bytes),
    cost=CostTerms(slowdowns=("qlora",)),
    executor="executors.qlora:QLoraExecutor",
    colour="#17becf", peft_type="LORA",
    defaults={"rank": 16, "alpha_per_rank": 2, "dropout": 0.05,
              "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}},
)
