"""Experiment tracking and the run's pictures: TensorBoard / W&B / MLflow through the Trainer, loss and memory PNGs.

``--report-to`` hands the Trainer its own reporting integrations (transformers' TensorBoard,
W&B and MLflow callbacks). This module checks that the tracker's package is installed before a
run starts (a missing one is a located error naming the package, exit 2), and points the trackers
at the run: TensorBoard events go to ``<run>/tensorboard``, W&B's local files to ``<run>/wandb``
(``WANDB_MODE=offline`` keeps them local, ``wandb sync`` uploads them later); the W&B project and
MLflow experiment default to ``finetune-policy`` unless ``WANDB_PROJECT`` / ``MLFLOW_EXPERIMENT_NAME``
are set, and ``MLFLOW_TRACKING_URI`` is used as given.

Every finished run also gets ``loss_curve.png`` (training loss per step, evaluation loss at each
evaluation) and ``memory.png`` (the decision's per-GPU estimate next to the measured peak of each
process of the run), drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import Diagnostic, Location, RunError

#: tracker -> (importable modules, any of which is enough; the package to install)
TRACKERS = {"tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"), "wandb": (("wandb",), "wandb"),
            "mlflow": (("mlflow",), "mlflow")}


def missing_trackers(names: list[str]) -> list[str]:
    """Return the packages to install for the trackers ``names`` (empty when all are importable)."""
    missing = []
    for name in names:
        modules, package = TRACKERS[name]
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            missing.append(package)
    return missing


def check_trackers(names: list[str]) -> None:
    """Raise RunError (exit 2) naming the package of each requested tracker that is not installed."""
    missing = missing_trackers(names)
    if missing:
        raise RunError([Diagnostic(
            "run-tracker-missing", f"--report-to {name} needs the `{package}` package, which is not installed",
            Location("--report-to"), f"pip install {package}, or drop --report-to {name}")
            for name, package in zip([n for n in names if TRACKERS[n][1] in missing], missing, strict=True)])


@contextmanager
def tracker_environment(names: list[str], run_dir: str, run_name: str) -> Iterator[None]:
    """Set the environment the Trainer's tracking callbacks read, for the duration of a run; restore it after."""
    wanted: dict[str, str] = {}
    if "tensorboard" in names:
        wanted["TENSORBOARD_LOGGING_DIR"] = os.path.join(run_dir, "tensorboard")
    if "wandb" in names:
        wanted["WANDB_DIR"] = run_dir
        if not os.environ.get("WANDB_NAME"):
            wanted["WANDB_NAME"] = run_name
        if not os.environ.get("WANDB_PROJECT"):
            wanted["WANDB_PROJECT"] = "finetune-policy"
    if "mlflow" in names:
        if not os.environ.get("MLFLOW_EXPERIMENT_NAME"):
            wanted["MLFLOW_EXPERIMENT_NAME"] = "finetune-policy"
        if not os.environ.get("MLFLOW_RUN_NAME"):
            wanted["MLFLOW_RUN_NAME"] = run_name
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    if "wandb" in names:
        os.makedirs(run_dir, exist_ok=True)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(metrics: dict, path: str, title: str = "") -> str | None:
    """Draw the training loss per step and the evaluation losses into ``path`` (PNG); returns the path.

    Returns None (and draws nothing) when the run logged no loss or matplotlib is not installed.
    """
    curve = metrics.get("loss_curve") or []
    evals = metrics.get("eval_curve") or []
    if not curve and not evals:
        return None
    try:
        plt = _pyplot()
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if curve:
        ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], label="train loss", linewidth=1.2)
    if evals:
        ax.plot([p["step"] for p in evals], [p["eval_loss"] for p in evals], "o-", label="eval loss", markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_memory(manifest: dict, path: str, title: str = "") -> str | None:
    """Draw the decision's memory estimate next to the measured peak of every process of the run into ``path``.

    Returns the path, or None when there is nothing to draw or matplotlib is not installed.
    """
    memory = manifest.get("memory") or {}
    bars: list[tuple[str, float, str]] = []
    estimate = memory.get("decision_estimate_gib")
    if estimate is not None:
        bars.append(("decision estimate\n(one GPU of the facts)", float(estimate), "#4c72b0"))
    for seg in memory.get("segments") or []:
        peak = (seg.get("peak") or {}).get("gib")
        if peak is not None:
            bars.append((f"measured, process {seg['index'] + 1}\n({(seg.get('peak') or {}).get('kind')})", float(peak),
                         "#dd8452"))
    if not bars:
        return None
    try:
        plt = _pyplot()
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * len(bars)), dpi=100)
    labels = [b[0] for b in bars]
    ax.barh(range(len(bars)), [b[1] for b in bars], color=[b[2] for b in bars])
    ax.set_yticks(range(len(bars)), labels, fontsize=8)
    for i, (_label, value, _color) in enumerate(bars):
        ax.text(value, i, f" {value:.3f} GiB", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GiB")
    ax.set_title(title or "memory: estimate vs measured")
    ax.set_xlim(0, max(b[1] for b in bars) * 1.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
