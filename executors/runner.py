"""The training recipe: plan -> setup -> train -> save, one linear path (torchtune style).

A run trains into ``<output>.partial/`` and only at the end writes ``COMPLETE`` (last) and
renames the directory to ``<output>``, so an interrupted run never looks complete
(``executors.rundir``). The staging directory holds the plan, ``run-state.json`` (plan and data
hashes, and one record per training process: its wall time, step times and peak memory, updated
as it trains) and the Trainer checkpoints; ``--resume`` continues from the last complete
checkpoint and refuses when the plan or a data source changed.

Final layout of ``<output>/``::

    plan.json  run-state.json  run-manifest.json  metrics.json  COMPLETE
    loss_curve.png  memory.png  tensorboard/ (--report-to tensorboard)  wandb/ (--report-to wandb)
    adapter/ (peft save_pretrained + tokenizer with its chat template) or model/ (full fine-tuning)
    merged/ (with --merge)  checkpoints/checkpoint-N/  accelerate_config.yaml launch.sh (multi-GPU)

``python -m executors.runner --output DIR --launched`` is what ``accelerate launch`` (or
``torchrun``) runs on every process of a multi-GPU plan; the Trainer gets its FSDP or DeepSpeed
settings from the plan itself, so both launchers train the same way.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import get_executor
from .errors import Diagnostic, Location, RunError
from .plan import load_plan, validate_plan, write_json_atomic
from .rundir import (
    CHECKPOINTS,
    COMPLETE,
    PLAN_FILE,
    STATE_FILE,
    Log,
    RunDir,
    attach_launched,
    check_inputs,
    checkpoint_complete,
    finalize,
    is_complete,
    is_run_dir,
    last_checkpoint,
    now,
    plan_content_sha256,
    prepare_run_dir,
    staging_path,
)
from .rundir import stderr as _stderr

__all__ = ["COMPLETE", "PLAN_FILE", "STATE_FILE", "Recipe", "RunDir", "RunResult", "check_inputs", "check_runnable",
           "checkpoint_complete", "is_complete", "is_run_dir", "last_checkpoint", "layerwise_param_groups",
           "plan_content_sha256", "prepare_run_dir", "run_training", "staging_path"]

#: seconds between two writes of a process's record into run-state.json
SEGMENT_WRITE_INTERVAL_S = 1.0


def layerwise_param_groups(model: Any, base_lr: float, decay: float, num_layers: int) -> list[dict]:
    """Return optimizer parameter groups with layer-wise LR decay: layer i gets ``lr·decay^(L-i)``.

    Embeddings get the smallest rate ``lr·decay^(L+1)``, the parameters above the last layer
    (final norm, LM head, prompt encoders) the full rate. Only trainable parameters are included.
    """
    pattern = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
    groups: dict[int, list[Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = pattern.search(name)
        if m:
            depth = int(m.group(1)) + 1
        elif "embed" in name or ".wte." in name or ".wpe." in name:
            depth = 0
        else:
            depth = num_layers + 1
        groups.setdefault(depth, []).append(p)
    out = []
    for depth in sorted(groups):
        scale = decay ** (num_layers + 1 - depth)
        out.append({"params": groups[depth], "lr": base_lr * scale, "lr_scale": scale, "depth": depth})
    return out


def world_size() -> int:
    """Return the number of processes of this run (``WORLD_SIZE`` set by the launcher, else 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """Return True on the process that writes the run's files (global rank 0)."""
    return int(os.environ.get("RANK", "0")) == 0


def _make_trainer_class(executor: Any) -> Any:
    from transformers import Trainer

    class PlanTrainer(Trainer):
        """The HF Trainer plus what the plan needs: layer-wise LR decay, method-specific checkpoint state
        (AdaLoRA), FSDP on CPU processes, and padding statistics of training batches only."""

        layerwise: tuple[float, int] | None = None
        cpu_fsdp = False

        def create_optimizer(self, model: Any = None) -> Any:
            """Return the optimizer: the Trainer's, or one with per-layer LR groups when decay is planned."""
            if self.layerwise is None or self.optimizer is not None:
                return super().create_optimizer(model)
            decay, layers = self.layerwise
            opt_model = self.model if model is None else model
            groups = layerwise_param_groups(opt_model, self.args.learning_rate, decay, layers)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)  # type: ignore[arg-type]
            for g in groups:
                g["weight_decay"] = self.args.weight_decay
            self.optimizer = optimizer_cls([{k: v for k, v in g.items() if k not in ("lr_scale", "depth")}
                                            for g in groups], **optimizer_kwargs)
            return self.optimizer

        def create_accelerator_and_postprocess(self) -> None:
            """Create the Accelerator; on CPU processes with an FSDP plan, let accelerate apply FSDP.

            accelerate offers FSDP only to accelerator devices: its CPU process group (MULTI_CPU,
            gloo) never gets the FSDP plugin, and a CPU run would silently train as DDP. torch's
            FSDP2 works on CPU with gloo, so the shared state is presented as a multi-device group
            for the moment the FSDP plugin is attached (used by tests and CPU debugging runs).
            """
            if self.args.fsdp_plugin_args is not None and self.args.use_cpu:
                from accelerate.state import PartialState
                from accelerate.utils import DistributedType

                state = PartialState()
                if state.distributed_type == DistributedType.MULTI_CPU:
                    state.distributed_type = DistributedType.MULTI_GPU
                    self.cpu_fsdp = True
            super().create_accelerator_and_postprocess()

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            if not executor.load_checkpoint_state(self.model if model is None else model, resume_from_checkpoint):
                super()._load_from_checkpoint(resume_from_checkpoint, model)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            # written before the Trainer's files: trainer_state.json (written last) marks the checkpoint complete
            executor.save_checkpoint_state(self.model, folder, write=self.args.should_save)
            super()._save_checkpoint(model, trial)

        def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
            collator = self.data_collator
            self.data_collator = getattr(collator, "inner", collator)  # evaluation batches are not counted
            try:
                return super().get_eval_dataloader(eval_dataset)
            finally:
                self.data_collator = collator

    return PlanTrainer


def _callbacks(recipe: Recipe) -> list[Any]:
    from transformers import TrainerCallback

    class SegmentRecorder(TrainerCallback):
        """Times every optimizer step and keeps this process's record in run-state.json up to date.

        The record is rewritten at most once per second, at every checkpoint and at the end, so a
        process killed at any moment leaves its wall time, step times and peak memory behind.
        """

        def __init__(self) -> None:
            self.durations: list[float] = []
            self._t0: float | None = None
            self._written = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Start the clock of an optimizer step."""
            self._t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Record the step's duration; write the process record when a second has passed."""
            if self._t0 is not None:
                self.durations.append(time.perf_counter() - self._t0)
                self._t0 = None
            if time.perf_counter() - self._written >= SEGMENT_WRITE_INTERVAL_S:
                self.write(state.global_step)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Write the process record with each checkpoint."""
            self.write(state.global_step)

        def write(self, step: int, finished: bool = False) -> None:
            """Update this process's record in run-state.json (main process only)."""
            self._written = time.perf_counter()
            recipe.write_segment(step, self.durations, finished)

    class DistributedProbe(TrainerCallback):
        """Records, on every process, how the model is distributed: parameters held locally vs in total.

        Under FSDP each process holds a shard (DTensor parameters whose local size is a fraction of
        the full size); under DDP every process holds everything.
        """

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            """Gather every process's parameter counts to the main process."""
            import torch.distributed as dist

            local = total = dtensors = 0
            for p in (model or recipe.trainer.model_wrapped).parameters():
                total += p.numel()
                if hasattr(p, "to_local"):
                    dtensors += 1
                    local += p.to_local().numel()
                else:
                    local += p.numel()
            mine = {"rank": int(os.environ.get("RANK", "0")), "params_local": local, "params_total": total,
                    "dtensor_params": dtensors}
            ranks = [mine]
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                ranks = [None] * dist.get_world_size()  # type: ignore[list-item]
                dist.all_gather_object(ranks, mine)
            acc = recipe.trainer.accelerator
            recipe.distributed = {
                "world_size": world_size(), "distributed_type": str(acc.distributed_type).split(".")[-1],
                "fsdp": bool(getattr(recipe.trainer, "is_fsdp_enabled", False)),
                "fsdp_on_cpu_processes": bool(getattr(recipe.trainer, "cpu_fsdp", False)),
                "deepspeed": bool(getattr(recipe.trainer, "is_deepspeed_enabled", False)),
                "backend": getattr(acc.state, "backend", None), "ranks": ranks,
            }

    recipe.recorder = SegmentRecorder()
    return [recipe.recorder, DistributedProbe()]


def check_runnable(plan: dict) -> None:
    """Raise RunError when ``plan`` cannot train here: no data, a CUDA plan without CUDA, or a missing tracker."""
    from .tracking import check_trackers

    if plan.get("data") is None:
        raise RunError([Diagnostic("run-no-data", "the plan has no data files", Location("--plan"),
                                   "re-plan with --data")])
    check_trackers(list(plan["training"].get("report_to") or []))


def _check_device(plan: dict) -> None:
    if plan["device"]["type"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RunError([Diagnostic("run-no-cuda", "the plan was made for CUDA and this machine has no CUDA device",
                                       Location("--plan"), "run it where the GPUs are, or re-plan here "
                                       "(`decide plan --device cpu`)")])


def distributed_training_args(plan: dict) -> dict[str, Any]:
    """Return the TrainingArguments keywords of the plan's sharding for a multi-process run ({} otherwise).

    FSDP: ``fsdp`` + ``fsdp_config`` (FSDP2, transformer-layer wrapping, sharded checkpoints);
    DeepSpeed: the ZeRO config as a dict. DDP needs nothing: the launcher's environment is enough.
    """
    from .accelerate_config import deepspeed_config, fsdp_settings

    strategy = plan["distributed"]["strategy"]
    if world_size() <= 1 or strategy in ("single", "ddp"):
        return {}
    if strategy == "fsdp":
        return {"fsdp": True, "fsdp_config": fsdp_settings(plan)}
    return {"deepspeed": deepspeed_config(plan)}


@dataclass
class RunResult:
    """What a run produced. ``model`` is the trained in-memory model (None when nothing was trained here)."""

    output_dir: str
    plan: dict
    metrics: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    model: Any = None
    tokenizer: Any = None
    launch_command: str | None = None
    already_complete: bool = False


class Recipe:
    """One training run of a plan: :meth:`setup`, :meth:`train`, :meth:`save`, in that order."""

    def __init__(self, plan: dict, run: RunDir, log: Log = _stderr, progress: bool = True):
        self.plan = plan
        self.run = run
        self.log = log
        self.progress = progress
        self.executor = get_executor(plan["method"])
        self.started = time.perf_counter()
        self.started_at = now()
        self.trainer: Any = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.collator: Any = None
        self.data_stats: dict[str, Any] = {}
        self.recorder: Any = None
        self.distributed: dict[str, Any] | None = None
        self.train_output: Any = None
        self.segment_index = len(run.state.setdefault("segments", []))
        self.start_step = 0
        self.use_cache: bool | None = None

    def _base_config(self) -> Any:
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return model.config

    # ------------------------------------------------------------------------------ run state

    def write_segment(self, step: int, durations: list[float], finished: bool = False) -> None:
        """Update this process's record (wall time, step times, peak memory) in run-state.json."""
        from .manifest import peak_memory

        if not is_main_process():
            return
        segments = self.run.state.setdefault("segments", [])
        record = {"index": self.segment_index, "pid": os.getpid(), "host": socket.gethostname(),
                  "started_at": self.started_at, "updated_at": now(),
                  "wall_time_s": time.perf_counter() - self.started, "start_step": self.start_step,
                  "last_step": step, "step_times_s": list(durations), "peak": peak_memory(self.plan["device"]["type"]),
                  "batches": self.collator.stats() if self.collator is not None else None, "finished": finished}
        while len(segments) <= self.segment_index:
            segments.append({"index": len(segments)})
        segments[self.segment_index] = record
        write_json_atomic(os.path.join(self.run.staging, STATE_FILE), self.run.state)

    # ------------------------------------------------------------------------------ recipe

    def training_arguments(self) -> Any:
        """Return the TrainingArguments of the plan (precision, device, evaluation, trackers, sharding)."""
        from transformers import TrainingArguments

        plan, t = self.plan, self.plan["training"]
        has_eval = bool(plan["data"]["eval_examples"])
        fresh = self.run.resume_checkpoint is None
        strategy = t.get("eval_strategy", "no") if has_eval else "no"
        report_to = list(t.get("report_to") or []) or "none"
        return TrainingArguments(
            output_dir=os.path.join(self.run.staging, CHECKPOINTS),
            per_device_train_batch_size=t["per_device_train_batch_size"],
            per_device_eval_batch_size=t["per_device_train_batch_size"],
            gradient_accumulation_steps=t["gradient_accumulation_steps"],
            learning_rate=t["learning_rate"], lr_scheduler_type=t["lr_scheduler_type"],
            warmup_steps=t["warmup_steps"], max_steps=t["max_steps"], num_train_epochs=t["epochs"],
            weight_decay=t.get("weight_decay", 0.0), max_grad_norm=t.get("max_grad_norm", 1.0),
            optim=t["optimizer"]["used"], bf16=t["precision"]["bf16"], fp16=t["precision"]["fp16"],
            use_cpu=plan["device"]["type"] == "cpu", logging_steps=t["logging_steps"], save_strategy="steps",
            save_steps=t["save_steps"], save_total_limit=t["save_total_limit"], eval_strategy=strategy,
            eval_steps=t.get("eval_steps") if strategy == "steps" else None, eval_on_start=has_eval and fresh,
            report_to=report_to, run_name=os.path.basename(self.run.output), seed=t["seed"], data_seed=t["seed"],
            dataloader_num_workers=0, remove_unused_columns=False, label_names=["labels"],
            disable_tqdm=not self.progress, **distributed_training_args(plan),
        )

    def setup(self) -> None:
        """Load the tokenizer, the tokenized datasets (cached), the base model (4-bit when planned), wrap it,
        build the Trainer.

        Raises RunError when the plan needs CUDA and there is none, DataError for invalid data.
        """
        from transformers import set_seed

        from .modeling import load_base_model, load_tokenizer
        from .tokenized import CountingCollator, build_run_data

        plan, t = self.plan, self.plan["training"]
        check_runnable(plan)
        _check_device(plan)
        set_seed(t["seed"])
        args = self.training_arguments()  # before the model: FSDP's loading settings come from it
        self.tokenizer = load_tokenizer(plan["model"]["path"])
        template = plan["data"]["chat_template"]
        if template.get("used", True):
            self.tokenizer.chat_template = template["text"]
        data = build_run_data(plan["data"], self.tokenizer, plan["model"]["path"])
        self.data_stats = data.stats
        model = load_base_model(plan)
        # transformers builds the per-example (block-diagonal) attention of padding-free and packed batches
        # from position_ids only when no KV cache is created; training never needs the cache
        self.use_cache = getattr(model.config, "use_cache", None)
        model.config.use_cache = False
        self.model = self.executor.wrap(model, plan)
        self.collator = CountingCollator(self.tokenizer.pad_token_id, bool(plan["data"].get("padding_free")))
        trainer_cls = _make_trainer_class(self.executor)
        self.trainer = trainer_cls(
            model=self.model, args=args, train_dataset=data.train, eval_dataset=data.eval,
            data_collator=self.collator, processing_class=self.tokenizer,
            callbacks=[*_callbacks(self), *self.executor.callbacks(plan)],
        )
        if t.get("layerwise_lr_decay"):
            self.trainer.layerwise = (float(t["layerwise_lr_decay"]), int(plan["model"]["info"]["num_layers"]))
        self.log(f"training {plan['method']} on {plan['device']['type']}: {self.data_stats['train_sequences']} "
                 f"train / {self.data_stats['eval_sequences']} eval sequences, {t['max_steps']} steps")

    def train(self) -> None:
        """Train (resuming when asked; the eval loss before training is measured at step 0 of a fresh run),
        then measure the eval loss after."""
        state = self.run.state
        state.setdefault("resumed_from", [])
        if self.run.resume_checkpoint:
            state["resumed_from"].append(os.path.basename(self.run.resume_checkpoint))
            self.start_step = int(os.path.basename(self.run.resume_checkpoint).split("-")[1])
        self.write_segment(self.start_step, [])
        self.train_output = self.trainer.train(resume_from_checkpoint=self.run.resume_checkpoint)
        state["eval_loss_after"] = self._final_eval() if self.trainer.eval_dataset else None

    def _final_eval(self) -> float:
        """Return the eval loss of the trained model, without logging it: the trackers' runs ended with training
        (MLflow would open a second run for a late log)."""
        loader = self.trainer.get_eval_dataloader()
        out = self.trainer.evaluation_loop(loader, description="final evaluation", prediction_loss_only=True,
                                           metric_key_prefix="eval")
        return float(out.metrics["eval_loss"])

    def metrics(self) -> dict[str, Any]:
        """Return the run metrics: loss and eval curves, eval losses, data statistics, optimizer groups, batches."""
        from .manifest import train_loss_of

        history = self.trainer.state.log_history
        curve = [{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate"),
                  "grad_norm": h.get("grad_norm"), "epoch": h.get("epoch")} for h in history if "loss" in h]
        evals = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in history if "eval_loss" in h]
        before = next((e["eval_loss"] for e in evals if e["step"] == 0), None)
        after = self.run.state.get("eval_loss_after")
        if after is not None and (not evals or evals[-1]["step"] != self.trainer.state.global_step):
            evals.append({"step": self.trainer.state.global_step, "eval_loss": after})
        groups = [{"initial_lr": g.get("initial_lr", g["lr"]), "params": sum(p.numel() for p in g["params"])}
                  for g in self.trainer.optimizer.param_groups] if self.trainer.optimizer is not None else []
        segments = [s for s in self.run.state.get("segments", []) if s.get("batches")]
        batches = _sum_batches([s["batches"] for s in segments])
        return {
            "global_step": self.trainer.state.global_step,
            "loss_curve": curve,
            "eval_curve": evals,
            "train_loss_first": curve[0]["loss"] if curve else None,
            "train_loss_last": curve[-1]["loss"] if curve else None,
            "train_loss": train_loss_of(curve),
            "eval_loss_before": before,
            "eval_loss_after": after,
            "data": self.data_stats,
            "batches": batches,
            "optimizer_param_groups": groups,
            "step_time_s": [d for s in self.run.state.get("segments", []) for d in s.get("step_times_s", [])],
        }

    def save(self) -> RunResult:
        """Save the artifact, the merged model (when planned), metrics, pictures and manifest; mark COMPLETE; rename."""
        from .manifest import build_manifest
        from .tracking import plot_loss_curve, plot_memory

        artifact = os.path.join(self.run.staging, self.executor.artifact_dir)
        if self.use_cache is not None:
            self._base_config().use_cache = self.use_cache  # the saved config serves inference again
        if getattr(self.trainer, "is_fsdp_enabled", False):
            self.trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        self.trainer.save_model(artifact)
        self.recorder.write(self.trainer.state.global_step, finished=True)
        metrics = self.metrics()
        result = RunResult(self.run.output, self.plan, metrics, {}, self.trainer.model, self.tokenizer)
        if not is_main_process():
            return result
        self.tokenizer.save_pretrained(artifact)
        artifacts = {"artifact": self.executor.artifact_dir, "checkpoints": CHECKPOINTS, "metrics": "metrics.json",
                     "plan": PLAN_FILE}
        if self.plan.get("merge"):
            from .merge import merge_run_dir

            self.log("merging the adapter into the base model (dequantized when the base was 4-bit)")
            report = merge_run_dir(self.run.staging, os.path.join(self.run.staging, "merged"), log=self.log)
            artifacts["merged"] = "merged"
            self.run.state["merge"] = report
        write_json_atomic(os.path.join(self.run.staging, "metrics.json"), metrics)
        manifest = build_manifest(
            self.plan, data_hashes=self.run.data_hashes, started_at=self.run.state.get("started_at", self.started_at),
            finished_at=now(), segments=self.run.state.get("segments", []), metrics=metrics,
            resumed_from=list(self.run.state.get("resumed_from", [])), artifacts=artifacts,
            distributed=self.distributed)
        if self.run.state.get("merge"):
            manifest["merge"] = self.run.state["merge"]
        title = f"{self.plan['method']}: {os.path.basename(self.run.output)}"
        if plot_loss_curve(metrics, os.path.join(self.run.staging, "loss_curve.png"), title):
            artifacts["loss_curve"] = "loss_curve.png"
        if plot_memory(manifest, os.path.join(self.run.staging, "memory.png"), f"memory: {title}"):
            artifacts["memory"] = "memory.png"
        for name in ("tensorboard", "wandb"):
            if os.path.isdir(os.path.join(self.run.staging, name)):
                artifacts[name] = name
        write_json_atomic(os.path.join(self.run.staging, "run-manifest.json"), manifest)
        write_json_atomic(os.path.join(self.run.staging, STATE_FILE), self.run.state)
        write_json_atomic(os.path.join(self.run.staging, COMPLETE),
                          {"finished_at": manifest["finished_at"], "plan_sha256": self.plan["plan_sha256"]})
        finalize(self.run)
        result.manifest = manifest
        return result


def _sum_batches(stats: list[dict]) -> dict[str, Any] | None:
    """Return the token and padding counts of the training batches of all processes of a run together."""
    if not stats:
        return None
    tokens = sum(s["tokens"] for s in stats)
    slots = sum(s["slots"] for s in stats)
    padded = sum(s["slots_if_padded"] for s in stats)
    return {"padding_free": stats[-1]["padding_free"], "tokens": tokens, "slots": slots, "slots_if_padded": padded,
            "padding_fraction": round(1 - tokens / slots, 6) if slots else None,
            "padding_fraction_if_padded": round(1 - tokens / padded, 6) if padded else None}


def launch_multi_gpu(plan: dict, run: RunDir, log: Log = _stderr) -> RunResult:
    """Write the accelerate config and ``launch.sh`` for a multi-GPU plan into the staging dir; return the command."""
    from .accelerate_config import (
        extra_requirements,
        launch_command,
        write_accelerate_config,
        write_launch_script,
    )

    path = write_accelerate_config(plan, run.staging)
    script = write_launch_script(plan, run.staging, run.output)
    command = launch_command(path, run.output)
    extra = extra_requirements(plan)
    log(f"this plan trains on {plan['distributed']['processes']} {plan['device']['type'].upper()} processes per "
        f"machine ({plan['distributed']['strategy']}); the executors do not launch distributed training "
        f"themselves. Run on the machine(s) with the devices:\n  {command}\nor: {script} [--launcher torchrun] "
        "[--num-machines N --machine-rank R --main-process-ip IP]"
        + (f"\n(needs: pip install {' '.join(extra)})" if extra else ""))
    return RunResult(run.output, plan, launch_command=command)


def run_training(plan: dict | None, output: str, *, resume: bool = False, overwrite: bool = False,
                 launched: bool = False, log: Log = _stderr, progress: bool = True) -> RunResult:
    """Run ``plan`` into ``output`` (see the module docstring for the layout); returns the RunResult.

    With ``plan=None`` and ``resume``, the plan stored in ``<output>.partial`` is used. Multi-GPU
    plans are not trained here unless ``launched`` (under ``accelerate launch`` or ``torchrun``):
    the accelerate config and launch script are written and the command returned. Raises
    ResumeError / RunError / DataError / PlanError (exit 2) for refused runs.
    """
    from .tracking import tracker_environment

    if plan is not None:
        validate_plan(plan)
        check_runnable(plan)
    run: RunDir | None
    if launched:
        plan, run = attach_launched(output, is_main_process())
    else:
        plan, run = prepare_run_dir(plan, output, resume=resume, overwrite=overwrite, log=log)
    if run is None:
        log(f"{os.path.abspath(output)} is already complete")
        return RunResult(os.path.abspath(output), plan, already_complete=True)
    if plan["distributed"]["launcher"] == "accelerate" and not launched:
        return launch_multi_gpu(plan, run, log)
    if is_complete(run.staging):
        finalize(run)
        return RunResult(run.output, plan, already_complete=True)
    with tracker_environment(list(plan["training"].get("report_to") or []), run.staging,
                             os.path.basename(run.output)):
        recipe = Recipe(plan, run, log, progress)
        recipe.setup()
        recipe.train()
        return recipe.save()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m executors.runner`` (what ``accelerate launch``/``torchrun`` run); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m executors.runner", description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="the run directory (its .partial staging must exist)")
    parser.add_argument("--plan", help="a plan file (default: the plan staged in <output>.partial)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--launched", action="store_true", help="running under accelerate launch or torchrun")
    ns = parser.parse_args(argv)
    from ruleengine.diagnostics import DiagnosticError

    try:
        plan = load_plan(ns.plan) if ns.plan else None
        result = run_training(plan, ns.output, resume=ns.resume or plan is None, launched=ns.launched)
    except DiagnosticError as exc:
        _stderr(str(exc))
        return exc.exit_code
    if result.manifest:
        _stderr(f"done: {result.output_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through accelerate launch
    sys.exit(main())
