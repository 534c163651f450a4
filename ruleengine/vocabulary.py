"""The names a policy may refer to: given facts, derived facts and verdict fields, with their types.

Every referenceable fact is always present after normalization, so conditions never meet a
missing value and negation is classical.
"""

from __future__ import annotations

from dataclasses import dataclass

from .methods import method_names, ranked_method_names

#: the registered methods (ruleengine/methods), in listing order; the ranked ones are the LoRA family
METHODS = method_names()
RANKED_METHODS = ranked_method_names()
SHIFTS = ("style_format", "domain_adaptation", "new_knowledge", "continual_pretraining")
QUALITIES = ("research_best", "production", "prototype")
PRECISIONS = ("fp32", "bf16_mixed", "fp16_mixed", "bf16_pure")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "sgd")
SHARDINGS = ("auto", "none", "zero2", "zero3", "fsdp", "zero3_offload")
TARGET_PRESETS = ("all-linear", "attention", "mlp")
LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FactType:
    """A referenceable fact: its kind (number, integer, bool, enum, string) and allowed values."""

    kind: str
    description: str
    values: tuple[str, ...] | None = None  # for enums; None = taken from the policy (use cases, GPUs)
    values_from: str = ""  # "use_cases" | "gpus" when the enum comes from the policy
    unit: str = ""  # numbers: a unit of ruleengine.units.UNITS; thresholds compared with the fact must use it
    plausible: tuple[float, float] | None = None  # narrower than the unit's range, e.g. one GPU's memory

    @property
    def numeric(self) -> bool:
        """Return True for number and integer facts."""
        return self.kind in ("number", "integer")


GPU_GIB = (0.0, 4096.0)  # one GPU's memory, GiB (the largest today hold under 300)
GPU_GIB_ANY = (0.0, 1e6)  # an estimate may exceed any GPU
SEQ_TOKENS = (1.0, 1e8)  # tokens of one sequence

GIVEN: dict[str, FactType] = {
    "model.params": FactType("number", "total parameter count (exact from model.config, else as given)",
                             unit="params"),
    "hardware.gpu": FactType("enum", "GPU catalog name", values_from="gpus"),
    "hardware.gpu_memory_gb": FactType("number", "memory of one GPU, GiB", unit="GiB", plausible=GPU_GIB),
    "hardware.gpu_count": FactType("integer", "number of GPUs", unit="count", plausible=(1, 1e6)),
    "hardware.host_memory_gb": FactType("number", "host (CPU) RAM of one node, GiB; 0 = unknown", unit="GiB",
                                        plausible=(0, 1e5)),
    "data.examples": FactType("number", "training examples (sum over tasks)", unit="examples"),
    "data.avg_tokens": FactType("number", "average tokens per example", unit="tokens", plausible=SEQ_TOKENS),
    "data.seq_len": FactType("integer", "maximum sequence length of the data", unit="tokens", plausible=SEQ_TOKENS),
    "task.use_case": FactType("enum", "key of the policy's use-case table", values_from="use_cases"),
    "task.shift": FactType("enum", "distribution shift the task needs", SHIFTS),
    "task.quality": FactType("enum", "quality requirement", QUALITIES),
    "serving.latency_sensitive": FactType("bool", "whether inference latency matters"),
    "serving.requests_per_day": FactType("number", "inference requests per day", unit="requests/day"),
    "serving.avg_latency_ms": FactType("number", "average request latency, ms", unit="ms", plausible=(0, 3.6e6)),
    "serving.adapters": FactType("integer", "adapters sharing one base model when served", unit="count"),
    "training.precision": FactType("enum", "training precision", PRECISIONS),
    "training.optimizer": FactType("enum", "optimizer", OPTIMIZERS),
    "training.micro_batch_size": FactType("integer", "sequences per GPU per step", unit="count", plausible=(1, 65536)),
    "training.seq_len": FactType("integer", "training sequence length", unit="tokens", plausible=SEQ_TOKENS),
    "training.gradient_checkpointing": FactType("bool", "recompute activations in backward"),
    "training.sharding": FactType("enum", "multi-GPU sharding strategy", SHARDINGS),
}

DERIVED: dict[str, FactType] = {
    "model.params_b": FactType("number", "parameters in billions", unit="Bparams"),
    "model.num_layers": FactType("integer", "decoder layers", unit="count", plausible=(1, 1e5)),
    "model.hidden_size": FactType("integer", "hidden size", unit="count", plausible=(1, 1e7)),
    "model.vocab_size": FactType("integer", "vocabulary size", unit="tokens", plausible=(1, 1e8)),
    "model.arch_inferred": FactType("bool", "architecture inferred from the parameter count"),
    "hardware.total_memory_gb": FactType("number", "GPU memory over all GPUs, GiB", unit="GiB"),
    "hardware.usable_gb": FactType("number", "usable memory of one GPU after the safety margin, GiB", unit="GiB",
                                   plausible=GPU_GIB),
    "hardware.bf16": FactType("bool", "GPU supports bfloat16"),
    "hardware.price_per_hour": FactType("number", "USD per GPU-hour", unit="$/hour"),
    "data.num_tasks": FactType("integer", "number of tasks (multi-task when > 1)", unit="count", plausible=(1, 1e6)),
    "data.tokens_total": FactType("number", "examples x average tokens", unit="tokens"),
    "use_case.method": FactType("enum", "method of the use-case row", METHODS),
    "use_case.rank": FactType("integer", "rank of the use-case row (0 if none)", unit="rank"),
    "serving.unmerged_gpu_hours_per_day": FactType(
        "number", "GPU-hours per day lost to unmerged-adapter latency overhead", unit="GPU-hours/day"),
    "fits.any": FactType("bool", "at least one method fits in memory"),
    **{f"fits.{m}": FactType("bool", f"{m} at its default configuration fits in usable memory") for m in METHODS},
    **{f"mem.{m}_gb": FactType("number", f"per-GPU memory estimate of {m}, GiB", unit="GiB", plausible=GPU_GIB_ANY)
       for m in METHODS},
}

VERDICT: dict[str, FactType] = {
    "verdict.method": FactType("enum", "the chosen method", METHODS),
    "verdict.rank": FactType("integer", "the chosen rank (0 if none)", unit="rank"),
    "verdict.feasible": FactType("bool", "a method was chosen"),
    "verdict.sharding": FactType("enum", "the resolved sharding", SHARDINGS),
    "verdict.memory_gb": FactType("number", "per-GPU memory estimate of the verdict, GiB", unit="GiB",
                                  plausible=GPU_GIB),
    "verdict.headroom_gb": FactType("number", "usable memory minus the verdict's estimate, GiB", unit="GiB",
                                    plausible=(-4096, 4096)),
}


def vocabulary(kind: str) -> dict[str, FactType]:
    """Return the facts a rule of ``kind`` ("select" or "advise") may reference."""
    names = {**GIVEN, **DERIVED}
    if kind == "advise":
        names.update(VERDICT)
    return names


def field_name(path: str) -> str:
    """Return the flat durable-rules field name for a dotted fact path (``model.params`` -> ``model__params``)."""
    return path.replace(".", "__")
