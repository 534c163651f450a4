"""The training recipe: plan -> setup -> train -> save, one linear path (torchtune style).

A run trains into ``<output>.partial/`` and only at the end writes ``COMPLETE`` (last) and
renames the directory to ``<output>``, so an interrupted run never looks complete. The staging
directory holds the plan, ``run-state.json`` (plan and data hashes, the loss before training) and
the Trainer checkpoints; ``--resume`` continues from the last complete checkpoint and refuses when
the plan or a data file changed.

Final layout of ``<output>/``::

    plan.json  run-state.json  run-manifest.json  metrics.json  COMPLETE
    adapter/ (peft save_pretrained + tokenizer) or model/ (full fine-tuning)
    merged/ (with --merge)  checkpoints/checkpoint-N/  accelerate_config.yaml (multi-GPU)

``python -m executors.runner --output DIR --launched`` is the entry point ``accelerate launch``
runs for multi-GPU plans.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import get_executor
from .data import file_sha256
from .errors import Diagnostic, Location, ResumeError, RunError
from .plan import canonical_json, load_plan, validate_plan, write_json_atomic

STAGING_SUFFIX = ".partial"
COMPLETE = "COMPLETE"
STATE_FILE = "run-state.json"
PLAN_FILE = "plan.json"
CHECKPOINTS = "checkpoints"
_CKPT = re.compile(r"^checkpoint-(\d+)$")

Log = Callable[[str], None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def staging_path(output: str) -> str:
    """Return the staging directory of ``output`` (``<output>.partial``)."""
    return os.path.abspath(output).rstrip(os.sep) + STAGING_SUFFIX


def is_complete(directory: str) -> bool:
    """Return True when ``directory`` holds a finished run (its ``COMPLETE`` marker exists)."""
    return os.path.isfile(os.path.join(directory, COMPLETE))


def plan_content_sha256(plan: dict) -> str:
    """Return the hash of what a plan *does*: everything but its creation time and decision identity.

    Two plans built from the same facts, policy, model and data hash equal even though each
    decision gets a new id; this is what ``--resume`` compares.
    """
    body = {k: v for k, v in plan.items() if k not in ("created_at", "plan_sha256")}
    if isinstance(body.get("decision"), dict):
        body["decision"] = {k: v for k, v in body["decision"].items() if k not in ("decision_id", "audit_record")}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def check_inputs(plan: dict, where: str) -> dict[str, str]:
    """Return ``{path: sha256}`` of the plan's data files as they are now.

    Raises ResumeError naming each data file (or the model config) that changed or vanished since
    the plan was made.
    """
    diags: list[Diagnostic] = []
    hashes: dict[str, str] = {}
    for f in (plan.get("data") or {}).get("files", []):
        try:
            now = file_sha256(f["path"])
        except OSError as exc:
            diags.append(Diagnostic("run-data-missing", f"data file {f['path']} cannot be read: {exc.strerror}",
                                    Location(where), "restore it, or start a new run with a new plan"))
            continue
        hashes[f["path"]] = now
        if now != f["sha256"]:
            diags.append(Diagnostic("run-data-changed", f"data file {f['path']} changed since the plan was made "
                                    f"(sha256 {f['sha256'][:12]}... -> {now[:12]}...)", Location(where),
                                    "restore the original file, or start a new run (new --output) with a new plan"))
    config = os.path.join(plan["model"]["path"], "config.json")
    try:
        if file_sha256(config) != plan["model"]["config_sha256"]:
            diags.append(Diagnostic("run-model-changed", f"the model config {config} changed since the plan was made",
                                    Location(where), "re-plan for the new model"))
    except OSError:
        diags.append(Diagnostic("run-model-missing", f"the model {plan['model']['path']} is gone", Location(where)))
    if diags:
        raise ResumeError(diags)
    return hashes


def checkpoint_complete(path: str) -> bool:
    """Return True when the Trainer checkpoint at ``path`` was fully written.

    The Trainer writes ``trainer_state.json`` last; a checkpoint is complete when that file
    parses and the weights (adapter or model safetensors) are there.
    """
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as fh:
            json.load(fh)
    except (OSError, json.JSONDecodeError):
        return False
    names = os.listdir(path)
    return any(n.endswith(".safetensors") or n.endswith(".bin") for n in names)


def last_checkpoint(checkpoints_dir: str, log: Log = _stderr) -> str | None:
    """Return the newest complete checkpoint under ``checkpoints_dir`` (None when there is none).

    Incomplete checkpoints newer than it (a kill during a save) are deleted so the Trainer's
    checkpoint rotation never sees them.
    """
    if not os.path.isdir(checkpoints_dir):
        return None
    found = sorted(((int(m.group(1)), name) for name in os.listdir(checkpoints_dir) if (m := _CKPT.match(name))),
                   reverse=True)
    for _step, name in found:
        path = os.path.join(checkpoints_dir, name)
        if checkpoint_complete(path):
            return path
        log(f"removing incomplete checkpoint {path}")
        shutil.rmtree(path, ignore_errors=True)
    return None


@dataclass
class RunDir:
    """Where a run writes: the final output, the staging directory, and the checkpoint to resume from."""

    output: str
    staging: str
    resume_checkpoint: str | None
    state: dict
    data_hashes: dict[str, str]


def _fresh(plan: dict, output: str, staging: str, data_hashes: dict[str, str]) -> RunDir:
    os.makedirs(os.path.join(staging, CHECKPOINTS), exist_ok=True)
    write_json_atomic(os.path.join(staging, PLAN_FILE), plan)
    state = {"plan_sha256": plan["plan_sha256"], "plan_content_sha256": plan_content_sha256(plan),
             "data": data_hashes, "started_at": _now(), "eval_loss_before": None, "segments": 0}
    write_json_atomic(os.path.join(staging, STATE_FILE), state)
    return RunDir(os.path.abspath(output), staging, None, state, data_hashes)


def prepare_run_dir(plan: dict | None, output: str, *, resume: bool, overwrite: bool,
                    log: Log = _stderr) -> tuple[dict, RunDir | None]:
    """Return the plan to run and its RunDir; RunDir is None when ``output`` already holds a finished run
    and ``resume`` was asked (nothing left to do).

    ``plan`` may be None only with ``resume`` (the staged plan is used). Raises ResumeError when the
    output is taken, when there is an interrupted run and neither --resume nor --overwrite was
    given, or when resuming with a changed plan or changed data.
    """
    output = os.path.abspath(output)
    staging = staging_path(output)
    if is_complete(output):
        if overwrite:
            shutil.rmtree(output)
        elif resume:
            return load_plan(os.path.join(output, PLAN_FILE)), None
        else:
            raise ResumeError([Diagnostic("run-output-complete", f"{output} already holds a complete run",
                                          Location("--output"), "choose another --output, or pass --overwrite")])
    elif os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        if not overwrite:
            raise ResumeError([Diagnostic("run-output-exists", f"{output} exists and is not a finished run",
                                          Location("--output"), "choose another --output, or pass --overwrite")])
        shutil.rmtree(output) if os.path.isdir(output) else os.remove(output)
    if os.path.isdir(staging) and overwrite and not resume:
        shutil.rmtree(staging)
    if not os.path.isdir(staging):
        if plan is None:
            raise ResumeError([Diagnostic("run-nothing-to-resume", f"nothing to resume: {staging} does not exist",
                                          Location("--resume"), "start the run with --plan (or --facts/--model/--data)")])
        if resume:
            log(f"no interrupted run at {staging}; starting a new run")
        hashes = check_inputs(plan, "--plan")
        return plan, _fresh(plan, output, staging, hashes)
    if not resume:
        raise ResumeError([Diagnostic("run-interrupted-exists", f"an interrupted run is waiting in {staging}",
                                      Location("--output"), "pass --resume to continue it, or --overwrite to start over")])
    stored = load_plan(os.path.join(staging, PLAN_FILE))
    if plan is not None and plan_content_sha256(plan) != plan_content_sha256(stored):
        raise ResumeError([Diagnostic(
            "run-plan-changed", f"the plan differs from the one the interrupted run in {staging} started with "
            f"(plan {stored['plan_sha256'][:12]}...)", Location("--plan"),
            "resume without --plan (the stored plan is used), or start a new run in another --output")])
    hashes = check_inputs(stored, "--resume")
    with open(os.path.join(staging, STATE_FILE), encoding="utf-8") as fh:
        state = json.load(fh)
    if is_complete(staging):
        log(f"{staging} finished before it could be renamed; finishing it")
        return stored, RunDir(output, staging, None, state, hashes)
    ckpt = last_checkpoint(os.path.join(staging, CHECKPOINTS), log)
    log(f"resuming from {ckpt}" if ckpt else "no complete checkpoint yet: the run starts from step 0")
    return stored, RunDir(output, staging, ckpt, state, hashes)


def finalize(run: RunDir) -> None:
    """Move a complete staging directory to its final place (COMPLETE must already be written)."""
    if not is_complete(run.staging):
        raise RuntimeError(f"{run.staging} is not complete")
    os.replace(run.staging, run.output)


# --------------------------------------------------------------------------------- the recipe


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


def _make_trainer_class() -> Any:
    from transformers import Trainer

    class PlanTrainer(Trainer):
        """The HF Trainer plus layer-wise LR decay from the plan (when the verdict sets it)."""

        layerwise: tuple[float, int] | None = None

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

    return PlanTrainer


def _step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Records the wall time of every optimizer step (forward, backward, optimizer; not saving)."""

        def __init__(self) -> None:
            self.durations: list[float] = []
            self._t0: float | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Start the clock of an optimizer step."""
            self._t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Record the step's duration."""
            if self._t0 is not None:
                self.durations.append(time.perf_counter() - self._t0)
                self._t0 = None

    return StepTimer()


def check_runnable(plan: dict) -> None:
    """Raise RunError when ``plan`` cannot train here: no data in the plan, or a CUDA plan on a machine without CUDA."""
    if plan.get("data") is None:
        raise RunError([Diagnostic("run-no-data", "the plan has no data files", Location("--plan"),
                                   "re-plan with --data")])
    if plan["device"]["type"] == "cuda" and plan["distributed"]["launcher"] is None:
        import torch

        if not torch.cuda.is_available():
            raise RunError([Diagnostic("run-no-cuda", "the plan was made for CUDA and this machine has no CUDA device",
                                       Location("--plan"), "re-plan here (`decide plan --device cpu`)")])


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


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class Recipe:
    """One training run of a plan: :meth:`setup`, :meth:`train`, :meth:`save`, in that order."""

    def __init__(self, plan: dict, run: RunDir, log: Log = _stderr, progress: bool = True):
        self.plan = plan
        self.run = run
        self.log = log
        self.progress = progress
        self.executor = get_executor(plan["method"])
        self.started = time.perf_counter()
        self.started_at = _now()
        self.trainer: Any = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.data_stats: dict[str, Any] = {}
        self.timer: Any = None
        self.train_output: Any = None

    def setup(self) -> None:
        """Load the tokenizer, the datasets, the base model (4-bit when planned), wrap it, build the Trainer.

        Raises RunError when the plan needs CUDA and there is none, DataError for invalid data.
        """
        from transformers import TrainingArguments, set_seed

        from .data import PadCollator, build_datasets
        from .modeling import load_base_model, load_tokenizer

        plan, t = self.plan, self.plan["training"]
        check_runnable(plan)
        set_seed(t["seed"])
        self.tokenizer = load_tokenizer(plan["model"]["path"])
        train_ds, eval_ds, self.data_stats = build_datasets(plan["data"], self.tokenizer)
        model = load_base_model(plan)
        self.model = self.executor.wrap(model, plan)
        self.timer = _step_timer()
        args = TrainingArguments(
            output_dir=os.path.join(self.run.staging, CHECKPOINTS),
            per_device_train_batch_size=t["per_device_train_batch_size"],
            per_device_eval_batch_size=t["per_device_train_batch_size"],
            gradient_accumulation_steps=t["gradient_accumulation_steps"],
            learning_rate=t["learning_rate"], lr_scheduler_type=t["lr_scheduler_type"],
            warmup_steps=t["warmup_steps"], max_steps=t["max_steps"], num_train_epochs=t["epochs"],
            weight_decay=t["weight_decay"], max_grad_norm=t["max_grad_norm"], optim=t["optimizer"]["used"],
            bf16=t["precision"]["bf16"], fp16=t["precision"]["fp16"], use_cpu=plan["device"]["type"] == "cpu",
            logging_steps=t["logging_steps"], save_strategy="steps", save_steps=t["save_steps"],
            save_total_limit=t["save_total_limit"], eval_strategy="no", report_to="none", seed=t["seed"],
            data_seed=t["seed"], dataloader_num_workers=0, remove_unused_columns=False, label_names=["labels"],
            disable_tqdm=not self.progress,
        )
        trainer_cls = _make_trainer_class()
        self.trainer = trainer_cls(
            model=self.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds or None,
            data_collator=PadCollator(self.tokenizer.pad_token_id), processing_class=self.tokenizer,
            callbacks=[self.timer, *self.executor.callbacks(plan)],
        )
        if t.get("layerwise_lr_decay"):
            self.trainer.layerwise = (float(t["layerwise_lr_decay"]), int(plan["model"]["info"]["num_layers"]))
        self.log(f"training {plan['method']} on {plan['device']['type']}: {self.data_stats['train_sequences']} "
                 f"train / {self.data_stats['eval_sequences']} eval sequences, {t['max_steps']} steps")

    def _evaluate(self) -> float | None:
        if not self.trainer.eval_dataset:
            return None
        return float(self.trainer.evaluate()["eval_loss"])

    def train(self) -> None:
        """Measure the eval loss before training (fresh runs), train (resuming when asked), measure it after."""
        state = self.run.state
        if self.run.resume_checkpoint is None and state.get("eval_loss_before") is None:
            state["eval_loss_before"] = self._evaluate()
        state["segments"] = int(state.get("segments", 0)) + 1
        state.setdefault("resumed_from", [])
        if self.run.resume_checkpoint:
            state["resumed_from"].append(os.path.basename(self.run.resume_checkpoint))
        if _is_main_process():
            write_json_atomic(os.path.join(self.run.staging, STATE_FILE), state)
        self.train_output = self.trainer.train(resume_from_checkpoint=self.run.resume_checkpoint)
        state["eval_loss_after"] = self._evaluate()

    def metrics(self) -> dict[str, Any]:
        """Return the run metrics: loss curve, eval losses, data statistics, optimizer groups."""
        history = self.trainer.state.log_history
        curve = [{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate"),
                  "grad_norm": h.get("grad_norm"), "epoch": h.get("epoch")} for h in history if "loss" in h]
        groups = [{"initial_lr": g.get("initial_lr", g["lr"]), "params": sum(p.numel() for p in g["params"])}
                  for g in self.trainer.optimizer.param_groups] if self.trainer.optimizer is not None else []
        return {
            "global_step": self.trainer.state.global_step,
            "loss_curve": curve,
            "train_loss_first": curve[0]["loss"] if curve else None,
            "train_loss_last": curve[-1]["loss"] if curve else None,
            "train_loss": float(self.train_output.training_loss) if self.train_output else None,
            "eval_loss_before": self.run.state.get("eval_loss_before"),
            "eval_loss_after": self.run.state.get("eval_loss_after"),
            "data": self.data_stats,
            "optimizer_param_groups": groups,
            "step_time_s": self.timer.durations,
        }

    def save(self) -> RunResult:
        """Save the artifact, the merged model (when planned), metrics and manifest; mark COMPLETE; rename."""
        from .manifest import build_manifest, peak_memory

        artifact = os.path.join(self.run.staging, self.executor.artifact_dir)
        self.trainer.save_model(artifact)
        metrics = self.metrics()
        result = RunResult(self.run.output, self.plan, metrics, {}, self.trainer.model, self.tokenizer)
        if not _is_main_process():
            return result
        self.tokenizer.save_pretrained(artifact)
        artifacts = {"artifact": self.executor.artifact_dir, "checkpoints": CHECKPOINTS, "metrics": "metrics.json",
                     "plan": PLAN_FILE}
        if self.plan.get("merge"):
            self.log("merging the adapter into a full-precision copy of the base model")
            self.executor.merge(self.run.staging, self.plan, os.path.join(self.run.staging, "merged"))
            artifacts["merged"] = "merged"
        write_json_atomic(os.path.join(self.run.staging, "metrics.json"), metrics)
        manifest = build_manifest(
            self.plan, data_hashes=self.run.data_hashes, started_at=self.started_at, finished_at=_now(),
            wall_time_s=time.perf_counter() - self.started, step_times=self.timer.durations,
            peak=peak_memory(self.plan["device"]["type"]), metrics=metrics,
            resumed_from=list(self.run.state.get("resumed_from", [])), artifacts=artifacts)
        manifest["first_started_at"] = self.run.state.get("started_at")
        write_json_atomic(os.path.join(self.run.staging, "run-manifest.json"), manifest)
        write_json_atomic(os.path.join(self.run.staging, STATE_FILE), self.run.state)
        write_json_atomic(os.path.join(self.run.staging, COMPLETE),
                          {"finished_at": manifest["finished_at"], "plan_sha256": self.plan["plan_sha256"]})
        finalize(self.run)
        result.manifest = manifest
        return result


def launch_multi_gpu(plan: dict, run: RunDir, log: Log = _stderr) -> RunResult:
    """Write the accelerate config for a multi-GPU plan into the staging dir and return the launch command."""
    from .accelerate_config import extra_requirements, launch_command, write_accelerate_config

    path = write_accelerate_config(plan, run.staging)
    command = launch_command(path, run.output)
    with open(os.path.join(run.staging, "launch.sh"), "w", encoding="utf-8") as fh:
        fh.write("#!/usr/bin/env bash\n# generated by `decide train`: run on the machine with the GPUs\n")
        fh.write(f"set -euo pipefail\n{command}\n")
    extra = extra_requirements(plan)
    log(f"this plan trains on {plan['distributed']['gpu_count']} GPUs ({plan['distributed']['strategy']}); "
        f"the executors do not launch distributed training themselves. Run:\n  {command}"
        + (f"\n(needs: pip install {' '.join(extra)})" if extra else ""))
    return RunResult(run.output, plan, launch_command=command)


def run_training(plan: dict | None, output: str, *, resume: bool = False, overwrite: bool = False,
                 launched: bool = False, log: Log = _stderr, progress: bool = True) -> RunResult:
    """Run ``plan`` into ``output`` (see the module docstring for the layout); returns the RunResult.

    With ``plan=None`` and ``resume``, the plan stored in ``<output>.partial`` is used. Multi-GPU
    plans are not trained here unless ``launched`` (under ``accelerate launch``): the accelerate
    config is written and the command returned. Raises ResumeError / RunError / DataError / PlanError
    (exit 2) for refused runs.
    """
    if plan is not None:
        validate_plan(plan)
        check_runnable(plan)
    run: RunDir | None
    if launched:
        plan, run = _attach_launched(output)
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
    recipe = Recipe(plan, run, log, progress)
    recipe.setup()
    recipe.train()
    return recipe.save()


def _attach_launched(output: str) -> tuple[dict, RunDir]:
    staging = staging_path(output)
    plan = load_plan(os.path.join(staging, PLAN_FILE))
    hashes = check_inputs(plan, "--output")
    with open(os.path.join(staging, STATE_FILE), encoding="utf-8") as fh:
        state = json.load(fh)
    ckpt = last_checkpoint(os.path.join(staging, CHECKPOINTS)) if _is_main_process() else None
    return plan, RunDir(os.path.abspath(output), staging, ckpt, state, hashes)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m executors.runner`` (what ``accelerate launch`` runs); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m executors.runner", description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="the run directory (its .partial staging must exist)")
    parser.add_argument("--plan", help="a plan file (default: the plan staged in <output>.partial)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--launched", action="store_true", help="running under accelerate launch")
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
