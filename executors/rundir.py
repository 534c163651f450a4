"""Run directories: staging, the marker files that make a folder a run, resume checks, checkpoints.

A run trains into ``<output>.partial/`` and only at the end writes ``COMPLETE`` (last) and renames
the directory to ``<output>``. Every folder ``decide train`` writes holds ``plan.json`` and
``run-state.json`` from its first moment; those two markers are what make a folder a run.
``--overwrite`` replaces only such a folder (a finished run, or an interrupted one in
``<output>.partial``); any other existing path is refused and nothing is deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .data import current_sha256
from .datasets_io import file_sha256
from .errors import DataError, Diagnostic, Location, ResumeError
from .plan import canonical_json, load_plan, write_json_atomic

STAGING_SUFFIX = ".partial"
COMPLETE = "COMPLETE"
STATE_FILE = "run-state.json"
PLAN_FILE = "plan.json"
CHECKPOINTS = "checkpoints"
MARKERS = (PLAN_FILE, STATE_FILE)
_CKPT = re.compile(r"^checkpoint-(\d+)$")

Log = Callable[[str], None]


def now() -> str:
    """Return the current UTC time as an ISO-8601 string with a ``Z``."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def stderr(msg: str) -> None:
    """Print ``msg`` on stderr (the default log of a run)."""
    print(msg, file=sys.stderr, flush=True)


def staging_path(output: str) -> str:
    """Return the staging directory of ``output`` (``<output>.partial``)."""
    return os.path.abspath(output).rstrip(os.sep) + STAGING_SUFFIX


def is_complete(directory: str) -> bool:
    """Return True when ``directory`` holds a finished run (its ``COMPLETE`` marker exists)."""
    return os.path.isfile(os.path.join(directory, COMPLETE))


def is_run_dir(directory: str) -> bool:
    """Return True when ``directory`` was written by ``decide train``: its plan and run state are there and parse."""
    if not os.path.isdir(directory):
        return False
    try:
        for name in MARKERS:
            with open(os.path.join(directory, name), encoding="utf-8") as fh:
                data = json.load(fh)
            if not isinstance(data, dict) or "plan_sha256" not in data:
                return False
    except (OSError, json.JSONDecodeError):
        return False
    return True


def remove_run(directory: str, where: str = "--overwrite") -> None:
    """Delete the run folder ``directory``; raises ResumeError (deleting nothing) when it is not a run."""
    if not is_run_dir(directory):
        raise ResumeError([Diagnostic(
            "run-not-a-run", f"{directory} exists and was not written by `decide train` (no {PLAN_FILE} and "
            f"{STATE_FILE}); nothing was deleted", Location(where),
            "--overwrite only replaces a previous run; choose another --output or move the folder away")])
    shutil.rmtree(directory)


def plan_content_sha256(plan: dict) -> str:
    """Return the hash of what a plan *does*: everything but its creation time and decision identity.

    Two plans built from the same facts, policy, model and data hash equal even though each
    decision gets a new id; this is what ``--resume`` compares.
    """
    import hashlib

    body = {k: v for k, v in plan.items() if k not in ("created_at", "plan_sha256")}
    if isinstance(body.get("decision"), dict):
        body["decision"] = {k: v for k, v in body["decision"].items() if k not in ("decision_id", "audit_record")}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def check_inputs(plan: dict, where: str) -> dict[str, str]:
    """Return ``{path: sha256}`` of the plan's data sources as they are now.

    Raises ResumeError naming each data source (or the model config, or a chat template file)
    that changed or vanished since the plan was made.
    """
    diags: list[Diagnostic] = []
    hashes: dict[str, str] = {}
    for f in (plan.get("data") or {}).get("files", []):
        try:
            now_sha = current_sha256(f)
        except (OSError, DataError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "it is no longer available"
            diags.append(Diagnostic("run-data-missing", f"data file {f['path']} cannot be read: {why}",
                                    Location(where), "restore it, or start a new run with a new plan"))
            continue
        hashes[f["path"]] = now_sha
        if now_sha != f["sha256"]:
            diags.append(Diagnostic("run-data-changed", f"data file {f['path']} changed since the plan was made "
                                    f"(sha256 {f['sha256'][:12]}... -> {now_sha[:12]}...)", Location(where),
                                    "restore the original file, or start a new run (new --output) with a new plan"))
    config = os.path.join(plan["model"]["path"], "config.json")
    try:
        if file_sha256(config) != plan["model"]["config_sha256"]:
            diags.append(Diagnostic("run-model-changed", f"the model config {config} changed since the plan was made",
                                    Location(where), "re-plan for the new model"))
    except OSError:
        diags.append(Diagnostic("run-model-missing", f"the model {plan['model']['path']} is gone", Location(where),
                                "restore it (or its Hugging Face cache), or re-plan"))
    if diags:
        raise ResumeError(diags)
    return hashes


def checkpoint_complete(path: str) -> bool:
    """Return True when the Trainer checkpoint at ``path`` was fully written.

    The Trainer writes ``trainer_state.json`` last; a checkpoint is complete when that file parses
    and the weights are there: safetensors/bin files, or FSDP's sharded ``*.distcp`` folders.
    """
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as fh:
            json.load(fh)
    except (OSError, json.JSONDecodeError):
        return False
    for _root, _dirs, files in os.walk(path):
        if any(n.endswith((".safetensors", ".bin", ".distcp")) for n in files):
            return True
    return False


def last_checkpoint(checkpoints_dir: str, log: Log = stderr, delete: bool = True) -> str | None:
    """Return the newest complete checkpoint under ``checkpoints_dir`` (None when there is none).

    Incomplete checkpoints newer than it (a kill during a save) are deleted (when ``delete``) so the
    Trainer's checkpoint rotation never sees them.
    """
    if not os.path.isdir(checkpoints_dir):
        return None
    found = sorted(((int(m.group(1)), name) for name in os.listdir(checkpoints_dir) if (m := _CKPT.match(name))),
                   reverse=True)
    for _step, name in found:
        path = os.path.join(checkpoints_dir, name)
        if checkpoint_complete(path):
            return path
        if delete:
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
    os.makedirs(staging, exist_ok=True)
    write_json_atomic(os.path.join(staging, PLAN_FILE), plan)
    state = {"plan_sha256": plan["plan_sha256"], "plan_content_sha256": plan_content_sha256(plan),
             "data": data_hashes, "started_at": now(), "segments": []}
    write_json_atomic(os.path.join(staging, STATE_FILE), state)
    os.makedirs(os.path.join(staging, CHECKPOINTS), exist_ok=True)
    return RunDir(os.path.abspath(output), staging, None, state, data_hashes)


def read_state(directory: str) -> dict:
    """Return the ``run-state.json`` of a run folder; raises ResumeError when it is unreadable."""
    try:
        with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeError([Diagnostic("run-state-unreadable", f"cannot read {STATE_FILE} in {directory}: {exc}",
                                      Location("--output"))]) from None


def prepare_run_dir(plan: dict | None, output: str, *, resume: bool, overwrite: bool,
                    log: Log = stderr) -> tuple[dict, RunDir | None]:
    """Return the plan to run and its RunDir; RunDir is None when ``output`` already holds a finished run
    and ``resume`` was asked (nothing left to do).

    ``plan`` may be None only with ``resume`` (the staged plan is used). Raises ResumeError when the
    output is taken, when ``--overwrite`` would delete something that is not a run, when there is an
    interrupted run and neither --resume nor --overwrite was given, or when resuming with a changed
    plan or changed data.
    """
    output = os.path.abspath(output)
    staging = staging_path(output)
    if is_complete(output) and not overwrite:
        if resume:
            return load_plan(os.path.join(output, PLAN_FILE)), None
        raise ResumeError([Diagnostic("run-output-complete", f"{output} already holds a complete run",
                                      Location("--output"), "choose another --output, or pass --overwrite")])
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        if not overwrite:
            raise ResumeError([Diagnostic("run-output-exists", f"{output} exists and is not a finished run",
                                          Location("--output"), "choose another --output, or pass --overwrite")])
        if os.path.isdir(staging) and not is_run_dir(staging):
            remove_run(staging)  # raises before anything is deleted
        remove_run(output)
    if os.path.exists(staging) and not is_run_dir(staging):
        raise ResumeError([Diagnostic(
            "run-staging-not-a-run", f"{staging} exists and was not written by `decide train`; nothing was deleted",
            Location("--output"), "move it away, or choose another --output")])
    if os.path.isdir(staging) and overwrite and not resume:
        remove_run(staging)
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
    state = read_state(staging)
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
    if os.path.isdir(run.output) and not os.listdir(run.output):
        os.rmdir(run.output)
    os.replace(run.staging, run.output)


def attach_launched(output: str, is_main: bool) -> tuple[dict, RunDir]:
    """Return the staged plan and RunDir of ``output`` for a process started by ``accelerate launch``/``torchrun``.

    Every process resumes from the same newest complete checkpoint; only the main process deletes
    incomplete ones. Raises PlanError/ResumeError when the staging directory is missing or its
    inputs changed.
    """
    staging = staging_path(output)
    plan = load_plan(os.path.join(staging, PLAN_FILE))
    hashes = check_inputs(plan, "--output")
    state = read_state(staging)
    ckpt = last_checkpoint(os.path.join(staging, CHECKPOINTS), delete=is_main)
    return plan, RunDir(os.path.abspath(output), staging, ckpt, state, hashes)
