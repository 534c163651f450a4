"""Derived facts: architecture, per-method memory estimates, what fits, and each rule's candidate verdict.

This is where facts meet the memory model. Everything a rule condition can reference ends up in
``Derived.flat`` (dotted path -> value); every select rule gets its resolved ``Candidate``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from .architecture import Architecture, ArchitectureError, from_hf_config, infer_from_params
from .diagnostics import Diagnostic, Location
from .facts import FactsError, flatten
from .memory import Estimate, MemoryConstants, MethodConfig, TrainingSetup, estimate, usable_gib
from .vocabulary import GIVEN, METHODS, RANKED_METHODS

TRAINING_KEYS = ("precision", "optimizer", "micro_batch_size", "seq_len", "gradient_checkpointing", "sharding",
                 "learning_rate", "lr_scheduler", "warmup_ratio", "epochs", "effective_batch_size",
                 "max_micro_batch_size", "auto_headroom_gb", "layerwise_lr_decay")


@dataclass(frozen=True)
class GpuSpec:
    """One GPU as the decision sees it."""

    name: str | None
    memory_gb: float
    bf16: bool
    tflops: float | None
    price_per_hour: float | None
    count: int


@dataclass
class Candidate:
    """A fully resolved verdict (method, hyperparameters, training settings) and its memory estimate."""

    method: str
    rank: int | None
    alpha: float | None
    dropout: float | None
    target_modules: Any
    num_virtual_tokens: int | None
    adapter_size: int | None
    init_rank: int | None
    quantization: dict | None
    training: dict
    multitask: dict | None
    estimate: Estimate
    usable_gb: float
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        """Return True when the per-GPU estimate is within usable memory."""
        return self.estimate.total_gib <= self.usable_gb

    @property
    def headroom_gb(self) -> float:
        """Return usable memory minus the estimate, GiB (negative when it does not fit)."""
        return self.usable_gb - self.estimate.total_gib

    def label(self) -> str:
        """Return a short label such as ``lora r=16`` or ``full_ft``."""
        return f"{self.method} r={self.rank}" if self.rank else self.method

    def verdict(self) -> dict:
        """Return the verdict dict of DESIGN.md (the executors' input)."""
        return {
            "method": self.method, "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
            "target_modules": list(self.target_modules) if isinstance(self.target_modules, tuple) else self.target_modules,
            "use_dora": self.method == "dora", "num_virtual_tokens": self.num_virtual_tokens,
            "adapter_size": self.adapter_size, "init_rank": self.init_rank, "quantization": self.quantization,
            "training": dict(self.training), "multitask": self.multitask,
        }


@dataclass
class Derived:
    """The derived facts of one decision."""

    arch: Architecture
    gpu: GpuSpec
    constants: MemoryConstants
    usable_gb: float
    defaults: dict[str, Candidate]  # per method, at its default configuration
    candidates: dict[str, Candidate]  # per select rule id
    flat: dict[str, Any]  # every referenceable fact, dotted
    notes: list[str] = field(default_factory=list)


def gpu_spec(policy: Any, hardware: dict) -> GpuSpec:
    """Return the GPU spec from the catalog entry and/or ``hardware.gpu_memory_gb`` (which wins)."""
    entry = policy.gpus.get(hardware.get("gpu") or "", {})
    memory = hardware.get("gpu_memory_gb", entry.get("memory_gb"))
    return GpuSpec(hardware.get("gpu"), float(memory), bool(entry.get("bf16", True)), entry.get("tflops"),
                   entry.get("price_per_hour"), int(hardware.get("gpu_count", 1)))


def read_model_config(model: dict, origin: str = "") -> dict:
    """Return the parsed ``model.config`` JSON (a file or a model directory, relative to ``origin``).

    Raises FactsError naming the path when it cannot be read or is not a JSON object.
    """
    import json

    config = model["config"]
    path = config if os.path.isabs(config) or not origin else os.path.join(origin, config)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        with open(file, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise FactsError([Diagnostic("facts-bad-model-config", f"not valid JSON: {exc.msg}",
                                     Location(file, exc.lineno, exc.colno), "give a Hugging Face config.json",
                                     path="model.config")]) from None
    except OSError as exc:
        raise FactsError([Diagnostic("facts-bad-model-config", f"cannot read the model config: {exc.strerror}",
                                     Location(file), "check the path given as model.config / --model-config",
                                     path="model.config")]) from None
    if not isinstance(data, dict):
        raise FactsError([Diagnostic("facts-bad-model-config", "a config.json must hold a JSON object",
                                     Location(file, 1, 1), path="model.config")])
    return data


def resolve_architecture(model: dict, origin: str = "") -> tuple[Architecture, list[str]]:
    """Return the architecture for the model facts and notes on how it was obtained.

    Uses ``model.config_content`` (the config recorded with the decision) when present, else reads
    ``model.config``; without either, infers it from ``model.params``. Raises FactsError when the
    config describes an unsupported or incomplete model.
    """
    notes: list[str] = []
    if model.get("config") or model.get("config_content"):
        content = model.get("config_content") or read_model_config(model, origin)
        try:
            arch = from_hf_config(content, str(model.get("config", "<config>")))
        except ArchitectureError as exc:
            raise FactsError([Diagnostic("facts-bad-model-config", str(exc), Location(str(model.get("config", ""))),
                                         "give a Hugging Face config.json of a supported architecture",
                                         path="model.config" + (f".{exc.field}" if getattr(exc, "field", None) else ""))
                              ]) from None
        given = model.get("params")
        if given and abs(given - arch.params) / arch.params > 0.05:
            notes.append(f"model.params ({given:.4g}) differs from the count computed from model.config "
                         f"({arch.params:.4g}); the config's count is used")
        return arch, notes
    try:
        return infer_from_params(float(model["params"])), notes
    except ArchitectureError as exc:
        raise FactsError([Diagnostic("facts-cannot-infer-architecture", str(exc), Location("<facts>"),
                                     "give model.config (a config.json) for a model this small",
                                     path="model.params")]) from None


def _method_defaults(policy: Any, method: str) -> dict:
    return (policy.defaults.get("methods") or {}).get(method) or {}


def resolve_candidate(policy: Any, then: dict, facts: dict, arch: Architecture, gpu: GpuSpec,
                      constants: MemoryConstants, usable: float) -> Candidate:
    """Return the verdict a rule's ``then`` yields for these facts, with its memory estimate.

    Precedence: facts.training (the user's own settings) > the rule's ``then`` > the use-case row >
    the policy's method defaults > the policy's training defaults.
    """
    spec: dict[str, Any] = {}
    if then.get("use_case"):
        row = policy.use_cases[facts["task"]["use_case"]]
        spec.update({k: row[k] for k in ("method", "rank", "alpha", "target_modules", "num_virtual_tokens") if k in row})
    spec.update({k: v for k, v in then.items() if k not in ("use_case", "training")})
    method = spec["method"]
    md = _method_defaults(policy, method)
    user = facts.get("training") or {}
    notes: list[str] = []
    rank = alpha = dropout = init_rank = None
    target: Any = None
    if method in RANKED_METHODS:
        rank = int(user.get("lora_rank") or spec.get("rank") or md.get("rank") or 16)
        if user.get("lora_rank") and spec.get("rank") and user["lora_rank"] != spec["rank"]:
            notes.append(f"rank {user['lora_rank']} from the facts (the policy suggested {spec['rank']})")
        alpha = float(spec.get("alpha") or rank * md.get("alpha_per_rank", 2))
        dropout = md.get("dropout", 0.05)
        if method == "adalora":
            init_rank = int(md.get("init_rank", max(rank, 12)))
    if method in RANKED_METHODS or method == "ia3":
        target = user.get("target_modules") or spec.get("target_modules") or md.get("target_modules", "all-linear")
        if isinstance(target, list):
            target = tuple(target)
    num_virtual_tokens = None
    if method in ("prompt_tuning", "prefix_tuning"):
        num_virtual_tokens = int(user.get("num_virtual_tokens") or spec.get("num_virtual_tokens")
                                 or md.get("num_virtual_tokens", 20))
    adapter_size = int(spec.get("adapter_size") or md.get("adapter_size", 64)) if method == "adapter" else None
    quantization = dict(md["quantization"]) if method == "qlora" and md.get("quantization") else (
        {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"} if method == "qlora" else None)

    training: dict[str, Any] = dict(policy.defaults.get("training") or {})
    training.update(md.get("training") or {})
    training.update(then.get("training") or {})
    data_seq = facts["data"].get("seq_len")
    if data_seq and "seq_len" not in user:
        training["seq_len"] = int(data_seq)
    training.update({k: v for k, v in user.items() if k in TRAINING_KEYS})
    training.setdefault("precision", "bf16_mixed")
    training.setdefault("optimizer", "adamw")
    training.setdefault("micro_batch_size", "auto")
    training.setdefault("seq_len", 2048)
    training.setdefault("gradient_checkpointing", True)
    training.setdefault("sharding", "auto")
    training.setdefault("layerwise_lr_decay", None)
    if not gpu.bf16 and training["precision"] in ("bf16_mixed", "bf16_pure"):
        notes.append(f"{gpu.name or 'this GPU'} has no bf16: precision {training['precision']} -> fp16_mixed")
        training["precision"] = "fp16_mixed"
        if quantization:
            quantization["compute_dtype"] = "float16"
    training["gpu_count"] = gpu.count
    eff = int(training.pop("effective_batch_size", 0) or 0)
    max_auto = int(training.pop("max_micro_batch_size", 8) or 8)
    auto_headroom = float(training.pop("auto_headroom_gb", 0.0) or 0.0)

    cfg = MethodConfig(method=method, rank=init_rank or rank, target_modules=target or "all-linear",
                       num_virtual_tokens=num_virtual_tokens, adapter_size=adapter_size, dropout=dropout,
                       double_quant=bool(quantization.get("double_quant")) if quantization else None)

    def _estimate(sharding: str, micro_batch: int) -> Estimate:
        setup = TrainingSetup(precision=training["precision"], optimizer=training["optimizer"],
                              micro_batch_size=micro_batch, seq_len=int(training["seq_len"]),
                              gradient_checkpointing=bool(training["gradient_checkpointing"]), sharding=sharding,
                              gpu_count=gpu.count)
        return estimate(arch, cfg, setup, constants)

    # "auto" settings are chosen here, by the memory model: no sharding before sharding (less
    # communication), then the largest micro-batch that fits (fewer accumulation steps).
    shardings = ["none", "zero3"] if training["sharding"] == "auto" and gpu.count > 1 else (
        ["none"] if training["sharding"] == "auto" else [training["sharding"]])
    if training["micro_batch_size"] == "auto":
        batches = [b for b in (64, 32, 16, 8, 4, 2, 1) if b <= max_auto]
    else:
        batches = [int(training["micro_batch_size"])]
    chosen: tuple[str, int, Estimate] | None = None
    # an auto micro-batch keeps `auto_headroom_gb` free when some batch size can; a fixed one only has to fit
    limits = [usable - auto_headroom, usable] if len(batches) > 1 and auto_headroom > 0 else [usable]
    for limit in limits:
        for sharding in shardings:
            for micro_batch in batches:
                est = _estimate(sharding, micro_batch)
                if est.total_gib <= limit:
                    chosen = (sharding, micro_batch, est)
                    break
            if chosen:
                break
        if chosen:
            break
    if chosen is None:  # nothing fits: report the smallest configuration tried
        smallest = [(sh, batches[-1], _estimate(sh, batches[-1])) for sh in shardings]
        chosen = min(smallest, key=lambda item: item[2].total_gib)
    sharding, micro_batch, est = chosen
    training["sharding"] = sharding
    training["micro_batch_size"] = micro_batch
    per_step = micro_batch * gpu.count
    training["gradient_accumulation_steps"] = max(1, math.ceil(eff / per_step)) if eff else 1
    multitask = None
    if facts["data"].get("num_tasks", 1) > 1:
        mt = policy.defaults.get("multitask") or {}
        multitask = {"temperature": float(policy.thresholds.get("multitask_temperature", 0.7)), "cap": mt.get("cap")}
    return Candidate(method, rank, alpha, dropout, target, num_virtual_tokens, adapter_size, init_rank, quantization,
                     training, multitask, est, usable, notes)


def derive(policy: Any, facts: dict, origin: str = "") -> Derived:
    """Return the derived facts for normalized ``facts`` under ``policy``.

    Raises FactsError when the model config cannot be used.
    """
    arch, notes = resolve_architecture(facts["model"], origin)
    constants = MemoryConstants.from_policy(policy.memory)
    gpu = gpu_spec(policy, facts["hardware"])
    usable = usable_gib(gpu.memory_gb, constants)
    cache: dict[str, Candidate] = {}

    def candidate(then: dict) -> Candidate:
        key = repr(sorted(then.items(), key=lambda kv: kv[0]))
        if key not in cache:
            cache[key] = resolve_candidate(policy, then, facts, arch, gpu, constants, usable)
        return cache[key]

    defaults = {m: candidate({"method": m}) for m in METHODS}
    candidates = {r.id: candidate(r.then) for r in policy.select_rules}
    row = policy.use_cases.get(facts["task"]["use_case"], {})
    serving = facts["serving"]
    overhead = policy.thresholds.get("unmerged_latency_overhead", 0.05)
    flat_given = flatten({k: v for k, v in facts.items() if k != "training"})
    flat: dict[str, Any] = {k: v for k, v in flat_given.items() if k in GIVEN}
    train_defaults = defaults["lora"].training
    for key in ("precision", "optimizer", "micro_batch_size", "seq_len", "gradient_checkpointing"):
        flat[f"training.{key}"] = (facts.get("training") or {}).get(key, train_defaults.get(key))
    flat["training.sharding"] = (facts.get("training") or {}).get("sharding", "auto")
    flat.update({
        "model.params": float(arch.params),
        "hardware.gpu": gpu.name or "",
        "hardware.gpu_memory_gb": gpu.memory_gb,
        "hardware.gpu_count": gpu.count,
        "data.seq_len": int(facts["data"].get("seq_len") or train_defaults["seq_len"]),
        "model.params_b": arch.params / 1e9,
        "model.num_layers": arch.num_layers,
        "model.hidden_size": arch.hidden_size,
        "model.vocab_size": arch.vocab_size,
        "model.arch_inferred": arch.source == "inferred",
        "hardware.total_memory_gb": gpu.memory_gb * gpu.count,
        "hardware.usable_gb": usable,
        "hardware.bf16": gpu.bf16,
        "hardware.price_per_hour": float(gpu.price_per_hour or 0.0),
        "data.num_tasks": int(facts["data"].get("num_tasks", 1)),
        "data.tokens_total": float(facts["data"]["examples"]) * float(facts["data"]["avg_tokens"]),
        "use_case.method": row.get("method", "lora"),
        "use_case.rank": int(row.get("rank") or 0),
        "serving.unmerged_gpu_hours_per_day": float(serving["requests_per_day"]) * float(serving["avg_latency_ms"])
        / 1000.0 * overhead / 3600.0,
        "fits.any": any(c.fits for c in defaults.values()),
    })
    for m, c in defaults.items():
        flat[f"fits.{m}"] = c.fits
        flat[f"mem.{m}_gb"] = round(c.estimate.total_gib, 6)
    return Derived(arch, gpu, constants, usable, defaults, candidates, flat, notes)
