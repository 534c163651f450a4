"""Per-GPU memory estimate of fine-tuning a model with one method, in GiB.

The estimate is a sum of mechanisms, each a formula here with its source; every number it uses
lives in the policy's ``memory:`` mapping (policies/default/memory.yaml, schema
schemas/memory.schema.json). docs/memory-model.md derives each term and compares the model with
the published runs of tests/fixtures/published_runs.yaml (tests/ruleengine/test_memory.py).

Peak per GPU = weights + optimizer states + quantization constants + persistent gradient buffers
             + max(activations + logits [+ gradients, with gradient accumulation],
                   gradients + optimizer-step temporaries)        (the two phases of a step)
             + overhead (CUDA context, allocator fragmentation, transient working buffers).

What a measurement sees differs (:meth:`MemoryProfile.measured_gib`): ``nvidia-smi`` the whole
total; ``torch.cuda.max_memory_reserved`` everything but the CUDA context and paged optimizer
states (bitsandbytes allocates those with cudaMallocManaged, outside torch's allocator);
``max_memory_allocated`` / ``active`` the live tensors only.

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
from .methods.terms import Dtypes, GroupLayout, layer_layout
from .policy.upgrade import upgraded
from .units import format_count

GIB = float(2**30)
PRECISIONS = ("fp32", "bf16_mixed", "fp16_mixed", "bf16_pure")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "sgd")
SHARDINGS = ("none", "zero2", "zero3", "fsdp", "zero3_offload")
ATTENTIONS = ("sdpa", "eager")
MEASUREMENTS = ("device", "reserved", "allocated", "active")
SHARDED_WEIGHTS = ("zero3", "fsdp", "zero3_offload")
COMPONENTS = ("weights", "gradients", "optimizer", "quant_constants", "activations", "logits", "overhead")


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
        data = upgraded("memory", merged_section("memory", section))
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
    ``gradient_accumulation``: more than one micro-batch per optimizer step, so the gradients of
    earlier micro-batches are alive during the next forward; False: one micro-batch per step and
    gradients set to None after it (they exist only from backward to the optimizer step).
    """

    precision: str = "bf16_mixed"
    optimizer: str = "adamw"
    micro_batch_size: int = 1
    seq_len: int = 2048
    gradient_checkpointing: bool = True
    sharding: str = "none"
    gpu_count: int = 1
    attention: str = "sdpa"
    gradient_accumulation: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the field when a setting is unknown or out of range."""
        if (self.precision in PRECISIONS and self.optimizer in OPTIMIZERS and self.sharding in SHARDINGS
                and self.attention in ATTENTIONS and type(self.micro_batch_size) is int and self.micro_batch_size >= 1
                and type(self.seq_len) is int and self.seq_len >= 1 and type(self.gpu_count) is int
                and self.gpu_count >= 1):
            return  # the common case, checked without building the messages
        for name, value, allowed in (("precision", self.precision, PRECISIONS), ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("sharding", self.sharding, SHARDINGS), ("attention", self.attention, ATTENTIONS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} `{value}`; use one of {', '.join(allowed)}")
        for label, number in (("micro_batch_size", self.micro_batch_size), ("seq_len", self.seq_len),
                              ("gpu_count", self.gpu_count)):
            if type(number) is not int or number < 1:
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


@dataclass(frozen=True)
class Term:
    """One term of the estimate, for a breakdown a user can check: ``bytes`` per GPU, or per sequence."""

    component: str  # one of COMPONENTS
    name: str
    detail: str
    bytes: float
    per_sequence: bool = False


# --- the model ------------------------------------------------------------------------------


def _attention_widths(arch: Architecture) -> tuple[int, int, int, int]:
    """Return the widths of q, k, v and the attention output per token (MLA: heads x its own head dims)."""
    if arch.attention == "mla":
        heads, qk = arch.num_attention_heads, arch.qk_nope_head_dim + arch.qk_rope_head_dim
        return heads * qk, heads * qk, heads * arch.v_head_dim, heads * arch.v_head_dim
    return arch.q_dim, arch.kv_dim, arch.kv_dim, arch.q_dim


def _layer_parts(arch: Architecture, group: GroupLayout, cfg: MethodConfig, setup: TrainingSetup,
                 c: MemoryConstants, dt: Dtypes, kv_len: int, mlp_scale: float) -> dict[str, float]:
    """Return the bytes one decoder layer of ``group`` keeps for backward per token, by part.

    Counted tensor by tensor for HF transformers decoder layers (docs/memory-model.md §4), in the
    spirit of Korthikanti et al. 2022 (arXiv 2205.05198, Eq. 1: ``s·b·h·(34 + 5·a·s/h)`` for a GPT
    layer) but from the layer's actual widths: ``norms_per_layer`` fp32 norm inputs (and q/k norms,
    MLA's latent norms), q/k/v/output for SDPA (``eager`` adds the probabilities), the MLP internals
    of the intermediate width a token activates (dense, shared experts, top-k routed experts), the
    router's scores and the weighted expert outputs, the inputs of linear layers whose weights train
    (grouped: q/k/v share one input), and what the method keeps (``MemoryTerms.layer``).
    """
    terms = methods.get(cfg.method).memory
    a = c.raw["activations"]
    s = dt.scale
    h = arch.hidden_size
    per_norm = a["norm_input"] + (a["norm_output"] * s if terms.trains_base else 0.0)
    qw, kw, vw, ow = _attention_widths(arch)
    norms = arch.norms_per_layer * h * per_norm
    if arch.qk_norm:
        norms += (qw + kw) * per_norm
    if arch.attention == "mla":
        norms += (arch.q_lora_rank + arch.kv_lora_rank) * per_norm
    if setup.attention == "sdpa":
        k_eff, v_eff = kw, vw
    else:  # eager repeats k and v to every head (repeat_kv) and keeps the probabilities
        k_eff, v_eff = max(kw, qw), vw * (arch.num_attention_heads // max(1, arch.num_kv_heads))
    attention = (qw * a["attention_q"] + (k_eff + v_eff) * a["attention_kv"] / 2 + ow * a["attention_out"]) * s
    if setup.attention == "eager":
        attention += arch.num_attention_heads * kv_len * a["eager_scores"]
    mlp = group.mlp_width * (a["gated_mlp"] if arch.mlp == "gated" else a["plain_mlp"]) * mlp_scale
    router = group.router_width * a["router_per_expert"] + group.top_k * h * a["moe_combine"] * s
    if group.shared_gate:  # sigmoid(shared_expert_gate(x)) * shared_expert(x) keeps the shared output
        router += h * a["linear_input"] * s
    kept: set[str] = set(group.inputs) if terms.trains_base else set()
    method = 0.0
    if terms.layer is not None:
        extra, own = terms.layer(arch, group, cfg, setup, c, dt)
        method += extra
        kept |= own
    inputs = sum(group.inputs[k] for k in kept) * a["linear_input"] * s
    return {"norms": norms, "attention": attention, "mlp": mlp, "router": router, "linear inputs": inputs,
            "method": method}


def _kb(x: float) -> str:
    return f"{x / 1024:.1f} KB"


def _activations_per_sequence(arch: Architecture, cfg: MethodConfig, setup: TrainingSetup, c: MemoryConstants,
                              dt: Dtypes, logits_per_token: float, notes: list[str],
                              rows: list[Term] | None) -> tuple[float, int, float]:
    """Return (activation bytes per sequence, tokens per sequence the logits cover, per-step fixed bytes).

    ``logits_per_token``: the logits' bytes per token at the loss's backward; under checkpointing the
    recomputed layer only counts beyond them (they are freed before the layers' backward).
    """
    terms = methods.get(cfg.method).memory
    a = c.raw["activations"]
    s = setup.seq_len
    seq, kv_len = terms.tokens(cfg, s) if terms.tokens is not None else (s, s)
    residual = terms.residual_bytes(c) if terms.residual_bytes is not None else 0.0
    mlp_scale = max(dt.scale, residual / 2.0)
    layout = layer_layout(arch)
    per_group = [(g, _layer_parts(arch, g, cfg, setup, c, dt, kv_len, mlp_scale)) for g in layout]
    sizes = [(g, sum(parts.values())) for g, parts in per_group]
    largest = max(size for _g, size in sizes)
    # a layer's backward allocates the gradients of its MLP internals while its saved tensors are alive
    backward = max(g.mlp_width for g in layout) * (a["mlp_backward_gated"] if arch.mlp == "gated"
                                                   else a["mlp_backward_plain"]) * mlp_scale
    fixed = [terms.layer_fixed(arch, g, cfg, c, dt) if terms.layer_fixed is not None else 0.0 for g in layout]
    recompute = setup.gradient_checkpointing
    if recompute and terms.recompute is not None:
        recompute, why = terms.recompute(c)
        if not recompute:
            notes.append(why)
    layers = arch.num_layers
    on_gpu = min(layers, 2) if a["offload_checkpoints"] else layers
    if recompute:
        ckpt = max(a["checkpoint"] * dt.scale, residual)
        # every layer keeps its input; one layer's activations are rebuilt at a time in backward, after the
        # loss's backward freed the logits: only the recomputed layer's excess over the logits adds to the peak
        recomputed = max(0.0, largest + backward - logits_per_token)
        body = seq * (on_gpu * arch.hidden_size * ckpt + recomputed)
        step_fixed = max(fixed)
    else:
        body = seq * (sum(g.count * size for g, size in sizes) if on_gpu == layers else on_gpu * largest)
        step_fixed = sum(g.count * f for g, f in zip(layout, fixed, strict=True))
    # final norm (+ lm_head input when it trains)
    tail = seq * arch.hidden_size * (a["norm_input"] + (a["norm_output"] + a["linear_input"]) * dt.scale
                                     * terms.trains_base)
    extra = terms.sequence_extra(arch, cfg, 1, c, dt) if terms.sequence_extra is not None else 0.0
    if rows is not None:
        moe_layers = (f"; MoE layers: top-{arch.num_experts_per_tok} of {arch.num_experts} routed experts per token"
                      if arch.is_moe else "")
        for g, parts in per_group:
            what = ", ".join(f"{k} {_kb(v)}" for k, v in parts.items() if v)
            moe = (f"; top-{g.top_k} of {arch.num_experts} routed experts per token, MLP width "
                   f"{format_count(g.mlp_width)} active" if g.top_k else "")
            if recompute:
                continue
            rows.append(Term("activations", f"{g.kind} layers, kept for backward",
                             f"{g.count} layers x {seq} tokens x {_kb(sum(parts.values()))} per token per layer "
                             f"({what}){moe}" + (f"; saved tensors offloaded but {on_gpu} layers"
                                                 if on_gpu < layers else ""),
                             seq * (g.count if on_gpu == layers else 0) * sum(parts.values()), True))
        if recompute:
            ckpt = max(a["checkpoint"] * dt.scale, residual)
            rows.append(Term("activations", "checkpointed layer inputs",
                             f"{on_gpu} layers x {seq} tokens x hidden {arch.hidden_size} x {ckpt:g} B"
                             + (" (fp32 residual stream)" if residual > a["checkpoint"] * dt.scale else ""),
                             seq * on_gpu * arch.hidden_size * ckpt, True))
            g, parts = max(per_group, key=lambda gp: sum(gp[1].values()))
            what = ", ".join(f"{k} {_kb(v)}" for k, v in parts.items() if v)
            moe = moe_layers
            rows.append(Term("activations", "one layer recomputed in backward, beyond the freed logits",
                             f"{seq} tokens x max(0, {_kb(largest)} per token ({g.kind} layer: {what}){moe} + MLP "
                             f"gradients {_kb(backward)} - logits {_kb(logits_per_token)})", seq * recomputed, True))
        elif on_gpu < layers:
            rows.append(Term("activations", "layers in flight (saved tensors offloaded)",
                             f"{on_gpu} layers x {seq} tokens x {_kb(largest)}", seq * on_gpu * largest, True))
        rows.append(Term("activations", "final norm" + (" and lm_head input" if terms.trains_base else ""),
                         f"{seq} tokens x hidden {arch.hidden_size}", tail, True))
        if extra:
            rows.append(Term("activations", "learned prefix keys and values",
                             f"{cfg.num_virtual_tokens} virtual tokens x {arch.num_layers} layers x k and v", extra,
                             True))
    return body + tail + extra, seq, step_fixed


@dataclass(frozen=True)
class MemoryProfile:
    """The per-GPU memory of one method and setup as a function of the micro-batch (bytes).

    Everything but the micro-batch is fixed: persistent state (weights, optimizer states,
    quantization constants, persistent gradient buffers), what one sequence adds (activations and
    logits, alive together at the start of backward), the gradients (alive from backward to the
    optimizer step, and during the forward too when gradients accumulate: ``grad_forward``), the
    optimizer step's temporaries, and fixed working buffers. So, with ``f`` the allocator fraction,

        total(b) = persistent + (1 + f) * (work + max(b * per_sequence + grad_forward,
                                                      grad_step + step_temp)) + cuda_context

    monotone in ``b``, and the largest micro-batch that fits a limit is solved in closed form
    (:meth:`largest_batch`). ``paged`` is the part of the optimizer states in unified memory
    (paged optimizers), which torch's allocator statistics do not see.
    """

    weights: float
    optimizer: float
    quant_constants: float
    grad_persistent: float
    grad_forward: float
    grad_step: float
    step_temp: float
    activations_per_seq: float
    logits_per_seq: float
    tokens_per_seq: int
    work: float
    cuda_context: float
    allocator_fraction: float
    paged: float
    trainable_params: int
    total_params: int
    cpu_offload: float
    notes: tuple[str, ...]

    @property
    def persistent(self) -> float:
        """Return the bytes that do not depend on the micro-batch (weights, states, constants, gradient buffers)."""
        return self.weights + self.optimizer + self.quant_constants + self.grad_persistent

    @property
    def per_sequence(self) -> float:
        """Return the bytes each sequence of the micro-batch adds (activations + logits)."""
        return self.activations_per_seq + self.logits_per_seq

    def _phases(self, micro_batch: int) -> tuple[float, float, float]:
        """Return (activations, logits, step excess): the optimizer step's bytes beyond the forward peak."""
        activations = micro_batch * self.activations_per_seq
        logits = micro_batch * self.logits_per_seq
        forward = activations + logits + self.grad_forward
        return activations, logits, max(0.0, self.grad_step + self.step_temp - forward)

    def _live(self, micro_batch: int) -> float:
        activations, logits, excess = self._phases(micro_batch)
        return self.persistent + self.grad_forward + activations + logits + excess + self.work

    def _fragmentation(self, micro_batch: int) -> float:
        """Return the allocator's cache beyond live tensors: a fraction of what is allocated and freed every step.

        Weights, optimizer states and persistent buffers are allocated once, in large blocks, and do not
        fragment; activations, logits, gradients and working buffers come and go with each step.
        """
        return self.allocator_fraction * (self._live(micro_batch) - self.persistent)

    def total_gib(self, micro_batch: int) -> float:
        """Return the total GiB per GPU at ``micro_batch`` (the ``total_gib`` of :meth:`at`)."""
        return (self._live(micro_batch) + self._fragmentation(micro_batch) + self.cuda_context) / GIB

    def measured_gib(self, micro_batch: int, measurement: str = "device") -> float:
        """Return what a measurement of the peak would show at ``micro_batch``, GiB.

        ``device`` (nvidia-smi, or the GPU's capacity when it is the limit): the total;
        ``reserved`` (torch.cuda.max_memory_reserved): the allocator's blocks, without the CUDA
        context and without paged optimizer states (cudaMallocManaged, outside torch's allocator);
        ``allocated``/``active`` (max_memory_allocated, active_bytes.all.peak): the live tensors only.
        Raises ValueError for another measurement.
        """
        if measurement == "device":
            return self.total_gib(micro_batch)
        if measurement not in MEASUREMENTS:
            raise ValueError(f"unknown measurement `{measurement}`; use one of {', '.join(MEASUREMENTS)}")
        live = self._live(micro_batch) - self.paged
        return (live + (self._fragmentation(micro_batch) if measurement == "reserved" else 0.0)) / GIB

    def at(self, micro_batch: int) -> Estimate:
        """Return the estimate (GiB by component) at ``micro_batch`` sequences per GPU."""
        activations, logits, excess = self._phases(micro_batch)
        fragmentation = self._fragmentation(micro_batch)
        overhead = self.cuda_context + fragmentation + self.work + excess
        total = self._live(micro_batch) + fragmentation + self.cuda_context
        return Estimate(
            weights_gib=self.weights / GIB, gradients_gib=(self.grad_persistent + self.grad_forward) / GIB,
            optimizer_gib=self.optimizer / GIB, activations_gib=activations / GIB, logits_gib=logits / GIB,
            quant_constants_gib=self.quant_constants / GIB, overhead_gib=overhead / GIB, total_gib=total / GIB,
            trainable_params=self.trainable_params, total_params=self.total_params,
            cpu_offload_gib=self.cpu_offload / GIB, notes=list(self.notes))

    def largest_batch(self, limit_gib: float, allowed: tuple[int, ...]) -> int | None:
        """Return the largest micro-batch in ``allowed`` whose total is within ``limit_gib``, or None.

        Solved from the closed form (the bound below), then confirmed with :meth:`total_gib`, so a
        value exactly on the boundary is judged by the same arithmetic as a single estimate.
        """
        budget = (limit_gib * GIB - self.cuda_context - self.persistent) / (1 + self.allocator_fraction) - self.work
        slack = 1e-9 * (abs(budget) + self.persistent + self.step_temp + self.grad_step) + 1.0
        if budget + slack < self.grad_step + self.step_temp:
            return None
        room = budget + slack - self.grad_forward
        bound = room / self.per_sequence if self.per_sequence > 0 else (float("inf") if room >= 0 else -1.0)
        for b in sorted(allowed, reverse=True):
            if b <= bound and self.total_gib(b) <= limit_gib:
                return b
        return None


def profile(arch: Architecture, cfg: MethodConfig, setup: TrainingSetup, constants: MemoryConstants) -> MemoryProfile:
    """Return the memory profile of fine-tuning ``arch`` with ``cfg`` under ``setup`` (its micro-batch unused).

    Raises ValueError for an unknown method, precision, optimizer or sharding, missing method
    hyperparameters (rank, num_virtual_tokens, adapter_size) or unknown target modules.
    """
    return _profile(arch, cfg, setup, constants, None)


def breakdown(arch: Architecture, cfg: MethodConfig, setup: TrainingSetup,
              constants: MemoryConstants) -> list[dict[str, Any]]:
    """Return the estimate at ``setup.micro_batch_size`` term by term, for a user to check each one.

    Each row: ``component`` (weights, gradients, optimizer, quant_constants, activations, logits,
    overhead), ``term``, ``detail`` (the arithmetic in words: counts, widths, bytes, divisions by
    GPUs, active experts) and ``gib`` per GPU. The rows of a component sum to its figure in
    :func:`estimate`, and all rows to ``total_gib`` (tests check both). Raises like :func:`profile`.
    """
    rows: list[Term] = []
    prof = _profile(arch, cfg, setup, constants, rows)
    b = setup.micro_batch_size
    out = [{"component": t.component, "term": t.name,
            "detail": t.detail + (f" x {b} sequences" if t.per_sequence and b != 1 else ""),
            "gib": t.bytes * (b if t.per_sequence else 1) / GIB} for t in rows]
    activations, logits, excess = prof._phases(b)
    live = prof._live(b)
    if prof.grad_step and not prof.grad_forward:
        out.append({"component": "overhead", "term": "optimizer step beyond the forward peak",
                    "detail": f"gradients {prof.grad_step / GIB:.2f} GiB + step temporaries "
                              f"{prof.step_temp / GIB:.2f} GiB exist after backward freed activations and logits "
                              f"({(activations + logits) / GIB:.2f} GiB); only the excess counts",
                    "gib": excess / GIB})
    elif excess or prof.step_temp:
        out.append({"component": "overhead", "term": "optimizer step temporaries beyond freed activations",
                    "detail": f"{prof.step_temp / GIB:.2f} GiB in step(), after backward freed "
                              f"{(activations + logits) / GIB:.2f} GiB; only the excess counts",
                    "gib": excess / GIB})
    out.append({"component": "overhead", "term": "allocator fragmentation",
                "detail": f"{prof.allocator_fraction:g} x what each step allocates and frees "
                          f"{(live - prof.persistent) / GIB:.2f} GiB (weights and states are allocated once)",
                "gib": prof._fragmentation(b) / GIB})
    out.append({"component": "overhead", "term": "CUDA context and library workspaces",
                "detail": "fixed per process (not in torch's allocator statistics)", "gib": prof.cuda_context / GIB})
    return out


@dataclass(frozen=True)
class _ArchStatic:
    """What the weights and gradients terms read of an architecture, computed once per Architecture object."""

    parts: dict
    experts: int
    is_moe: bool
    groups: tuple[tuple[int, int], ...]  # per layer group: (parameters of one layer, its nn.Linear weights)
    layer_params: int  # the largest layer's parameters
    largest_param: int  # the largest single parameter tensor (embedding or a fused weight)

    @classmethod
    def of(cls, arch: Architecture) -> _ArchStatic:
        groups = tuple((g.params(), sum(m.weight_params for m in g.linears if m.kind == "linear"))
                       for g in arch.layer_groups)
        largest = max([arch.vocab_size * arch.embed_dim] + [m.weight_params for m in arch.linears().values()])
        return cls(arch.param_breakdown(), arch.expert_params(), arch.is_moe, groups,
                   max(p for p, _ in groups), largest)


def _profile(arch: Architecture, cfg: MethodConfig, setup: TrainingSetup, c: MemoryConstants,
             rows: list[Term] | None) -> MemoryProfile:
    spec = methods.get(cfg.method)
    terms = spec.memory
    setup.validate()
    notes: list[str] = []
    raw = c.raw  # the schema-checked constants (MemoryConstants.get checks each path; this is the hot path)
    prec = raw["precision"][setup.precision]
    opt = raw["optimizer"][setup.optimizer]
    adapter = raw["adapter"]
    sh = raw["sharding"]
    dt = Dtypes.of(prec, adapter["weight_bytes"])
    memo = arch.memo("memory")  # results that depend on the architecture and hashable inputs only
    static = memo.get("static")
    if static is None:
        static = memo["static"] = _ArchStatic.of(arch)
    trainable = memo.get(cfg)
    if trainable is None:
        trainable = memo[cfg] = spec.trainable(arch, cfg)
    parts = static.parts
    total_params = int(arch.params)
    n_gpu = setup.gpu_count
    sharding = setup.sharding
    shard_w = n_gpu if sharding in SHARDED_WEIGHTS else 1
    shard_go = n_gpu if sharding != "none" else 1
    offload_params = sharding == "zero3_offload" and bool(sh["offload_params"])
    on_gpu = 0.0 if offload_params else 1.0
    div = f" / {shard_w} GPUs ({sharding})" if shard_w > 1 and rows is not None else ""
    if arch.source == "inferred":
        notes.append("architecture inferred from the parameter count; give model.config for an exact estimate")

    # --- weights (own shard), quantization constants, what sharded training gathers -------------
    quant_constants = quant_total = 0.0
    experts = static.experts
    if terms.base == "nf4":
        payload, scales = c.nf4_bytes_per_param(cfg.double_quant)
        q = c.get("quantization")
        ub = q["unquantized_bytes"]
        quantized = max(parts["linear"] - experts, 0)  # bitsandbytes quantizes nn.Linear only
        unquantized = total_params - quantized
        base_bytes = quantized * payload + unquantized * ub
        quant_total = quantized * scales
        quant_constants = quant_total / shard_w * on_gpu
        if ub > prec["weight_bytes"]:
            notes.append("prepare_model_for_kbit_training keeps embeddings, lm_head and norms in fp32")
        if experts:
            notes.append(f"QLoRA on a MoE model: the {format_count(experts)} routed-expert parameters are not "
                         "quantized (bitsandbytes quantizes nn.Linear only; transformers 5 fuses experts into "
                         f"3-D parameters) and are stored at {ub:g} B each")

        def layer_bytes(params: int, lin: int) -> float:
            return lin * (payload + scales) + (params - lin) * ub

        root_bytes = ub
        if rows is not None:
            rows.append(Term("weights", "4-bit NF4 linear weights",
                             f"{format_count(quantized)} params x {payload:g} B{div}",
                             quantized * payload / shard_w * on_gpu))
            rows.append(Term("weights", "unquantized parameters",
                             f"{format_count(unquantized)} params (embeddings, lm_head, norms"
                             + (", routed experts" if experts else "") + f") x {ub:g} B{div}",
                             unquantized * ub / shard_w * on_gpu))
            rows.append(Term("quant_constants", "NF4 absmax scales",
                             f"{format_count(quantized)} params x {scales:.4f} B"
                             f" ({'double-quantized' if (cfg.double_quant if cfg.double_quant is not None else q['double_quant']) else 'fp32'} absmax per {q['block_size']}){div}",
                             quant_constants))
    else:
        wb = prec["weight_bytes"]
        base_bytes = total_params * wb

        def layer_bytes(params: int, lin: int) -> float:
            return float(params * wb)

        root_bytes = wb
        if rows is not None:
            rows.append(Term("weights", "trained weights" if terms.trains_base else "frozen base weights",
                             f"{format_count(total_params)} params x {wb:g} B ({setup.precision}){div}",
                             base_bytes / shard_w * on_gpu))
    weights = base_bytes / shard_w * on_gpu
    adapters = 0.0
    if not terms.trains_base:
        adapters = trainable * adapter["weight_bytes"]
        weights += adapters / shard_w * on_gpu
        if rows is not None:
            rows.append(Term("weights", "trainable adapter parameters",
                             f"{format_count(trainable)} params x {adapter['weight_bytes']:g} B{div}",
                             adapters / shard_w * on_gpu))
    cpu_offload = (base_bytes + quant_total + adapters) / n_gpu if offload_params else 0.0
    if shard_w > 1 or offload_params:  # ZeRO-3/FSDP gather whole layers (and the root unit) to compute
        factor = 1.0 if offload_params else (1 - 1 / n_gpu)
        layers = sh["gathered_layers"] * max(layer_bytes(params, lin) for params, lin in static.groups)
        mode = sh["gather_root"]
        root_params = {"all": parts["embedding"] + arch.hidden_size,
                       "lm_head": arch.vocab_size * arch.embed_dim}.get(mode, 0)
        weights += (layers + root_params * root_bytes) * factor
        if rows is not None:
            rows.append(Term("weights", "layers gathered for compute",
                             f"{sh['gathered_layers']} layers (the largest) x {format_count(static.layer_params)} "
                             f"params, x {factor:.3g} not held as the own shard", layers * factor))
            if root_params:
                rows.append(Term("weights", "root unit gathered" if mode == "all" else "lm_head gathered",
                                 f"{format_count(root_params)} params x {root_bytes:g} B x {factor:.3g}",
                                 root_params * root_bytes * factor))

    # --- gradients --------------------------------------------------------------------------
    if terms.trains_base:
        grad_elem, state_elem, master = prec["grad_bytes"], prec["state_bytes"], prec["master_bytes"]
    else:
        grad_elem, state_elem, master = adapter["grad_bytes"], adapter["state_bytes"], 0
    grads_all = trainable * grad_elem
    grad_step = grads_all / shard_go
    grad_persistent = 0.0
    if sharding == "none" and n_gpu > 1:
        grad_persistent = grads_all * sh["ddp_grad_copies"]
    if sharding in sh["persistent_gradients"]:
        grad_persistent += grad_step
        grad_step = 0.0
    in_backward = bool(raw["training_loop"]["optimizer_in_backward"])
    if in_backward:  # each parameter steps as soon as its gradient exists, which is then freed
        grad_step = min(grads_all, (static.largest_param if terms.trains_base else grads_all) * grad_elem) / shard_go
    if sharding == "zero3_offload":  # gradients go to the CPU layer by layer: one layer's unsharded gradient
        grad_step = min(grads_all, static.layer_params * grad_elem) if terms.trains_base else grad_step
    accumulate = setup.gradient_accumulation and not in_backward and sharding != "zero3_offload"
    grad_forward = grad_step if accumulate else 0.0
    # the first gradient of backward, the lm_head's (the embedding's when tied), appears while every activation
    # is still alive; unsharded until its reduce-scatter when sharded, already counted when gradients accumulate
    lm_head_grad = 0.0
    if terms.trains_base and (not accumulate or shard_go > 1):
        lm_head_grad = arch.vocab_size * arch.embed_dim * grad_elem
        grad_forward += lm_head_grad
    if terms.trains_base and not accumulate and not in_backward and grad_step:
        notes.append("one micro-batch per optimizer step: gradients are allocated in backward as activations are "
                     "freed, so the peak is the larger of the two phases")
    if rows is not None:
        if grad_persistent:
            rows.append(Term("gradients", "persistent gradient buffers",
                             "DDP bucket copy of every gradient" if sharding == "none" else
                             f"{format_count(trainable)} x {grad_elem:g} B{div} (flat partition kept between steps)",
                             grad_persistent))
        if grad_forward - lm_head_grad:
            rows.append(Term("gradients", "gradients (alive during the next forward: gradient accumulation)",
                             f"{format_count(trainable)} params x {grad_elem:g} B"
                             + (f" / {shard_go} GPUs ({sharding})" if shard_go > 1 else ""), grad_forward - lm_head_grad))
        if lm_head_grad:
            rows.append(Term("gradients", "lm_head gradient at the start of backward",
                             f"vocabulary {arch.vocab_size} x {arch.embed_dim} x {grad_elem:g} B"
                             + (" (unsharded until reduce-scattered)" if shard_go > 1 else ""), lm_head_grad))

    # --- optimizer states (+ master weights) ----------------------------------------------
    elem = opt["state_bytes"] if opt["state_bytes"] is not None else state_elem
    per_param = master + opt["states"] * elem
    if opt["block_size"]:
        per_param += opt["states"] * opt["block_bytes"] / opt["block_size"]
    optimizer_bytes = trainable * per_param
    extra_states = terms.optimizer_extra(trainable, c) if terms.optimizer_extra is not None else 0.0
    optimizer_bytes += extra_states
    step_temp = 0.0 if in_backward else trainable * opt["step_temp_states"] * elem / shard_go
    if sharding == "zero3_offload":
        cpu_offload += (optimizer_bytes + trainable * sh["offload_grad_bytes"]) / n_gpu
        optimizer = 0.0
        step_temp = 0.0
    else:
        optimizer = optimizer_bytes / shard_go
    paged = optimizer if opt["paged"] else 0.0
    if opt["paged"]:
        notes.append(f"{setup.optimizer} keeps its states in unified memory: they page to the CPU under pressure")
    if rows is not None:
        rows.append(Term("optimizer", f"{setup.optimizer} states" + (" + fp32 master weights" if master else ""),
                         f"{format_count(trainable)} params x ({master:g} + {opt['states']} x {elem:g} B"
                         + (" + scales" if opt["block_size"] else "") + ")"
                         + (f" + {extra_states / GIB:.2f} GiB of {cfg.method} state" if extra_states else "")
                         + (f" / {shard_go} GPUs" if shard_go > 1 else "")
                         + ("; offloaded to the CPU" if sharding == "zero3_offload" else "")
                         + ("; paged (unified memory)" if opt["paged"] else ""), optimizer))

    # --- activations and logits per sequence (alive together at the start of backward) ---------
    lg = raw["logits"]
    per_logit = (lg["copies_16bit"] * prec["activation_bytes"] + lg["copies_fp32"] * 4
                 + lg["chunk_bytes"] / max(1, lg["chunks"]))
    if rows is None:  # per-sequence activations depend on these alone: remembered per architecture
        key = ("activations", cfg, setup.precision, setup.seq_len, setup.gradient_checkpointing, setup.attention,
               id(c))
        found = memo.get(key)
        if found is None or found[0] is not c:
            extra_notes: list[str] = []
            result = _activations_per_sequence(arch, cfg, setup, c, dt, arch.vocab_size * per_logit, extra_notes,
                                               None)
            found = memo[key] = (c, result, tuple(extra_notes))
        activations, tokens, layer_fixed = found[1]
        notes.extend(found[2])
    else:
        activations, tokens, layer_fixed = _activations_per_sequence(arch, cfg, setup, c, dt,
                                                                     arch.vocab_size * per_logit, notes, rows)
    logits = tokens * arch.vocab_size * per_logit
    if rows is not None:
        rows.append(Term("logits", "logits and cross-entropy",
                         f"{tokens} tokens x vocabulary {arch.vocab_size} x {per_logit:g} B ({lg['copies_16bit']} "
                         f"16-bit + {lg['copies_fp32']} fp32 copies"
                         + (f" + {lg['chunk_bytes']:g} B per logit of one chunk of {lg['chunks']}" if lg["chunk_bytes"]
                            else "") + ")", logits, True))

    work = 0.0
    if terms.workspace is not None:
        wkey = ("workspace", cfg, id(c))
        held = memo.get(wkey)
        if held is None or held[0] is not c:
            held = memo[wkey] = (c, terms.workspace(arch, cfg, c))
        work = held[1]
    if rows is not None and work:
        rows.append(Term("overhead", "working buffers", "dequantized weights / DoRA weight norm of the largest "
                         "adapted layer (transient)", work))
    if layer_fixed:
        work += layer_fixed
        if rows is not None:
            rows.append(Term("activations", "merged expert weights kept for backward",
                             "LoRA on routed experts (peft target_parameters) keeps W + B@A of every expert", layer_fixed))
    if static.is_moe:
        notes.append(f"MoE: activations count the top-{arch.num_experts_per_tok} of {arch.num_experts} routed "
                     "experts a token passes through; weights count all experts")
    ov = raw["overhead"]
    return MemoryProfile(
        weights=weights, optimizer=optimizer, quant_constants=quant_constants, grad_persistent=grad_persistent,
        grad_forward=grad_forward, grad_step=grad_step, step_temp=step_temp, activations_per_seq=activations,
        logits_per_seq=logits, tokens_per_seq=tokens, work=work, cuda_context=ov["cuda_context_gib"] * GIB,
        allocator_fraction=ov["allocator_fraction"], paged=paged, trainable_params=int(trainable),
        total_params=total_params, cpu_offload=cpu_offload, notes=tuple(notes))


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
