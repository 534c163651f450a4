"""Per-GPU memory estimate of fine-tuning a model with one method, in GiB.

The estimate is a sum of mechanisms, each a formula here with its source; every number it uses
lives in the policy's ``memory:`` mapping (policies/default/memory.yaml, schema
schemas/memory.schema.json). docs/memory-model.md derives each term and lists the published
measurements it is tested against (tests/ruleengine/test_memory.py: within ±15%).

Peak per GPU = weights + gradients + optimizer states + quantization constants
             + activations + logits (both alive at the start of backward)
             + overhead (CUDA context, allocator fragmentation, transient working buffers).

This module imports neither torch nor transformers nor peft.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from . import methods
from .architecture import Architecture
from .methods import MethodConfig
from .methods.terms import all_groups

GIB = float(2**30)
PRECISIONS = ("fp32", "bf16_mixed", "fp16_mixed", "bf16_pure")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "sgd")
SHARDINGS = ("none", "zero2", "zero3", "fsdp", "zero3_offload")
ATTENTIONS = ("sdpa", "eager")


# --- constants ------------------------------------------------------------------------------


@cache
def _bundled_sections() -> dict[str, Any]:
    """Return the bundled default policy's memory.yaml (``{"memory": ..., "cost": ...}``)."""
    import yaml

    from .paths import default_policy

    with open(default_policy() / "memory.yaml", encoding="utf-8") as fh:
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml when built with it


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def merged_section(name: str, section: dict | None) -> dict:
    """Return the policy section ``name`` (``memory`` or ``cost``) completed with the bundled defaults.

    Keys the policy gives win; omitted keys take policies/default/memory.yaml's values.
    """
    return _merge(_bundled_sections()[name], section or {})


@dataclass(frozen=True)
class MemoryConstants:
    """Every number the memory model uses, from the policy's ``memory:`` mapping (see memory.yaml)."""

    raw: dict

    @classmethod
    def from_policy(cls, section: dict | None) -> MemoryConstants:
        """Return the constants of a policy's ``memory:`` mapping, omitted keys taken from the bundled default.

        Raises ValueError when a required constant is missing or not a number after merging
        (a policy that passed schemas/memory.schema.json cannot trigger this).
        """
        data = merged_section("memory", section)
        for path in (("usable", "safety_margin"), ("overhead", "cuda_context_gib"), ("logits", "copies_fp32"),
                     ("activations", "checkpoint"), ("quantization", "block_size")):
            node: Any = data
            for key in path:
                if not isinstance(node, dict) or key not in node:
                    raise ValueError(f"memory constant `{'.'.join(path)}` is missing")
                node = node[key]
            if isinstance(node, bool) or not isinstance(node, (int, float)):
                raise ValueError(f"memory constant `{'.'.join(path)}` must be a number, got {node!r}")
        return cls(data)

    def get(self, *path: str) -> Any:
        """Return the constant at ``path`` (e.g. ``get("precision", "bf16_mixed", "weight_bytes")``).

        Raises KeyError naming the dotted path when it does not exist.
        """
        node: Any = self.raw
        for key in path:
            if not isinstance(node, dict) or key not in node:
                raise KeyError(f"memory constant `{'.'.join(path)}` is missing")
            node = node[key]
        return node

    def nf4_bytes_per_param(self, double_quant: bool | None = None) -> tuple[float, float]:
        """Return (payload, constants) bytes per quantized weight: 4-bit codes and the absmax scales.

        QLoRA §3 (Dettmers et al. 2023): a 64-weight block stores one fp32 absmax (32/64 = 0.5 bit);
        double quantization stores it as 8 bits with one fp32 scale per 256 blocks
        (8/64 + 32/(64*256) = 0.127 bit), so 4.127 bits = 0.516 B/param instead of 0.5625.
        """
        q = self.get("quantization")
        dq = q["double_quant"] if double_quant is None else double_quant
        payload = q["bits"] / 8.0
        if dq:
            scales = q["dq_absmax_bytes"] / q["block_size"] + q["dq_scale_bytes"] / (q["block_size"] * q["dq_block_size"])
        else:
            scales = q["absmax_bytes"] / q["block_size"]
        return payload, scales


def usable_gib(gpu_memory_gib: float, constants: MemoryConstants) -> float:
    """Return the memory a plan may use on one GPU: ``gpu_memory_gib * safety_margin - reserved_gib`` (>= 0)."""
    u = constants.get("usable")
    return max(0.0, float(gpu_memory_gib) * float(u["safety_margin"]) - float(u["reserved_gib"]))


# --- inputs and output ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSetup:
    """Training settings that change memory: precision, optimizer, batch shape, recompute and sharding.

    ``attention`` is ``sdpa`` (SDPA/FlashAttention: no attention-score matrix kept) or ``eager``.
    """

    precision: str = "bf16_mixed"
    optimizer: str = "adamw"
    micro_batch_size: int = 1
    seq_len: int = 2048
    gradient_checkpointing: bool = True
    sharding: str = "none"
    gpu_count: int = 1
    attention: str = "sdpa"

    def validate(self) -> None:
        """Raise ValueError naming the field when a setting is unknown or out of range."""
        for name, value, allowed in (("precision", self.precision, PRECISIONS), ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("sharding", self.sharding, SHARDINGS), ("attention", self.attention, ATTENTIONS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} `{value}`; use one of {', '.join(allowed)}")
        for label, number in (("micro_batch_size", self.micro_batch_size), ("seq_len", self.seq_len),
                              ("gpu_count", self.gpu_count)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise ValueError(f"{label} must be a positive integer, got {number!r}")


@dataclass
class Estimate:
    """Peak memory per GPU, GiB, by component; ``total_gib`` is their sum."""

    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    logits_gib: float
    quant_constants_gib: float
    overhead_gib: float
    total_gib: float
    trainable_params: int
    total_params: int
    cpu_offload_gib: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Return the estimate as a JSON-safe dict (GiB rounded to 4 decimals)."""
        out: dict[str, Any] = {}
        for key in ("weights_gib", "gradients_gib", "optimizer_gib", "activations_gib", "logits_gib",
                    "quant_constants_gib", "overhead_gib", "total_gib", "cpu_offload_gib"):
            out[key] = round(float(getattr(self, key)), 4)
        out["trainable_params"] = int(self.trainable_params)
        out["total_params"] = int(self.total_params)
        out["notes"] = list(self.notes)
        return out


# --- the model ------------------------------------------------------------------------------


def _group_width(arch: Architecture, group: str) -> int:
    return {"attn_in": arch.hidden_size, "o_in": arch.q_dim, "mlp_in": arch.hidden_size,
            "down_in": arch.intermediate_size}[group]


def layer_activation_bytes(arch: Architecture, cfg: MethodConfig, setup: TrainingSetup, c: MemoryConstants,
                           kv_len: int) -> float:
    """Return the bytes one decoder layer keeps for backward per token (no recomputation).

    Derived tensor by tensor for HF transformers decoder layers (docs/memory-model.md §Activations),
    in the spirit of Korthikanti et al. 2022 (arXiv 2205.05198, Eq. 1: ``s·b·h·(34 + 5·a·s/h)`` for a
    GPT layer) but for SwiGLU MLPs (gate, up and SiLU outputs are ``intermediate_size`` wide, not 4h),
    RMSNorm's fp32 upcast, GQA (k and v are ``kv_dim`` wide) and without dropout. With SDPA/flash
    attention the ``5·a·s/h`` score term is gone; ``eager`` keeps ``eager_scores`` bytes per head and
    key. A frozen base keeps no linear-layer inputs (their weight gradients are not needed) but still
    keeps everything backpropagation *through* the layer needs; the method's entry adds what its own
    parameters need (``MemoryTerms.layer``). ``kv_len`` is the number of keys each query attends to
    (seq_len, + prefix tokens). Raises ValueError for unknown target modules or methods and KeyError
    for a missing constant.
    """
    terms = methods.get(cfg.method).memory
    a = c.get("activations")
    scale = c.get("precision", setup.precision, "activation_bytes") / 2.0
    h, q_dim, kv_dim, inter = arch.hidden_size, arch.q_dim, arch.kv_dim, arch.intermediate_size
    n = 0.0
    # norms: two per layer, fp32 input copy; the normalized tensor too when the norm weight trains
    norm_in = a["norm_input"] if arch.norm != "none" else 0.0
    n += 2 * h * (norm_in + (a["norm_output"] * scale if terms.trains_base and arch.norm != "none" else 0.0))
    # attention core: q, k, v, output (flash/SDPA); eager adds the probabilities
    kv_width = kv_dim if setup.attention == "sdpa" else q_dim  # eager repeats k/v to every head (repeat_kv)
    n += (q_dim * a["attention_q"] + kv_width * a["attention_kv"] + q_dim * a["attention_out"]) * scale
    if setup.attention == "eager":
        n += arch.num_attention_heads * kv_len * a["eager_scores"]
    # MLP internals
    n += inter * (a["gated_mlp"] if arch.mlp == "gated" else a["plain_mlp"]) * scale
    # inputs of linear layers kept for weight gradients, and what the method's own parameters keep
    groups: frozenset[str] = all_groups(arch) if terms.trains_base else frozenset()
    if terms.layer is not None:
        extra, own = terms.layer(arch, cfg, setup, c, scale)
        n += extra
        groups |= own
    n += sum(_group_width(arch, g) for g in groups) * a["linear_input"] * scale
    return n


def _activations_per_sequence(arch: Architecture, cfg: MethodConfig, setup: TrainingSetup, c: MemoryConstants,
                              notes: list[str]) -> tuple[float, int]:
    """Return (activation bytes per sequence of the micro-batch, tokens per sequence the logits cover)."""
    terms = methods.get(cfg.method).memory
    a = c.get("activations")
    scale = c.get("precision", setup.precision, "activation_bytes") / 2.0
    s = setup.seq_len
    seq, kv_len = terms.tokens(cfg, s) if terms.tokens is not None else (s, s)
    per_layer = layer_activation_bytes(arch, cfg, setup, c, kv_len)
    recompute = setup.gradient_checkpointing
    if recompute and terms.recompute is not None:
        recompute, why = terms.recompute(c)
        if not recompute:
            notes.append(why)
    if recompute:
        ckpt = a["checkpoint"] * scale
        if terms.checkpoint_floor is not None:
            ckpt = max(ckpt, terms.checkpoint_floor(c))
        # every layer keeps its input; one layer's activations are rebuilt at a time in backward
        body = seq * (arch.num_layers * arch.hidden_size * ckpt + per_layer)
    else:
        body = seq * arch.num_layers * per_layer
    # final norm (+ lm_head input when it trains)
    tail = seq * arch.hidden_size * (a["norm_input"] + (a["norm_output"] + a["linear_input"]) * scale
                                     * terms.trains_base)
    extra = terms.sequence_extra(arch, cfg, 1, c, scale) if terms.sequence_extra is not None else 0.0
    return body + tail + extra, seq


@dataclass(frozen=True)
class MemoryProfile:
    """The per-GPU memory of one method and setup as a function of the micro-batch (bytes).

    Everything but the micro-batch is fixed: persistent state (weights, gradients, optimizer states,
    quantization constants), what one sequence adds (activations and logits, alive together at the
    start of backward), the fixed working buffers, and the optimizer step's temporaries, which only
    count where they exceed the activations backward has already freed. So

        total(b) = (1 + f) * (persistent + work + max(b * per_sequence, step_temp)) + cuda_context

    with ``f`` the allocator fraction: monotone in ``b``, and the largest micro-batch that fits a limit
    is solved in closed form (:meth:`largest_batch`).
    """

    weights: float
    gradients: float
    optimizer: float
    quant_constants: float
    activations_per_seq: float
    logits_per_seq: float
    tokens_per_seq: int
    work: float
    step_temp: float
    cuda_context: float
    allocator_fraction: float
    trainable_params: int
    total_params: int
    cpu_offload: float
    notes: tuple[str, ...]

    @property
    def persistent(self) -> float:
        """Return the bytes that do not depend on the micro-batch (weights, grads, states, constants)."""
        return self.weights + self.gradients + self.optimizer + self.quant_constants

    @property
    def per_sequence(self) -> float:
        """Return the bytes each sequence of the micro-batch adds (activations + logits)."""
        return self.activations_per_seq + self.logits_per_seq

    def _parts(self, micro_batch: int) -> tuple[float, float, float, float]:
        """Return (activations, logits, overhead, total) in bytes at ``micro_batch``."""
        activations = micro_batch * self.activations_per_seq
        logits = micro_batch * self.logits_per_seq
        # the optimizer step runs after backward freed the activations: only its excess counts
        work = self.work + max(0.0, self.step_temp - activations - logits)
        persistent = self.persistent
        live = persistent + activations + logits + work
        overhead = self.cuda_context + self.allocator_fraction * live + work
        return activations, logits, overhead, persistent + activations + logits + overhead

    def total_gib(self, micro_batch: int) -> float:
        """Return the total GiB per GPU at ``micro_batch`` (the ``total_gib`` of :meth:`at`)."""
        return self._parts(micro_batch)[3] / GIB

    def at(self, micro_batch: int) -> Estimate:
        """Return the estimate (GiB by component) at ``micro_batch`` sequences per GPU."""
        activations, logits, overhead, total = self._parts(micro_batch)
        return Estimate(
            weights_gib=self.weights / GIB, gradients_gib=self.gradients / GIB, optimizer_gib=self.optimizer / GIB,
            activations_gib=activations / GIB, logits_gib=logits / GIB,
            quant_constants_gib=self.quant_constants / GIB, overhead_gib=overhead / GIB, total_gib=total / GIB,
            trainable_params=self.trainable_params, total_params=self.total_params,
            cpu_offload_gib=self.cpu_offload / GIB, notes=list(self.notes))

    def largest_batch(self, limit_gib: float, allowed: tuple[int, ...]) -> int | None:
        """Return the largest micro-batch in ``allowed`` whose total is within ``limit_gib``, or None.

        Solved from the closed form (the bound below), then confirmed with :meth:`total_gib`, so a
        value exactly on the boundary is judged by the same arithmetic as a single estimate.
        """
        budget = (limit_gib * GIB - self.cuda_context) / (1 + self.allocator_fraction) - self.persistent - self.work
        slack = 1e-9 * (abs(budget) + self.persistent + self.step_temp) + 1.0
        if budget + slack < self.step_temp:
            return None
        bound = (budget + slack) / self.per_sequence if self.per_sequence > 0 else float("inf")
        for b in sorted(allowed, reverse=True):
            if b <= bound and self.total_gib(b) <= limit_gib:
                return b
        return None


def profile(arch: Architecture, cfg: MethodConfig, setup: TrainingSetup, constants: MemoryConstants) -> MemoryProfile:
    """Return the memory profile of fine-tuning ``arch`` with ``cfg`` under ``setup`` (its micro-batch unused).

    Raises ValueError for an unknown method, precision, optimizer or sharding, missing method
    hyperparameters (rank, num_virtual_tokens, adapter_size) or unknown target modules.
    """
    spec = methods.get(cfg.method)
    terms = spec.memory
    setup.validate()
    c = constants
    notes: list[str] = []
    prec = c.get("precision", setup.precision)
    opt = c.get("optimizer", setup.optimizer)
    adapter = c.get("adapter")
    trainable_memo = arch.memo("trainable")
    trainable = trainable_memo.get(cfg)
    if trainable is None:
        trainable = trainable_memo[cfg] = spec.trainable(arch, cfg)
    parts = arch.param_breakdown()
    total_params = int(arch.params)
    n_gpu = setup.gpu_count
    sharding = setup.sharding
    shard_w = n_gpu if sharding in ("zero3", "fsdp", "zero3_offload") else 1
    shard_go = n_gpu if sharding != "none" else 1
    if arch.source == "inferred":
        notes.append("architecture inferred from the parameter count; give model.config for an exact estimate")

    # weights (own shard) and quantization constants
    quant_constants = 0.0
    if terms.base == "nf4":
        payload, scales = c.nf4_bytes_per_param(cfg.double_quant)
        q = c.get("quantization")
        base_weight_bytes = parts["linear"] * payload + (parts["embedding"] + parts["other"]) * q["unquantized_bytes"]
        quant_constants = parts["linear"] * scales / shard_w
        if q["unquantized_bytes"] > prec["weight_bytes"]:
            notes.append("prepare_model_for_kbit_training keeps embeddings, lm_head and norms in fp32")
        gathered_bytes, root_bytes = payload + scales, q["unquantized_bytes"]
    else:
        base_weight_bytes = total_params * prec["weight_bytes"]
        gathered_bytes, root_bytes = prec["weight_bytes"], prec["weight_bytes"]
    weights = base_weight_bytes / shard_w
    if not terms.trains_base:
        weights += trainable * adapter["weight_bytes"] / shard_w
    if shard_w > 1:  # ZeRO-3/FSDP all-gather whole layers (and the root unit) to compute
        gathered = c.get("sharding", "gathered_layers") * arch.layer_params() * gathered_bytes
        if c.get("sharding", "gather_root"):
            gathered += (parts["embedding"] + arch.hidden_size) * root_bytes
        weights += gathered * (1 - 1 / n_gpu)

    # gradients
    if terms.trains_base:
        grad_bytes = trainable * prec["grad_bytes"]
        state_elem = prec["state_bytes"]
        master = prec["master_bytes"]
    else:
        grad_bytes = trainable * adapter["grad_bytes"]
        state_elem = adapter["state_bytes"]
        master = 0
    gradients = grad_bytes / shard_go
    if sharding == "none" and n_gpu > 1:
        gradients += grad_bytes * c.get("sharding", "ddp_grad_copies")

    # optimizer states (+ master weights)
    elem = opt["state_bytes"] if opt["state_bytes"] is not None else state_elem
    per_param = master + opt["states"] * elem
    if opt["block_size"]:
        per_param += opt["states"] * opt["block_bytes"] / opt["block_size"]
    optimizer_bytes = trainable * per_param
    if terms.optimizer_extra is not None:
        optimizer_bytes += terms.optimizer_extra(trainable, c)
    step_temp = trainable * opt["step_temp_states"] * elem / shard_go
    cpu_offload = 0.0
    if sharding == "zero3_offload":
        cpu_offload = (optimizer_bytes + trainable * c.get("sharding", "offload_grad_bytes")) / n_gpu
        optimizer = 0.0
        step_temp = 0.0
    else:
        optimizer = optimizer_bytes / shard_go
    if opt["paged"]:
        notes.append(f"{setup.optimizer} keeps its states in unified memory: they page to the CPU under pressure")

    # activations and logits per sequence (alive together at the start of backward)
    activation_key = (cfg, setup.precision, setup.seq_len, setup.gradient_checkpointing, setup.attention, id(c))
    activation_memo = arch.memo("activations")
    found = activation_memo.get(activation_key)
    if found is None or found[0] is not c:
        extra_notes: list[str] = []
        per_sequence = _activations_per_sequence(arch, cfg, setup, c, extra_notes)
        found = activation_memo[activation_key] = (c, per_sequence, tuple(extra_notes))
    activations, tokens = found[1]
    notes.extend(found[2])
    lg = c.get("logits")
    logits = tokens * arch.vocab_size * (lg["copies_16bit"] * prec["activation_bytes"] + lg["copies_fp32"] * 4)

    work = terms.workspace(arch, cfg, c) if terms.workspace is not None else 0.0
    ov = c.get("overhead")
    return MemoryProfile(
        weights=weights, gradients=gradients, optimizer=optimizer, quant_constants=quant_constants,
        activations_per_seq=activations, logits_per_seq=logits, tokens_per_seq=tokens, work=work,
        step_temp=step_temp, cuda_context=ov["cuda_context_gib"] * GIB, allocator_fraction=ov["allocator_fraction"],
        trainable_params=int(trainable), total_params=total_params, cpu_offload=cpu_offload, notes=tuple(notes))


def estimate(arch: Architecture, cfg: MethodConfig, setup: TrainingSetup, constants: MemoryConstants) -> Estimate:
    """Return the peak memory per GPU of fine-tuning ``arch`` with ``cfg`` under ``setup``, in GiB.

    Raises ValueError for an unknown method, precision, optimizer or sharding, missing method
    hyperparameters (rank, num_virtual_tokens, adapter_size) or unknown target modules.
    """
    return profile(arch, cfg, setup, constants).at(setup.micro_batch_size)


def bytes_per_param(setup: TrainingSetup, constants: MemoryConstants) -> float:
    """Return full fine-tuning's persistent bytes per parameter (weights + gradients + optimizer, no sharding).

    16 for mixed-precision AdamW (2 + 2 + 4 master + 8 states, ZeRO paper's 16Ψ), 8 for pure bf16.
    Raises KeyError for an unknown precision or optimizer.
    """
    prec = constants.get("precision", setup.precision)
    opt = constants.get("optimizer", setup.optimizer)
    elem = opt["state_bytes"] if opt["state_bytes"] is not None else prec["state_bytes"]
    per = prec["weight_bytes"] + prec["grad_bytes"] + prec["master_bytes"] + opt["states"] * elem
    if opt["block_size"]:
        per += opt["states"] * opt["block_bytes"] / opt["block_size"]
    return float(per)

