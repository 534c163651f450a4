"""The run manifest (``run-manifest.json``): what ran, on what, with which inputs, and what it cost.

It records the decision id, the plan and its hash, the policy hash, the sha256 of every data
file as read at training time, package versions, the device, wall time, time per step, and the
measured peak memory next to the decision's estimate.
"""

from __future__ import annotations

import platform
import statistics
import sys
from importlib import metadata
from typing import Any

PACKAGES = ("finetune-policy", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "tokenizers",
            "safetensors", "datasets", "trl", "durable-rules")
GIB = float(1 << 30)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Return ``{package: version}`` for the installed packages (None when one is not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def peak_memory(device_type: str) -> dict[str, Any]:
    """Return the measured peak memory in GiB: CUDA ``max_memory_allocated`` on a GPU, else the peak RSS.

    The RSS comes from ``resource.getrusage`` (the whole process since it started, so it includes
    the Python interpreter and the imported libraries), or from psutil where ``resource`` is missing.
    """
    if device_type == "cuda":
        import torch

        return {"kind": "cuda_max_memory_allocated", "gib": torch.cuda.max_memory_allocated() / GIB,
                "reserved_gib": torch.cuda.max_memory_reserved() / GIB}
    try:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
        return {"kind": "peak_rss", "gib": kib * scale / GIB}
    except ImportError:  # pragma: no cover - Windows
        import psutil

        info = psutil.Process().memory_info()
        return {"kind": "peak_rss", "gib": float(getattr(info, "peak_wset", info.rss)) / GIB}


def step_time_stats(durations: list[float]) -> dict[str, Any]:
    """Return time-per-step statistics in seconds (the first step, which warms up, is left out when possible)."""
    if not durations:
        return {"steps_timed": 0, "mean_s": None, "median_s": None, "p90_s": None, "first_step_s": None}
    body = durations[1:] if len(durations) > 1 else durations
    ordered = sorted(body)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"steps_timed": len(body), "mean_s": statistics.fmean(body), "median_s": statistics.median(body),
            "p90_s": p90, "first_step_s": durations[0]}


def device_description(plan: dict) -> dict[str, Any]:
    """Return the device the run used, as seen now (CUDA name and count, or the CPU and its cores)."""
    import os

    out = dict(plan["device"])
    out["platform"] = platform.platform()
    out["cpu_count"] = os.cpu_count()
    return out


def train_loss_of(curve: list[dict]) -> float | None:
    """Return the mean training loss over a run's loss curve (each logged value weighted by the steps it covers).

    The Trainer's own ``training_loss`` covers only the steps of its last process; the loss curve
    survives resumes, so this is the loss of the whole run.
    """
    total, steps, last = 0.0, 0, 0
    for point in curve:
        span = max(1, int(point["step"]) - last)
        total += float(point["loss"]) * span
        steps += span
        last = int(point["step"])
    return total / steps if steps else None


def sum_segments(segments: list[dict]) -> dict[str, Any]:
    """Return the totals of a run's processes: wall time, all step times, the peak memory of each and overall."""
    durations = [d for seg in segments for d in seg.get("step_times_s", [])]
    peaks = [seg["peak"] for seg in segments if seg.get("peak")]
    top = max(peaks, key=lambda p: p.get("gib") or 0.0) if peaks else None
    return {"processes": len(segments), "wall_time_s": sum(float(seg.get("wall_time_s") or 0.0) for seg in segments),
            "step_times_s": durations, "peak": top}


def build_manifest(plan: dict, *, data_hashes: dict[str, str], started_at: str, finished_at: str,
                   segments: list[dict], metrics: dict[str, Any], resumed_from: list[str],
                   artifacts: dict[str, str], distributed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the run manifest dict for a finished run of ``plan``, summed over every process (segment) of the run.

    ``segments`` are the records each training process kept in ``run-state.json`` (wall time,
    step times, peak memory); a run resumed after a kill has several.
    """
    decision = plan.get("decision") or {}
    estimate = decision.get("memory_estimate_gib")
    totals = sum_segments(segments)
    return {
        "manifest_version": "2",
        "decision_id": decision.get("decision_id"),
        "policy": decision.get("policy"),
        "policy_sha256": (decision.get("policy") or {}).get("sha256"),
        "method": plan["method"],
        "override": plan.get("override"),
        "plan_sha256": plan["plan_sha256"],
        "plan": plan,
        "model": {k: plan["model"].get(k) for k in ("path", "hub_id", "revision", "config_sha256")},
        "data": [{"path": f["path"], "sha256": data_hashes.get(f["path"]), "examples": f["examples"]}
                 for f in (plan.get("data") or {}).get("files", [])],
        "packages": package_versions(),
        "device": device_description(plan),
        "distributed": distributed,
        "started_at": started_at,
        "finished_at": finished_at,
        "processes": totals["processes"],
        "wall_time_s": totals["wall_time_s"],
        "steps": metrics.get("global_step"),
        "time_per_step": step_time_stats(totals["step_times_s"]),
        "memory": {
            "measured_peak": totals["peak"],
            "segments": [{"index": seg["index"], "peak": seg.get("peak"), "wall_time_s": seg.get("wall_time_s"),
                          "steps": [seg.get("start_step"), seg.get("last_step")]} for seg in segments],
            "decision_estimate_gib": estimate,
            "estimate_note": "the decision estimates one GPU of the facts' hardware; the measurement is this "
                             "machine" + ("" if plan["device"]["type"] == "cuda" else " (CPU: whole-process RSS)"),
        },
        "trainable_params": plan["trainable_params"],
        "metrics": {k: metrics.get(k) for k in ("eval_loss_before", "eval_loss_after", "train_loss_first",
                                                  "train_loss_last", "train_loss")},
        "padding": metrics.get("batches"),
        "resumed_from": resumed_from,
        "artifacts": artifacts,
    }
