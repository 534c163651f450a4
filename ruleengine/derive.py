"""Derived facts: architecture, per-method memory estimates, what fits, and each rule's candidate verdict.

This is where facts meet the memory model. Everything a rule condition can reference ends up in
``Derived.flat`` (dotted path -> value); every select rule gets its resolved ``Candidate``.

Candidates depend only on the facts that change memory (the model, the GPU, the user's training
settings, the data's sequence length, multi-task or not, the use case), so ``DeriveCache`` keeps
them per such *memory point*: decisions that differ only in data size, task or serving facts reuse
them. The cache holds pure results; it never changes an answer.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from . import methods
from .architecture import Architecture, ArchitectureError, infer_from_params
from .diagnostics import Diagnostic, DiagnosticError, Location
from .facts import FactsError
from .memory import Estimate, MemoryConstants, MemoryProfile, TrainingSetup, profile, usable_gib
from .methods import MethodConfig
from .vocabulary import GIVEN

TRAINING_KEYS = ("precision", "optimizer", "micro_batch_size", "seq_len", "gradient_checkpointing", "sharding",
                 "learning_rate", "lr_scheduler", "warmup_ratio", "epochs", "effective_batch_size",
                 "max_micro_batch_size", "auto_headroom_gb", "layerwise_lr_decay")
AUTO_BATCHES = (64, 32, 16, 8, 4, 2, 1)
_FLAT_TRAINING = ("precision", "optimizer", "micro_batch_size", "seq_len", "gradient_checkpointing")
_GIVEN_GROUPS = ("model", "hardware", "data", "task", "serving")


@dataclass(frozen=True)
class GpuSpec:
    """One GPU as the decision sees it."""

    name: str | None
    memory_gb: float
    bf16: bool
    tflops: float | None
    price_per_hour: float | None
    count: int
    host_memory_gb: float = 0.0  # host RAM of one node, GiB (0 = unknown: no CPU offload is planned)


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
    #: the settings ladder's changes that made it fit (empty when it fit at the spec's own settings)
    fit_changes: list[str] = field(default_factory=list)
    #: why the method cannot be applied to this architecture (then it never fits); empty when it can
    inapplicable: str = ""
    #: results computed from this candidate alone (per-token cost, table entry), kept with it
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    #: the per-GPU estimate is within usable memory (set from estimate and usable_gb)
    fits: bool = field(init=False)
    #: usable memory minus the estimate, GiB (negative when it does not fit)
    headroom_gb: float = field(init=False)
    _label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.fits = not self.inapplicable and self.estimate.total_gib <= self.usable_gb
        self.headroom_gb = self.usable_gb - self.estimate.total_gib
        self._label = f"{self.method} r={self.rank}" if self.rank else self.method

    def label(self) -> str:
        """Return a short label such as ``lora r=16`` or ``full_ft``."""
        return self._label

    def signature(self) -> tuple[str, int | None]:
        """Return what identifies the verdict for comparisons: (method, rank)."""
        return self.method, self.rank

    def method_config(self) -> MethodConfig:
        """Return the method configuration the estimate was made for (AdaLoRA: its initial rank)."""
        return MethodConfig(method=self.method, rank=self.init_rank or self.rank,
                            target_modules=self.target_modules or "all-linear",
                            num_virtual_tokens=self.num_virtual_tokens, adapter_size=self.adapter_size,
                            dropout=self.dropout,
                            double_quant=bool(self.quantization.get("double_quant")) if self.quantization else None)

    def training_setup(self, gpu_count: int) -> TrainingSetup:
        """Return the training setup the estimate was made for, on ``gpu_count`` GPUs."""
        t = self.training
        return TrainingSetup(precision=t["precision"], optimizer=t["optimizer"],
                             micro_batch_size=int(t["micro_batch_size"]), seq_len=int(t["seq_len"]),
                             gradient_checkpointing=bool(t["gradient_checkpointing"]), sharding=t["sharding"],
                             gpu_count=gpu_count,
                             gradient_accumulation=int(t.get("gradient_accumulation_steps", 1)) > 1)

    def verdict(self) -> dict:
        """Return the verdict dict of DESIGN.md (the executors' input)."""
        return {
            "method": self.method, "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
            "target_modules": list(self.target_modules) if isinstance(self.target_modules, tuple) else self.target_modules,
            "use_dora": methods.get(self.method).dora, "num_virtual_tokens": self.num_virtual_tokens,
            "adapter_size": self.adapter_size, "init_rank": self.init_rank,
            "quantization": dict(self.quantization) if self.quantization else None,
            "training": dict(self.training), "multitask": dict(self.multitask) if self.multitask else None,
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


@dataclass
class MemoryPoint:
    """What every decision at one memory point shares: default candidates, candidates by spec, memory facts.

    A point filled lazily (``Evaluator.outcome`` resolves only the candidates a first hit needs) is
    ``complete`` only once every default candidate and memory fact has been computed.
    """

    defaults: dict[str, Candidate]
    by_spec: dict[tuple, Candidate]
    flat: dict[str, Any]
    complete: bool = False


class DeriveCache:
    """Bounded caches of pure derivation results for one policy.

    ``profiles``: memory profiles by (architecture, method configuration, setup), shared by every GPU;
    ``specs``: resolved verdict specs by what they depend on; ``points``: memory points by (architecture,
    GPU, the user's training settings, data sequence length, multi-task). Least recently used entries
    go first beyond the limits.
    """

    def __init__(self, policy: Any, max_points: int = 4096, max_profiles: int = 65536, max_scratch: int = 2048) -> None:
        self.constants = MemoryConstants.from_policy(policy.memory)
        self.max_points, self.max_profiles, self.max_scratch = max_points, max_profiles, max_scratch
        self.points: OrderedDict[tuple, MemoryPoint] = OrderedDict()
        self.scratch: OrderedDict[tuple, MemoryPoint] = OrderedDict()  # points what-if searches visit
        self.profiles: OrderedDict[tuple, MemoryProfile] = OrderedDict()
        self.specs: dict[tuple, VerdictSpec] = {}
        self.row_keys: dict[str, tuple] = {}
        self.then_keys = {r.id: _then_key(r.then) for r in policy.select_rules}
        self.hits = self.misses = 0

    def point(self, key: tuple, scratch: bool = False) -> MemoryPoint | None:
        """Return the cached memory point, or None; ``scratch`` also looks among the what-if points.

        What-if searches visit many points no decision comes back to: they are kept apart, so they
        never push out the points of real decisions.
        """
        found = self.points.get(key)
        if found is not None:
            self.hits += 1
            self.points.move_to_end(key)
            return found
        if scratch:
            found = self.scratch.get(key)
            if found is not None:
                self.scratch.move_to_end(key)
                return found
        else:
            found = self.scratch.pop(key, None)  # a decision now needs it: promote it
            if found is not None:
                self.store(key, found)
                return found
        self.misses += 1
        return None

    def store(self, key: tuple, value: MemoryPoint, scratch: bool = False) -> None:
        """Remember a memory point, evicting the least recently used beyond the limit of its kind."""
        table, limit = (self.scratch, self.max_scratch) if scratch else (self.points, self.max_points)
        table[key] = value
        if len(table) > limit:
            table.popitem(last=False)

    def profile(self, key: tuple, make: Any) -> MemoryProfile:
        """Return the profile cached under ``key``, made by ``make()`` the first time."""
        found = self.profiles.get(key)
        if found is None:
            found = make()
            self.profiles[key] = found
            if len(self.profiles) > self.max_profiles:
                self.profiles.popitem(last=False)
        return found


def _then_key(then: dict) -> str:
    return json.dumps(then, sort_keys=True, default=str)


def gpu_spec(policy: Any, hardware: dict) -> GpuSpec:
    """Return the GPU spec from the catalog entry and/or ``hardware.gpu_memory_gb`` (which wins)."""
    entry = policy.gpus.get(hardware.get("gpu") or "", {})
    memory = hardware.get("gpu_memory_gb", entry.get("memory_gb"))
    return GpuSpec(hardware.get("gpu"), float(memory), bool(entry.get("bf16", True)), entry.get("tflops"),
                   entry.get("price_per_hour"), int(hardware.get("gpu_count", 1)),
                   float(hardware.get("host_memory_gb") or 0.0))


MAX_CONFIG_FILE_BYTES = 1024 * 1024  # a config.json is a few KiB; anything this large is not one


def read_model_config(model: dict, origin: str = "") -> dict:
    """Return the parsed ``model.config`` JSON (a file or a model directory, relative to ``origin``).

    Only a regular file of at most ``MAX_CONFIG_FILE_BYTES`` is read (never a FIFO, a device such
    as /dev/zero, or a socket); the JSON is parsed strictly (no NaN/Infinity) and checked like
    inline facts. Raises FactsError naming the path when it cannot be read or is not a JSON object.
    """
    from .facts import INLINE_CONFIG_LIMITS
    from .jsonsafe import check_value, loads
    from .safeio import read_regular_file

    config = model["config"]
    path = config if os.path.isabs(config) or not origin else os.path.join(origin, config)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        raw = read_regular_file(file, MAX_CONFIG_FILE_BYTES)
    except OSError as exc:
        raise FactsError([Diagnostic("facts-bad-model-config", f"cannot read the model config: {exc.strerror}",
                                     Location(file), "check the path given as model.config / --model-config",
                                     path="model.config")]) from None
    try:
        data = loads(raw, file, "facts-bad-model-config")
    except DiagnosticError as exc:
        raise FactsError([replace(d, code="facts-bad-model-config", help="give a Hugging Face config.json",
                                  path="model.config") for d in exc.diagnostics]) from None
    if not isinstance(data, dict):
        raise FactsError([Diagnostic("facts-bad-model-config", "a config.json must hold a JSON object",
                                     Location(file, 1, 1), path="model.config")])
    problems = check_value(data, lambda p, k: Location(file), "facts-bad-model-config", INLINE_CONFIG_LIMITS)
    if problems:
        raise FactsError(problems)
    return data


@lru_cache(maxsize=256)
def _arch_from_config(canonical: str, origin: str, exact: bool = False) -> Architecture:
    if exact:  # imports torch and transformers (the train extra) only here
        from .architecture import exact_architecture

        return exact_architecture(json.loads(canonical), origin)
    from .architecture import from_hf_config

    return from_hf_config(json.loads(canonical), origin)


@lru_cache(maxsize=1024)
def _arch_from_params(params: float) -> Architecture:
    return infer_from_params(params)


def resolve_architecture(model: dict, origin: str = "") -> tuple[Architecture, list[str]]:
    """Return the architecture for the model facts and notes on how it was obtained.

    Uses ``model.config_content`` (the config recorded with the decision) when present, else reads
    ``model.config``; without either, infers it from ``model.params``. With ``model.exact`` the config
    is built by transformers on the meta device and counted (any model_type transformers knows).
    Raises FactsError when the config describes an unsupported or incomplete model, when
    ``model.exact`` is given without a config, or when it needs the ``train`` extra that is missing.
    """
    arch, notes, _key = _architecture(model, origin)
    return arch, notes


def _architecture(model: dict, origin: str) -> tuple[Architecture, list[str], tuple]:
    notes: list[str] = []
    exact = bool(model.get("exact"))
    if exact and not (model.get("config") or model.get("config_content")):
        raise FactsError([Diagnostic("facts-exact-needs-config", "model.exact counts the architecture of a config, "
                                     "but model.config is missing", Location("<facts>"),
                                     "give model.config (flag --model-config) with --exact", path="model.exact")])
    if model.get("config") is not None or model.get("config_content") is not None:
        content = model["config_content"] if model.get("config_content") is not None else \
            read_model_config(model, origin)
        canonical = json.dumps(content, sort_keys=True)
        try:
            arch = _arch_from_config(canonical, str(model.get("config", "<config>")), exact)
        except (ArchitectureError, ArithmeticError, TypeError, ValueError) as exc:
            # ArithmeticError/TypeError/ValueError: values of a config no real model has (overflowing sizes, ...)
            from .architecture import TrainExtraMissing

            needs_extra = isinstance(exc, TrainExtraMissing)
            raise FactsError([Diagnostic(
                "facts-exact-needs-train-extra" if needs_extra else "facts-bad-model-config", str(exc)[:300],
                Location(str(model.get("config", ""))),
                "install the training extra (pip install 'finetune-policy[train]') or drop --exact for the closed "
                "form" if needs_extra else "give a Hugging Face config.json of a supported architecture",
                path="model.exact" if needs_extra else
                "model.config" + (f".{field}" if (field := getattr(exc, "field", None)) else ""))]) from None
        _check_config_size(arch, model)
        notes.extend(arch.warnings)
        given = model.get("params")
        if given and abs(given - arch.params) / arch.params > 0.05:
            notes.append(f"model.params ({given:.4g}) differs from the count computed from model.config "
                         f"({arch.params:.4g}); the config's count is used")
        return arch, notes, ("exact" if exact else "config", canonical)
    params = float(model["params"])
    try:
        return _arch_from_params(params), notes, ("params", params)
    except ArchitectureError as exc:
        raise FactsError([Diagnostic("facts-cannot-infer-architecture", str(exc), Location("<facts>"),
                                     "give model.config (a config.json) for a model this small",
                                     path="model.params")]) from None


def _check_config_size(arch: Architecture, model: dict) -> None:
    """Raise FactsError when a config describes more parameters than model.params accepts (10T).

    Small models are fine from a config (the bundled tiny test model has 139k parameters); only sizes no
    real model has, whose memory figures would overflow what the rules engine compares exactly, are refused.
    """
    from .facts import count_bounds

    _low, high = count_bounds("model.params")
    if not (math.isfinite(arch.params) and 0 < arch.params <= high):
        raise FactsError([Diagnostic("facts-bad-model-config", f"the config describes {arch.params:.4g} parameters, "
                                     f"more than {high:g}", Location(str(model.get("config", ""))),
                                     "give the config.json of a real model", path="model.config")])


def check_user_targets(arch: Architecture, training: dict) -> None:
    """Raise FactsError when the facts' training.target_modules name modules this architecture lacks.

    Each unknown name gets its own diagnostic with a did-you-mean among the model's adaptable modules;
    a preset that selects nothing, or a MoE router, is refused the same way.
    """
    from .diagnostics import did_you_mean
    from .trainable import adaptable_modules, resolve_targets

    wanted = training.get("target_modules")
    if wanted is None:
        return
    valid = adaptable_modules(arch)
    diags: list[Diagnostic] = []
    if isinstance(wanted, list):
        known = set(valid) | {n.rsplit(".", 1)[-1] for n in valid}
        for i, name in enumerate(wanted):
            if name not in known and not any(v.endswith("." + name) for v in valid):
                diags.append(Diagnostic("facts-unknown-target-module",
                                        f"`{name}` is not a module of {arch.model_type}",
                                        Location("<facts>"), did_you_mean(str(name), sorted(known)),
                                        path=f"training.target_modules[{i}]"))
    if not diags:
        try:
            resolve_targets(arch, "lora", tuple(wanted) if isinstance(wanted, list) else wanted)
        except ValueError as exc:
            diags.append(Diagnostic("facts-bad-target-modules", str(exc)[:300], Location("<facts>"),
                                    "name modules of the model's decoder layers, or use all-linear",
                                    path="training.target_modules"))
    if diags:
        raise FactsError(diags)


def _method_defaults(policy: Any, method: str) -> dict:
    return (policy.defaults.get("methods") or {}).get(method) or {}


@dataclass(frozen=True)
class VerdictSpec:
    """A rule's verdict resolved for the facts, before memory: method, hyperparameters, training settings.

    ``shardings`` and ``batches`` are what the memory model may choose from (``auto`` settings);
    ``headroom_gb`` is the memory an auto micro-batch keeps free when some batch size can.
    """

    method: str
    rank: int | None
    alpha: float | None
    dropout: float | None
    target_modules: Any
    num_virtual_tokens: int | None
    adapter_size: int | None
    init_rank: int | None
    quantization: tuple | None
    training: tuple
    multitask: tuple | None
    cfg: MethodConfig
    shardings: tuple[str, ...]
    batches: tuple[int, ...]
    headroom_gb: float
    effective_batch: int
    notes: tuple[str, ...]
    fixed: frozenset[str] = frozenset()  # training settings the user gave: the settings ladder leaves them alone


def resolve_spec(policy: Any, then: dict, facts: dict, gpu: GpuSpec) -> VerdictSpec:
    """Return the verdict a rule's ``then`` yields for these facts and GPUs, before memory is considered.

    Precedence: facts.training (the user's own settings) > the rule's ``then`` > the use-case row >
    the policy's method defaults > the method's registry defaults > the policy's training defaults;
    the data's maximum length (``data.seq_len``) bounds the sequence unless the user set one.
    ``fixed`` lists the training settings the user gave: :func:`candidate_from`'s settings ladder may
    change every other one. Raises ValueError for an unknown method.
    """
    spec: dict[str, Any] = {}
    if then.get("use_case"):
        row = policy.use_cases[facts["task"]["use_case"]]
        spec.update({k: row[k] for k in ("method", "rank", "alpha", "target_modules", "num_virtual_tokens") if k in row})
    spec.update({k: v for k, v in then.items() if k not in ("use_case", "training")})
    method = spec["method"]
    entry = methods.get(method)
    base = entry.defaults
    md = _method_defaults(policy, method)
    user = facts.get("training") or {}
    notes: list[str] = []
    rank = alpha = dropout = init_rank = None
    target: Any = None
    if entry.uses("rank"):
        rank = int(user.get("lora_rank") or spec.get("rank") or md.get("rank") or base["rank"])
        if user.get("lora_rank") and spec.get("rank") and user["lora_rank"] != spec["rank"]:
            notes.append(f"rank {user['lora_rank']} from the facts (the policy suggested {spec['rank']})")
        alpha = float(spec.get("alpha") or rank * md.get("alpha_per_rank", base["alpha_per_rank"]))
        dropout = md.get("dropout", base["dropout"])
    if entry.uses("init_rank"):
        init_rank = int(md.get("init_rank", max(rank or 0, base["init_rank_floor"])))
    if entry.uses("target_modules"):
        target = user.get("target_modules") or spec.get("target_modules") or md.get("target_modules", "all-linear")
        if isinstance(target, list):
            target = tuple(target)
    num_virtual_tokens = None
    if entry.uses("num_virtual_tokens"):
        num_virtual_tokens = int(user.get("num_virtual_tokens") or spec.get("num_virtual_tokens")
                                 or md.get("num_virtual_tokens", base["num_virtual_tokens"]))
    adapter_size = (int(spec.get("adapter_size") or md.get("adapter_size", base["adapter_size"]))
                    if entry.uses("adapter_size") else None)
    quantization = dict(md.get("quantization") or base["quantization"]) if entry.uses("quantization") else None

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
    shardings = (("none", "zero3") if gpu.count > 1 else ("none",)) if training["sharding"] == "auto" \
        else (training["sharding"],)
    if training["micro_batch_size"] == "auto":
        batches = tuple(b for b in AUTO_BATCHES if b <= max_auto)
    else:
        batches = (int(training["micro_batch_size"]),)
    multitask = None
    if facts["data"].get("num_tasks", 1) > 1:
        mt = policy.defaults.get("multitask") or {}
        multitask = (("temperature", float(policy.thresholds.get("multitask_temperature", 0.7))), ("cap", mt.get("cap")))
    return VerdictSpec(method, rank, alpha, dropout, target, num_virtual_tokens, adapter_size, init_rank,
                       tuple(quantization.items()) if quantization else None, tuple(training.items()), multitask,
                       cfg, shardings, batches, auto_headroom if len(batches) > 1 else 0.0, eff, tuple(notes),
                       frozenset(k for k in TRAINING_KEYS if k in user))


#: node size assumed for CPU offload: the GPUs of one node share its host RAM (hardware.host_memory_gb)
GPUS_PER_NODE = 8
_PAGED_OPTIMIZER = "paged_adamw_8bit"


def _accumulates(spec: VerdictSpec, gpu: GpuSpec) -> bool:
    """Return False only when every micro-batch the spec allows makes one optimizer step per micro-batch."""
    return not (spec.effective_batch and spec.effective_batch <= gpu.count * min(spec.batches))


def _setup(training: dict, sharding: str, gpu: GpuSpec, accumulate: bool) -> TrainingSetup:
    return TrainingSetup(precision=training["precision"], optimizer=training["optimizer"], micro_batch_size=1,
                         seq_len=int(training["seq_len"]), gradient_checkpointing=bool(training["gradient_checkpointing"]),
                         sharding=sharding, gpu_count=gpu.count, gradient_accumulation=accumulate)


def _offload_fits_host(prof: MemoryProfile, gpu: GpuSpec) -> bool:
    """Return True when the CPU-offloaded state of the GPUs of one node fits its host RAM."""
    return prof.cpu_offload / 2**30 * min(gpu.count, GPUS_PER_NODE) <= gpu.host_memory_gb


def _choose(get: Any, training: dict, shardings: tuple[str, ...], batches: tuple[int, ...], limits: tuple[float, ...],
            gpu: GpuSpec) -> tuple[str, int] | None:
    for limit in limits:
        for sharding in shardings:
            prof = get(training, sharding)
            if sharding == "zero3_offload" and not _offload_fits_host(prof, gpu):
                continue
            batch = prof.largest_batch(limit, batches)
            if batch is not None:
                return sharding, batch
    return None


def ladder(spec: VerdictSpec, gpu: GpuSpec, constants: MemoryConstants) -> list[tuple[dict, tuple[str, ...],
                                                                                          tuple[int, ...], list[str]]]:
    """Return the settings ladder of a spec: cumulative steps a practitioner takes when nothing fits.

    Each step is ``(training, shardings, batches, changes)``, ``changes`` saying what changed and why:
    1. micro-batch 1, gradient accumulation keeping the effective batch;
    2. gradient checkpointing on (where the method can recompute);
    3. the paged 8-bit AdamW (8-bit states that page to host RAM under pressure) instead of AdamW;
    4. ZeRO-3 across the GPUs (only with more than one GPU);
    5. ZeRO-3 with CPU offload (only when ``hardware.host_memory_gb`` holds the offloaded state of a
       node, and only for a 16-bit base: the PEFT docs pair CPU offload with 16-bit LoRA, not with
       4-bit bitsandbytes bases); DeepSpeed's CPU Adam then runs the optimizer, so step 3's optimizer
       change is undone.
    A setting the user gave (``spec.fixed``) is never changed. The sequence length is not on the ladder:
    :func:`resolve_spec` already bounds it by the data's own maximum (``data.seq_len``).
    """
    training = dict(spec.training)
    shardings, batches = spec.shardings, spec.batches
    steps: list[tuple[dict, tuple[str, ...], tuple[int, ...], list[str]]] = []
    changes: dict[str, str] = {}

    def step(key: str, change: str) -> None:
        changes[key] = change
        steps.append((dict(training), shardings, batches, list(changes.values())))

    if "micro_batch_size" not in spec.fixed and 1 not in batches:
        batches = (1,)
        step("micro_batch_size", "micro-batch 1 with gradient accumulation keeping the effective batch")
    terms = methods.get(spec.method).memory
    can_recompute = terms.recompute is None or terms.recompute(constants)[0]
    if "gradient_checkpointing" not in spec.fixed and not training["gradient_checkpointing"] and can_recompute:
        training["gradient_checkpointing"] = True
        step("gradient_checkpointing", "gradient checkpointing on (each layer's activations are recomputed in backward)")
    optimizer = training["optimizer"]
    if "optimizer" not in spec.fixed and optimizer in ("adamw", "adamw_8bit"):
        training["optimizer"] = _PAGED_OPTIMIZER
        step("optimizer", f"optimizer {optimizer} -> {_PAGED_OPTIMIZER} (8-bit states, paged to host RAM under "
                          "pressure)")
    if "sharding" not in spec.fixed and gpu.count > 1 and "zero3" not in shardings:
        shardings = ("zero3",)
        step("sharding", f"ZeRO-3: weights, gradients and optimizer states sharded across the {gpu.count} GPUs")
    if "sharding" not in spec.fixed and gpu.host_memory_gb > 0 and terms.base == "dense":
        shardings = ("zero3_offload",)
        training["optimizer"] = optimizer
        changes.pop("optimizer", None)
        step("sharding", "ZeRO-3 with CPU offload: parameters, gradients and optimizer states in host RAM "
                         f"({gpu.host_memory_gb:g} GiB per node; DeepSpeed's CPU Adam runs the optimizer)")
    return steps


def candidate_from(spec: VerdictSpec, arch: Architecture, gpu: GpuSpec, constants: MemoryConstants, usable: float,
                   profile_of: Any = None) -> Candidate:
    """Return the candidate of ``spec`` on these GPUs: sharding and micro-batch chosen by the memory model.

    ``auto`` settings: no sharding before ZeRO-3, then the largest micro-batch that fits, keeping
    ``headroom_gb`` free when some batch size can (solved from the memory profile, not searched).
    When nothing fits at the spec's own settings, the settings ladder (:func:`ladder`) is walked and
    the first step that fits is taken, with a note saying which settings changed and why; with
    nothing fitting even then, the most reduced configuration tried is reported. The estimate
    assumes gradients accumulate unless one micro-batch per step is certain, then is made exact for
    the chosen accumulation. ``profile_of(setup)`` may supply cached profiles. Raises ValueError for
    bad hyperparameters or target modules.
    """
    training = dict(spec.training)

    def make(setup: TrainingSetup) -> MemoryProfile:
        return profile(arch, spec.cfg, setup, constants)

    of_setup = profile_of or make
    accumulate = _accumulates(spec, gpu)
    seen: dict[tuple, MemoryProfile] = {}  # by the settings that make the setup (no TrainingSetup built twice)

    def get(train: dict, sharding: str, acc: bool = accumulate) -> MemoryProfile:
        key = (train["precision"], train["optimizer"], train["seq_len"], train["gradient_checkpointing"], sharding,
               acc)
        found = seen.get(key)
        if found is None:
            found = seen[key] = of_setup(_setup(train, sharding, gpu, acc))
        return found

    limits = (usable - spec.headroom_gb, usable) if spec.headroom_gb > 0 else (usable,)
    shardings, batches = spec.shardings, spec.batches
    notes = list(spec.notes)
    fit_changes: list[str] = []
    chosen = _choose(get, training, shardings, batches, limits, gpu)
    if chosen is None:
        steps: list[tuple[dict, tuple[str, ...], tuple[int, ...], list[str]]] = []
        for step in ladder(spec, gpu, constants):
            if step[1] == ("zero3_offload",):
                offload = get(step[0], "zero3_offload")
                if not _offload_fits_host(offload, gpu):
                    host = offload.cpu_offload / 2**30 * min(gpu.count, GPUS_PER_NODE)
                    notes.append(f"ZeRO-3 CPU offload would need {host:.0f} GiB of host RAM per node; "
                                 f"hardware.host_memory_gb is {gpu.host_memory_gb:g}")
                    continue
            steps.append(step)
        # every step needs no more memory than the one before, so when the last does not fit none does
        if steps and _choose(get, steps[-1][0], steps[-1][1], steps[-1][2], (usable,), gpu) is not None:
            for step_training, step_shardings, step_batches, changes in steps:
                chosen = _choose(get, step_training, step_shardings, step_batches, (usable,), gpu)
                if chosen is not None:
                    needed = min(get(training, sh).total_gib(batches[-1]) for sh in shardings)
                    training, shardings, batches = step_training, step_shardings, step_batches
                    fit_changes = [f"at the policy's settings it needs {needed:.2f} GiB of {usable:.2f} usable",
                                   *changes]
                    break
        elif steps:
            training, shardings, batches = steps[-1][0], steps[-1][1], steps[-1][2]
            notes.append("nothing fits even with the settings a practitioner would change; the most reduced "
                         "configuration tried is shown")
    if chosen is None:  # nothing fits: report the smallest configuration tried
        chosen = min(((sh, batches[-1]) for sh in shardings),
                     key=lambda sb: get(training, sb[0]).total_gib(sb[1]))
    sharding, micro_batch = chosen
    per_step = micro_batch * gpu.count
    accumulation = max(1, math.ceil(spec.effective_batch / per_step)) if spec.effective_batch else 1
    exact = get(training, sharding, False) if accumulate and accumulation == 1 else get(training, sharding)
    est = exact.at(micro_batch)
    training["sharding"] = sharding
    training["micro_batch_size"] = micro_batch
    training["gradient_accumulation_steps"] = accumulation
    return Candidate(spec.method, spec.rank, spec.alpha, spec.dropout, spec.target_modules, spec.num_virtual_tokens,
                     spec.adapter_size, spec.init_rank, dict(spec.quantization) if spec.quantization else None,
                     training, dict(spec.multitask) if spec.multitask else None, est, usable, notes, fit_changes)


def inapplicable_candidate(spec: VerdictSpec, usable: float, reason: str) -> Candidate:
    """Return a candidate for a verdict that cannot be applied to the architecture: it never fits.

    peft refuses some method/architecture combinations (DoRA or AdaLoRA where the targets reach a MoE
    model's routed experts); such a verdict is not an error of the facts, the method just does not apply.
    """
    empty = Estimate(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, notes=[f"not applicable: {reason}"])
    return Candidate(spec.method, spec.rank, spec.alpha, spec.dropout, spec.target_modules, spec.num_virtual_tokens,
                     spec.adapter_size, spec.init_rank, dict(spec.quantization) if spec.quantization else None,
                     dict(spec.training), dict(spec.multitask) if spec.multitask else None, empty, usable,
                     list(spec.notes), inapplicable=reason)


def _applied(spec: VerdictSpec, usable: float, make: Any) -> Candidate:
    try:
        return make()
    except ValueError as exc:  # the method cannot be applied to this architecture (user targets are checked first)
        return inapplicable_candidate(spec, usable, str(exc))


def resolve_candidate(policy: Any, then: dict, facts: dict, arch: Architecture, gpu: GpuSpec,
                      constants: MemoryConstants, usable: float) -> Candidate:
    """Return the verdict a rule's ``then`` yields for these facts, with its memory estimate.

    ``resolve_spec`` then ``candidate_from``, uncached; a verdict peft cannot apply to this
    architecture becomes an inapplicable candidate. Raises ValueError for an unknown method.
    """
    spec = resolve_spec(policy, then, facts, gpu)
    return _applied(spec, usable, lambda: candidate_from(spec, arch, gpu, constants, usable))


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


_LAZY_TRAINING = tuple(f"training.{key}" for key in _FLAT_TRAINING)


def _shape_flat(facts: dict, arch: Architecture, gpu: GpuSpec, usable: float) -> dict[str, Any]:
    """Return the memory-point facts that need no candidate: model shape, hardware, training.sharding."""
    return {
        "training.sharding": (facts.get("training") or {}).get("sharding", "auto"),
        "model.params": float(arch.params),
        "hardware.gpu": gpu.name or "",
        "hardware.gpu_memory_gb": gpu.memory_gb,
        "hardware.gpu_count": gpu.count,
        "model.params_b": arch.params / 1e9,
        "model.num_layers": arch.num_layers,
        "model.hidden_size": arch.hidden_size,
        "model.vocab_size": arch.vocab_size,
        "model.arch_inferred": arch.source == "inferred",
        "hardware.total_memory_gb": gpu.memory_gb * gpu.count,
        "hardware.usable_gb": usable,
        "hardware.bf16": gpu.bf16,
        "hardware.price_per_hour": float(gpu.price_per_hour or 0.0),
    }


def fact_flat(policy: Any, facts: dict) -> dict[str, Any]:
    """Return the flat facts that follow from the given facts alone (no memory model).

    The given facts by dotted path, and the derived facts computed from them: ``data.num_tasks``,
    ``data.tokens_total``, ``use_case.method``/``use_case.rank`` and
    ``serving.unmerged_gpu_hours_per_day``. Memory-dependent facts (``model.*`` shape, ``fits.*``,
    ``mem.*``, ``hardware.usable_gb`` ...) are added by :func:`derive`.
    """
    flat: dict[str, Any] = {}
    for group in _GIVEN_GROUPS:
        for key, value in facts[group].items():
            name = f"{group}.{key}"
            if name in GIVEN:
                flat[name] = value
    dat = facts["data"]
    serving = facts["serving"]
    row = policy.use_cases.get(facts["task"].get("use_case"), {})
    overhead = policy.thresholds.get("unmerged_latency_overhead", 0.05)
    flat["data.num_tasks"] = int(dat.get("num_tasks", 1))
    flat["data.tokens_total"] = float(dat["examples"]) * float(dat["avg_tokens"])
    flat["use_case.method"] = row.get("method", "lora")
    flat["use_case.rank"] = int(row.get("rank") or 0)
    flat["serving.unmerged_gpu_hours_per_day"] = (float(serving["requests_per_day"]) * float(serving["avg_latency_ms"])
                                                  / 1000.0 * overhead / 3600.0)
    return flat


class _Context:
    """One derivation's architecture, GPU and memory point, resolving candidates on demand."""

    def __init__(self, policy: Any, facts: dict, origin: str, cache: DeriveCache | None, lazy: bool = False) -> None:
        self.policy, self.facts, self.cache = policy, facts, cache
        self.arch, self.notes, self.arch_key = _architecture(facts["model"], origin)
        self.constants = cache.constants if cache is not None else MemoryConstants.from_policy(policy.memory)
        self.gpu = gpu_spec(policy, facts["hardware"])
        self.usable = usable_gib(self.gpu.memory_gb, self.constants)
        dat = facts["data"]
        user = facts.get("training")
        self.user_key = _frozen(user) if user else ()
        self.seq, self.multi = dat.get("seq_len"), dat.get("num_tasks", 1) > 1
        key = (self.arch_key, self.gpu, self.user_key, self.seq, self.multi)
        point = cache.point(key, scratch=lazy) if cache is not None else None
        if point is None:
            point = MemoryPoint({}, {}, _shape_flat(facts, self.arch, self.gpu, self.usable))
            if cache is not None:
                cache.store(key, point, scratch=lazy)
        self.point = point

    def candidate(self, then: dict, then_key: str) -> Candidate:
        """Return the candidate of a rule's ``then`` (or a method's defaults) at this memory point."""
        use_case = self.facts["task"]["use_case"] if then.get("use_case") else None
        key = (then_key, _row_key(self.policy, use_case, self.cache))
        found = self.point.by_spec.get(key)
        if found is None:
            gpu = self.gpu
            found = _candidate(self.policy, then, self.facts, self.arch, self.arch_key, gpu, self.constants,
                               self.usable, self.cache, (key, gpu.name if not gpu.bf16 else None, gpu.bf16, gpu.count,
                                                        self.user_key, self.seq, self.multi))
            self.point.by_spec[key] = found
        return found

    def default(self, method: str) -> Candidate:
        """Return ``method`` at its defaults (the candidate behind ``fits.<m>`` and ``mem.<m>_gb``)."""
        found = self.point.defaults.get(method)
        if found is None:
            found = self.point.defaults[method] = self.candidate({"method": method}, f'{{"method": "{method}"}}')
        return found

    def memory_fact(self, name: str) -> Any:
        """Return a memory fact that needs candidates (``fits.*``, ``mem.*``, ``training.*``, ``data.seq_len``).

        Raises KeyError for a name that is not one.
        """
        flat = self.point.flat
        if name in flat:
            return flat[name]
        if name == "fits.any":
            value: Any = any(self.default(m).fits for m in methods.method_names())
        elif name.startswith("fits.") and name[5:] in methods.registry():
            value = self.default(name[5:]).fits
        elif name.startswith("mem.") and name.endswith("_gb") and name[4:-3] in methods.registry():
            value = round(self.default(name[4:-3]).estimate.total_gib, 6)
        elif name in _LAZY_TRAINING:
            key = name[9:]
            value = (self.facts.get("training") or {}).get(key, self.default("lora").training.get(key))
        elif name == "data.seq_len":
            value = int(self.seq or self.default("lora").training["seq_len"])
        else:
            raise KeyError(name)
        flat[name] = value
        return value

    def complete(self) -> MemoryPoint:
        """Return the memory point with every default candidate and memory fact computed."""
        point = self.point
        if not point.complete:
            for m in methods.method_names():
                self.default(m)
            point.defaults = {m: point.defaults[m] for m in methods.method_names()}
            for name in ("fits.any", *(f"{p}.{m}{s}" for m in methods.method_names()
                                       for p, s in (("fits", ""), ("mem", "_gb"))), *_LAZY_TRAINING, "data.seq_len"):
                self.memory_fact(name)
            point.complete = True
        return point


class LazyFlat(dict):
    """Flat facts whose memory facts are computed when a condition first reads them."""

    def __init__(self, base: dict[str, Any], context: _Context) -> None:
        super().__init__(base)
        self._context = context

    def __missing__(self, key: str) -> Any:
        value = self._context.memory_fact(key)
        self[key] = value
        return value


def derive(policy: Any, facts: dict, origin: str = "", cache: DeriveCache | None = None) -> Derived:
    """Return the derived facts for normalized ``facts`` under ``policy``.

    ``cache`` (one per policy) reuses memory points, resolved specs and memory profiles already
    computed; results are the same with or without it. Raises FactsError when the model config
    cannot be used, ValueError for bad hyperparameters.
    """
    ctx = _Context(policy, facts, origin, cache)
    check_user_targets(ctx.arch, facts.get("training") or {})
    point = ctx.complete()
    keys = cache.then_keys if cache is not None else {}
    candidates = {r.id: ctx.candidate(r.then, keys.get(r.id) or _then_key(r.then)) for r in policy.select_rules}
    flat = fact_flat(policy, facts)
    flat.update(point.flat)
    return Derived(ctx.arch, ctx.gpu, ctx.constants, ctx.usable, point.defaults, candidates, flat, ctx.notes)


def derive_lazily(policy: Any, facts: dict, origin: str = "",
                  cache: DeriveCache | None = None) -> tuple[LazyFlat, Callable[[Any], Candidate]]:
    """Return (flat facts computing memory facts on first read, candidate of a select rule on demand).

    For searches that only need the first rule that holds and fits: candidates and memory facts
    nothing reads are never resolved. The values are those :func:`derive` gives. Raises FactsError.
    """
    ctx = _Context(policy, facts, origin, cache, lazy=True)
    flat = LazyFlat(fact_flat(policy, facts), ctx)
    flat.update(ctx.point.flat)
    keys = cache.then_keys if cache is not None else {}

    def candidate(rule: Any) -> Candidate:
        return ctx.candidate(rule.then, keys.get(rule.id) or _then_key(rule.then))

    return flat, candidate


def _row_key(policy: Any, use_case: str | None, cache: DeriveCache | None = None) -> tuple | None:
    if use_case is None:
        return None
    if cache is not None and use_case in cache.row_keys:
        return cache.row_keys[use_case]
    row = policy.use_cases[use_case]
    key = tuple((k, _frozen(row[k])) for k in ("method", "rank", "alpha", "target_modules", "num_virtual_tokens")
                if k in row)
    if cache is not None:
        cache.row_keys[use_case] = key
    return key


def _candidate(policy: Any, then: dict, facts: dict, arch: Architecture, arch_key: tuple, gpu: GpuSpec,
               constants: MemoryConstants, usable: float, cache: DeriveCache | None, spec_key: tuple) -> Candidate:
    if cache is None:
        return resolve_candidate(policy, then, facts, arch, gpu, constants, usable)
    spec = cache.specs.get(spec_key)
    if spec is None:
        spec = resolve_spec(policy, then, facts, gpu)
        if len(cache.specs) > 65536:
            cache.specs.clear()
        cache.specs[spec_key] = spec
    got: dict[TrainingSetup, MemoryProfile] = {}

    def profile_of(setup: TrainingSetup) -> MemoryProfile:
        found = got.get(setup)
        if found is None:
            found = got[setup] = cache.profile((arch_key, spec.cfg, setup), lambda: profile(arch, spec.cfg, setup,
                                                                                              constants))
        return found

    return _applied(spec, usable, lambda: candidate_from(spec, arch, gpu, constants, usable, profile_of))
