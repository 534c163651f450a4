"""The plan: the exact, reviewable description of one training run, built from a verdict.

``build_plan`` turns a verdict (DESIGN.md) plus a model directory and data files into a JSON-safe
dict (schemas/plan.schema.json): the method and its peft config, the BitsAndBytesConfig, the
training arguments mapped to what the device can do, the data files with their sha256, the
multi-task mixture, the multi-GPU strategy, and the trainable-parameter count measured by peft on
the meta device next to the decision's estimate. Incompatible combinations raise PlanError (exit 2).

Importing this module imports no torch; ``build_plan`` imports it (through executors.modeling) to
inspect the model on the meta device, which the CLI does only after the decision is made.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import get_executor
from .base import PlanContext
from .data import FileScan, examples_of, scan_files, split_and_mix
from .errors import Diagnostic, Location, PlanError

PLAN_VERSION = "2"
REPORT_TO = ("tensorboard", "wandb", "mlflow")
EVAL_STRATEGIES = ("no", "steps", "epoch")
OPTIMIZERS = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
              "sgd": "sgd"}
SHARDING_STRATEGIES = {"none": "ddp", "fsdp": "fsdp", "zero2": "deepspeed_zero2", "zero3": "deepspeed_zero3",
                       "zero3_offload": "deepspeed_zero3_offload"}


@dataclass
class PlanOptions:
    """What the user may set on top of the verdict (the ``decide plan`` flags)."""

    eval_fraction: float = 0.1
    max_steps: int | None = None
    packing: bool = False
    merge: bool = False
    load_in_4bit: bool = False
    device: str = "auto"
    seed: int = 0
    save_steps: int | None = None
    save_total_limit: int = 2
    logging_steps: int = 1
    seq_len: int | None = None
    data_format: str | None = None
    mix_cap: int | None = None
    learning_rate: float | None = None
    chat_template: str | None = None  # auto | model | chat | alpaca | a .jinja file
    data_split: str | None = None
    padding_free: bool | None = None  # None: on unless the method needs padded batches (prompt/prefix tuning)
    report_to: tuple[str, ...] = ()
    weight_decay: float | None = None
    max_grad_norm: float | None = None
    eval_strategy: str | None = None  # None: "steps" (every save) when there is eval data, else "no"
    eval_steps: int | None = None


def canonical_json(data: Any) -> str:
    """Return ``data`` as canonical JSON (sorted keys, no whitespace), the input of every hash."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def plan_sha256(plan: dict) -> str:
    """Return the sha256 of a plan's content: everything except ``created_at`` and ``plan_sha256``."""
    body = {k: v for k, v in plan.items() if k not in ("created_at", "plan_sha256")}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def map_precision(requested: str, device: dict, full_ft: bool, quantized: bool) -> dict[str, Any]:
    """Return the precision actually used on ``device`` for the requested verdict precision.

    On CPU everything runs in fp32 and a requested bf16/fp16 is recorded as downgraded. On CUDA
    without bf16, bf16 becomes fp16 mixed. ``model_dtype`` is the dtype the base is loaded in:
    fp32 master weights for full fine-tuning under mixed precision, the 16-bit dtype for a frozen
    PEFT base.
    """
    used, reason = requested, None
    if device["type"] == "cpu":
        used = "fp32"
        if requested != "fp32":
            reason = f"requested {requested}, but training runs on the CPU, which uses fp32 here"
    elif requested in ("bf16_mixed", "bf16_pure") and not device.get("bf16"):
        used = "fp16_mixed"
        reason = f"requested {requested}, but {device.get('name') or 'this GPU'} has no bf16: fp16 mixed precision"
    half = {"bf16_mixed": "bfloat16", "bf16_pure": "bfloat16", "fp16_mixed": "float16"}.get(used, "float32")
    if used == "fp32":
        model_dtype = "float32"
    elif used == "bf16_pure":
        model_dtype = "bfloat16"
    else:
        model_dtype = "float32" if full_ft else half
    return {"requested": requested, "used": used, "downgraded": used != requested, "reason": reason,
            "bf16": used in ("bf16_mixed", "bf16_pure"), "fp16": used == "fp16_mixed",
            "model_dtype": model_dtype if not quantized else (half or "float32")}


def map_optimizer(requested: str, device: dict) -> dict[str, Any]:
    """Return the transformers ``optim`` name for the verdict's optimizer on ``device``, with any change noted."""
    if requested not in OPTIMIZERS:
        raise PlanError([Diagnostic("plan-unknown-optimizer", f"unknown optimizer `{requested}`", Location("<verdict>"),
                                    "one of " + ", ".join(OPTIMIZERS))])
    used, reason = OPTIMIZERS[requested], None
    if requested == "paged_adamw_8bit" and device["type"] != "cuda":
        used = "adamw_bnb_8bit"
        reason = "paged optimizers need CUDA unified memory; the CPU uses bitsandbytes' non-paged 8-bit AdamW"
    return {"requested": requested, "used": used, "reason": reason}


def quantization_section(quant: dict | None, device: dict) -> dict | None:
    """Return the plan's quantization: the BitsAndBytesConfig kwargs with the compute dtype the device has.

    The compute dtype is the requested one (bfloat16 by default) unless the device lacks it:
    float32 on the CPU, float16 on a GPU without bf16.
    """
    if quant is None:
        return None
    requested = quant["compute_dtype"]
    compute, reason = requested, None
    if device["type"] == "cpu" and requested != "float32":
        compute, reason = "float32", f"requested {requested}; the CPU computes the 4-bit matmuls in float32 here"
    elif device["type"] == "cuda" and requested == "bfloat16" and not device.get("bf16"):
        compute, reason = "float16", "requested bfloat16; this GPU has no bf16"
    return {"library": "bitsandbytes", "bits": quant["bits"], "requested_compute_dtype": requested,
            "compute_dtype_reason": reason,
            "bitsandbytes": {"load_in_4bit": True, "bnb_4bit_quant_type": quant["quant_type"],
                             "bnb_4bit_use_double_quant": quant["double_quant"], "bnb_4bit_compute_dtype": compute}}


def schedule(train_sequences: int | None, micro_batch: int, grad_accum: int, gpus: int, epochs: float,
             max_steps: int | None) -> dict[str, Any]:
    """Return the step schedule: steps per epoch and the total optimizer steps.

    ``max_steps`` wins over epochs. Without data and without ``max_steps`` the totals are None.
    """
    per_step = micro_batch * grad_accum * gpus
    steps_per_epoch = math.ceil(train_sequences / per_step) if train_sequences else None
    if max_steps:
        total, source = int(max_steps), "--max-steps"
    elif steps_per_epoch:
        total, source = max(1, math.ceil(steps_per_epoch * epochs)), "epochs"
    else:
        total, source = None, None
    return {"sequences_per_step": per_step, "steps_per_epoch": steps_per_epoch, "total_steps": total,
            "total_steps_from": source}


def distributed_section(training: dict, info_no_split: list[str], device: dict | None = None) -> dict[str, Any]:
    """Return the multi-GPU strategy: single device, or DDP / FSDP / DeepSpeed launched by accelerate.

    ``processes`` is the number of training processes per machine (GPUs, or CPU processes for a
    CPU target); ``backend`` the process group backend that target uses (nccl or gloo).
    """
    gpus = int(training.get("gpu_count", 1) or 1)
    sharding = training.get("sharding") or "none"
    if sharding == "auto":
        sharding = "none"
    if gpus <= 1:
        return {"gpu_count": 1, "sharding": "none", "strategy": "single", "launcher": None}
    on_cpu = (device or {}).get("type") == "cpu"
    return {"gpu_count": gpus, "sharding": sharding, "strategy": SHARDING_STRATEGIES.get(sharding, "ddp"),
            "launcher": "accelerate", "fsdp_wrap_modules": info_no_split, "processes": gpus,
            "backend": "gloo" if on_cpu else "nccl"}


def target_device(requested: str, local: dict, gpus: int, precision: str) -> dict[str, Any]:
    """Return the device the run will train on, which may not be the machine making the plan.

    ``local`` is this machine (``detect_device``). ``--device cpu`` trains on CPU processes (one per
    planned GPU for a multi-GPU plan, with gloo). With CUDA here, the run uses it. Without CUDA, a
    single-process plan trains here on the CPU, while ``--device cuda`` or a multi-GPU verdict
    (``gpu_count > 1``) is planned for CUDA machines elsewhere: ``count`` is the verdict's GPU
    count and ``bf16`` follows the verdict's precision (the policy chose it for the facts' GPU).
    ``planned_on`` records the machine that made the plan.
    """
    planned_on = local.get("name")
    if requested == "cpu":
        return {"type": "cpu", "count": max(1, gpus), "name": local.get("name") if local["type"] == "cpu" else "cpu",
                "bf16": False, "fp16": False, "planned_on": planned_on}
    if local["type"] == "cuda":
        return {**local, "planned_on": planned_on}
    if requested == "cuda" or gpus > 1:
        return {"type": "cuda", "count": max(1, gpus), "name": "(not on this machine)",
                "bf16": precision in ("bf16_mixed", "bf16_pure"), "fp16": True, "planned_on": planned_on}
    return {**local, "planned_on": planned_on}


def _data_section(scans: list[FileScan], options: PlanOptions, verdict: dict, seq_len: int,
                  template: dict) -> tuple[dict, Any]:
    mt = verdict.get("multitask") or {}
    temperature = mt.get("temperature")
    cap = options.mix_cap if options.mix_cap is not None else mt.get("cap")
    try:
        split = split_and_mix(examples_of(scans), options.eval_fraction, options.seed, temperature, cap)
    except ValueError as exc:
        raise PlanError([Diagnostic("plan-bad-split", str(exc), Location("--eval-fraction"))]) from None
    multitask = None
    if split.report["multitask"]:
        multitask = {"temperature": split.report["temperature"], "cap": cap,
                     "temperature_from": "verdict" if temperature is not None else "default (0.7)",
                     "mixture": split.report["tasks"]}
    section = {
        "files": [s.summary() for s in scans],
        "declared_format": options.data_format,
        "split": options.data_split,
        "chat_template": template,
        "formats": sorted({s.format for s in scans}),
        "eval_fraction": options.eval_fraction,
        "seed": options.seed,
        "seq_len": seq_len,
        "packing": options.packing,
        "tasks": split.report["tasks"],
        "multitask": multitask,
        "train_examples": len(split.train),
        "eval_examples": len(split.eval),
        "train_sequences": len(split.train),
    }
    return section, split


def build_plan(verdict: dict, *, model_path: str, data_files: list[str] | None, options: PlanOptions | None = None,
               decision: dict | None = None, override: dict | None = None, device: dict | None = None,
               scans: list[FileScan] | None = None) -> dict:
    """Return the plan (schemas/plan.schema.json) for ``verdict`` on the model at ``model_path``.

    ``decision`` is the summary of the decision that produced the verdict (id, policy hash,
    estimates) or None for a hand-made verdict; ``override`` records ``--method`` overrides.
    ``scans`` may pass already validated data files. Raises PlanError for incompatible
    combinations (exit 2) and DataError for invalid data files.
    """
    from .chat_template import TemplateError, choose_template
    from .hub import resolve_model
    from .modeling import count_trainable, detect_device, inspect_model, load_tokenizer

    options = options or PlanOptions()
    warnings_early: list[dict[str, str]] = []
    verdict = copy.deepcopy(verdict)
    method = str(verdict.get("method"))
    try:
        executor = get_executor(method)
    except KeyError as exc:
        raise PlanError([Diagnostic("plan-unknown-method", str(exc.args[0]), Location("--method"))]) from None
    where = "--method" if override else "<verdict>"
    reason = executor.unsupported_reason()
    if reason:
        raise PlanError([Diagnostic("plan-method-unsupported", f"{method}: not supported here: {reason}",
                                    Location(where), "choose another method with --method (e.g. lora)")])
    resolved = resolve_model(model_path)
    model_path = resolved.path
    info = inspect_model(model_path)
    training_in = dict(verdict.get("training") or {})
    gpus = int(training_in.get("gpu_count") or 1)
    local = device or detect_device("cpu" if options.device == "cpu" else "auto")
    device = target_device(options.device, local, gpus, str(training_in.get("precision") or "fp32"))
    notes: list[str] = []
    if device["type"] != local["type"]:
        notes.append(f"planned on {local['type']} ({local.get('name')}) for {device['type']}: the run trains where "
                     f"that device is (decide train writes the launch files here)")
    if device["type"] == "cpu" and gpus > 1:
        notes.append(f"--device cpu: the {gpus} planned GPUs become {gpus} CPU processes (gloo)")

    seq_len = int(options.seq_len or training_in.get("seq_len") or 2048)
    if info.max_position_embeddings and seq_len > info.max_position_embeddings:
        notes.append(f"seq_len {seq_len} exceeds the model's max_position_embeddings "
                     f"({info.max_position_embeddings}); using {info.max_position_embeddings}")
        seq_len = int(info.max_position_embeddings)

    prompt_learning = method in ("prompt_tuning", "prefix_tuning")
    if options.packing and prompt_learning:
        raise PlanError([Diagnostic(
            "plan-packing-unsupported", f"{method} cannot train on packed sequences: its virtual tokens must precede "
            "every example", Location("--packing"), "drop --packing")])
    padding_free = (not prompt_learning) if options.padding_free is None else bool(options.padding_free)
    if padding_free and prompt_learning:
        raise PlanError([Diagnostic(
            "plan-padding-free-unsupported", f"{method} needs padded batches (its virtual tokens precede every "
            "example)", Location("--padding-free"), "drop --padding-free")])

    data = None
    if data_files or scans:
        scans = scans if scans is not None else scan_files(data_files or [], options.data_format, options.data_split)
        tokenizer = load_tokenizer(model_path)
        try:
            template = choose_template(options.chat_template, tokenizer.chat_template, [s.format for s in scans])
        except TemplateError as exc:
            raise PlanError([Diagnostic("plan-chat-template", str(exc), Location("--chat-template"),
                                        "use --chat-template auto, chat, alpaca or a .jinja file")]) from None
        template_entry = template.to_dict()
        template_entry["used"] = any(
            s.format in ("alpaca", "chat", "sharegpt")
            or (s.format == "prompt_completion" and any(isinstance(e.record.get("prompt"), list) for e in s.examples))
            for s in scans)
        data, _split = _data_section(scans, options, verdict, seq_len, template_entry)
        data["padding_free"] = padding_free
        from .tokenized import build_run_data

        run_data = build_run_data(data, tokenizer, model_path, scans=scans)
        for key in ("train_examples", "eval_examples", "train_sequences", "dropped_train", "dropped_eval",
                    "train_tokens_per_epoch", "trained_tokens_per_epoch"):
            data[key] = run_data.stats[key]
        if run_data.stats["dropped_train"]:
            warnings_early.append({"code": "plan-examples-dropped", "message": (
                f"{run_data.stats['dropped_train']} training example(s) keep no trained token after truncation to "
                f"seq_len {seq_len} and are left out")})
    mbs = int(training_in.get("micro_batch_size") or 1)
    ga = int(training_in.get("gradient_accumulation_steps") or 1)
    epochs = float(training_in.get("epochs") or 1)
    sched = schedule(data["train_sequences"] if data else None, mbs, ga, gpus, epochs, options.max_steps)

    quant_req = executor.quantization(verdict, options.load_in_4bit)
    ctx = PlanContext(verdict=verdict, info=info, quantization=quant_req, merge=options.merge,
                      total_steps=sched["total_steps"], where=where)
    peft_kwargs = executor.peft_kwargs(verdict, ctx)
    diags = executor.check(ctx)
    errors = [d for d in diags if d.severity == "error"]
    if errors:
        raise PlanError(errors)
    warnings = warnings_early + [{"code": d.code, "message": d.message} for d in diags if d.severity != "error"]

    precision = map_precision(str(training_in.get("precision") or "fp32"), device, method == "full_ft",
                              quant_req is not None)
    optimizer = map_optimizer(str(training_in.get("optimizer") or "adamw"), device)
    for entry in (precision, optimizer):
        if entry.get("reason"):
            warnings.append({"code": "plan-downgraded", "message": entry["reason"]})
    quantization = quantization_section(quant_req, device)
    if quantization and quantization["compute_dtype_reason"]:
        warnings.append({"code": "plan-downgraded", "message": quantization["compute_dtype_reason"]})
    gradient_checkpointing = bool(training_in.get("gradient_checkpointing", False))
    if gradient_checkpointing and not executor.supports_gradient_checkpointing:
        gradient_checkpointing = False
        warnings.append({"code": "plan-gradient-checkpointing-off",
                         "message": f"peft does not support gradient checkpointing with {method}; it is turned off "
                                    "(activation memory is higher than the decision's estimate assumed)"})
    warmup_ratio = float(training_in.get("warmup_ratio") or 0.0)
    total = sched["total_steps"]
    save_steps = options.save_steps or (max(1, math.ceil(total / 5)) if total else 100)
    has_eval = bool(data and data["eval_examples"])
    eval_strategy = options.eval_strategy or ("steps" if has_eval else "no")
    if eval_strategy != "no" and not has_eval:
        raise PlanError([Diagnostic("plan-no-eval-data", f"--eval-strategy {eval_strategy} needs held-out data",
                                    Location("--eval-strategy"), "give --data with --eval-fraction > 0, or "
                                    "--eval-strategy no")])
    eval_steps = (options.eval_steps or save_steps) if eval_strategy == "steps" else None
    for name in options.report_to:
        if name not in REPORT_TO:
            raise PlanError([Diagnostic("plan-unknown-tracker", f"unknown tracker `{name}`", Location("--report-to"),
                                        "one of " + ", ".join(REPORT_TO) + ", or none")])
    training = {
        "learning_rate": float(options.learning_rate or training_in.get("learning_rate") or 2e-4),
        "learning_rate_from": "--learning-rate" if options.learning_rate else "verdict",
        "verdict_learning_rate": training_in.get("learning_rate"),
        "lr_scheduler_type": str(training_in.get("lr_scheduler") or "linear"),
        "warmup_ratio": warmup_ratio,
        "warmup_steps": int(math.ceil(warmup_ratio * total)) if total else 0,
        "epochs": epochs,
        "max_steps": total,
        "max_steps_from": sched["total_steps_from"],
        "steps_per_epoch": sched["steps_per_epoch"],
        "per_device_train_batch_size": mbs,
        "gradient_accumulation_steps": ga,
        "sequences_per_step": sched["sequences_per_step"],
        "gradient_checkpointing": gradient_checkpointing,
        "precision": precision,
        "optimizer": optimizer,
        "weight_decay": float(options.weight_decay if options.weight_decay is not None
                              else training_in.get("weight_decay") or 0.0),
        "max_grad_norm": float(options.max_grad_norm if options.max_grad_norm is not None
                               else training_in.get("max_grad_norm") or 1.0),
        "eval_strategy": eval_strategy,
        "eval_steps": eval_steps,
        "report_to": list(options.report_to),
        "layerwise_lr_decay": training_in.get("layerwise_lr_decay"),
        "seed": options.seed,
        "logging_steps": options.logging_steps,
        "save_steps": save_steps,
        "save_total_limit": options.save_total_limit,
    }
    peft_section = ({"type": executor.peft_config_class.replace("Config", "").upper(),
                     "class": executor.peft_config_class, "kwargs": peft_kwargs}
                    if executor.peft_config_class else None)
    measured = count_trainable(model_path, peft_section)
    estimate = (decision or {}).get("trainable_params_estimate")
    trainable = {"peft": measured, "estimate": estimate, "match": (measured == estimate) if estimate is not None else None,
                 "total_params": info.total_params, "counted_on": "meta device"}
    if estimate is not None and measured != estimate:
        warnings.append({"code": "plan-trainable-mismatch", "message": f"peft counts {measured} trainable parameters, "
                         f"the decision estimated {estimate}: the memory estimate may be off"})
    plan = {
        "plan_version": PLAN_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "method": method,
        "override": override,
        "decision": decision,
        "verdict": verdict,
        "model": {"path": model_path, "config_sha256": _sha256_file(os.path.join(model_path, "config.json")),
                  "dtype": precision["model_dtype"], "info": info.to_dict(), **resolved.summary()},
        "device": device,
        "peft": peft_section,
        "quantization": quantization,
        "training": training,
        "data": data,
        "distributed": distributed_section(training_in, info.no_split_modules, device),
        "merge": bool(options.merge and executor.can_merge and method != "full_ft"),
        "artifact_dir": executor.artifact_dir,
        "trainable_params": trainable,
        "warnings": warnings,
        "notes": notes,
    }
    plan["plan_sha256"] = plan_sha256(plan)
    return plan


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read())
    return h.hexdigest()


def validate_plan(plan: Any, where: str = "<plan>") -> None:
    """Check ``plan`` against schemas/plan.schema.json and its own hash; raise PlanError when invalid."""
    from ruleengine.paths import load_schema
    from ruleengine.schema_check import validate

    if not isinstance(plan, dict):
        raise PlanError([Diagnostic("plan-not-object", "a plan must be a JSON object", Location(where))])
    def locate(path: tuple, key: bool = False) -> Location:
        return Location(where)

    diags = validate(plan, load_schema("plan.schema.json"), locate, "plan")
    if diags:
        raise PlanError(diags)
    if plan["plan_sha256"] != plan_sha256(plan):
        raise PlanError([Diagnostic("plan-hash-mismatch", "the plan was edited after it was written (plan_sha256 "
                                    "does not match its content)", Location(where),
                                    "re-create it with `decide plan`, or fix plan_sha256 if the edit is intended")])


def load_plan(path: str) -> dict:
    """Return the plan stored at ``path``, validated. Raises PlanError for a missing, bad or edited plan."""
    try:
        with open(path, encoding="utf-8") as fh:
            plan = json.load(fh)
    except FileNotFoundError:
        raise PlanError([Diagnostic("plan-missing", f"no plan at {path}", Location("--plan"),
                                    "write one with `decide plan ... -o plan.json`")]) from None
    except json.JSONDecodeError as exc:
        raise PlanError([Diagnostic("plan-bad-json", f"invalid JSON: {exc.msg}", Location(path, exc.lineno, exc.colno))]
                        ) from None
    validate_plan(plan, path)
    return plan


def write_json_atomic(path: str, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (temp file + rename); raises OSError."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_plan(plan: dict, path: str) -> None:
    """Write ``plan`` to ``path`` atomically after validating it; raises PlanError or OSError."""
    validate_plan(plan, path)
    write_json_atomic(path, plan)


def summarize(plan: dict) -> str:
    """Return a short human-readable summary of a plan (for the terminal)."""
    t = plan["training"]
    lines = [f"method: {plan['method']}" + (f" (override; the policy chose {plan['override']['policy_method']})"
                                            if plan.get("override") else "")]
    if plan.get("decision"):
        lines.append(f"decision: {plan['decision']['decision_id']}  policy {plan['decision']['policy']['name']} "
                     f"sha256 {plan['decision']['policy']['sha256'][:12]}")
    if plan.get("peft"):
        kw = plan["peft"]["kwargs"]
        shown = {k: v for k, v in kw.items() if k in ("r", "lora_alpha", "init_r", "target_r", "total_step",
                                                      "num_virtual_tokens", "use_dora")}
        lines.append(f"peft: {plan['peft']['class']} {shown}")
        if "target_modules" in kw:
            lines.append(f"target modules: {', '.join(kw['target_modules'])}")
    if plan.get("quantization"):
        bnb = plan["quantization"]["bitsandbytes"]
        lines.append(f"quantization: 4-bit {bnb['bnb_4bit_quant_type']}, double quant "
                     f"{bnb['bnb_4bit_use_double_quant']}, compute {bnb['bnb_4bit_compute_dtype']}")
    tp = plan["trainable_params"]
    lines.append(f"trainable parameters: {tp['peft']:,} of {tp['total_params']:,} (estimate: "
                 f"{tp['estimate'] if tp['estimate'] is not None else 'n/a'}"
                 + (", match" if tp["match"] else ", MISMATCH" if tp["match"] is False else "") + ")")
    lines.append(f"device: {plan['device']['type']}  precision: {t['precision']['used']}"
                 + (f" (requested {t['precision']['requested']})" if t["precision"]["downgraded"] else "")
                 + f"  optimizer: {t['optimizer']['used']}")
    lines.append(f"steps: {t['max_steps']} (from {t['max_steps_from']})  micro batch {t['per_device_train_batch_size']} "
                 f"x grad accum {t['gradient_accumulation_steps']}  lr {t['learning_rate']:g} {t['lr_scheduler_type']}")
    lines.append(f"weight decay {t.get('weight_decay', 0.0):g}  grad clip {t.get('max_grad_norm', 1.0):g}  eval "
                 f"{t.get('eval_strategy', 'no')}" + (f" every {t['eval_steps']} steps" if t.get("eval_steps") else "")
                 + f"  trackers: {', '.join(t.get('report_to') or []) or 'none'}")
    if plan.get("data"):
        d = plan["data"]
        lines.append(f"data: {len(d['files'])} source(s) ({', '.join(d['formats'])}), {d['train_examples']} train / "
                     f"{d['eval_examples']} eval examples, {d.get('train_sequences')} train sequences, seq_len "
                     f"{d['seq_len']}" + (", packed (no attention across examples)" if d["packing"] else "")
                     + (", padding-free batches" if d.get("padding_free") else ", padded batches"))
        tmpl = d["chat_template"]
        if tmpl.get("used", True):
            lines.append(f"chat template: {tmpl['source']} (loss on assistant tokens, located by {tmpl['masking']}); "
                         "saved with the adapter")
        if d.get("train_tokens_per_epoch") is not None:
            lines.append(f"tokens per epoch: {d['train_tokens_per_epoch']:,} ({d['trained_tokens_per_epoch']:,} "
                         "trained)")
        if d.get("multitask"):
            mix = ", ".join(f"{k} {v['weight']:.2f}" for k, v in d["multitask"]["mixture"].items())
            lines.append(f"mixture (T={d['multitask']['temperature']}): {mix}")
    dist = plan["distributed"]
    if dist["gpu_count"] > 1:
        lines.append(f"multi-process: {dist.get('processes', dist['gpu_count'])} {plan['device']['type'].upper()} "
                     f"processes per machine, {dist['strategy']} (launch.sh: accelerate or torchrun, one or more "
                     "machines)")
    for w in plan.get("warnings", []):
        lines.append(f"warning[{w['code']}]: {w['message']}")
    for n in plan.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)
