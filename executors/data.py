"""Datasets: validation of every record of every source, multi-task split and mixing, tokenized datasets.

Sources (``executors.datasets_io``): JSONL/JSON files, CSV/TSV/Parquet/Arrow files and dataset
folders through Hugging Face ``datasets``, Hub datasets from the local cache. Record formats
(``executors.formats``): alpaca, chat (OpenAI messages, tool calls included), sharegpt,
prompt_completion and text, detected per record or declared with ``--data-format``; a file must
keep one format. Any record may carry a ``task`` name (multi-task data). Validation reads every
record and reports every problem as ``file:line:col: error[code]: message`` (``file[row]`` for
Arrow-backed sources); nothing is trained when one is found.

Tokenization (chat templates, loss on assistant tokens, the on-disk cache, packing and the
padding-free collator) lives in ``executors.tokenized``. This module imports no torch.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .datasets_io import Source, file_sha256, iter_rows, resolve_source, source_sha256
from .errors import DataError, Diagnostic, Location
from .formats import FORMATS, canonical_format, check_record, detect_format, normalize_record

__all__ = ["FORMATS", "IGNORE_INDEX", "DataError", "Example", "FileScan", "Split", "examples_of", "file_sha256",
           "scan_file", "scan_files", "split_and_mix", "temperature_weights"]

MAX_ERRORS_PER_FILE = 25
IGNORE_INDEX = -100


@dataclass
class Example:
    """One validated record: its format, the record itself, its task and where it came from.

    ``index`` is its position among the valid records of its source (the row of the tokenized cache).
    """

    format: str
    record: dict
    task: str
    source: str  # "file:line" or "file[row]"
    index: int = 0
    file: int = 0  # which source of the run it came from


@dataclass
class FileScan:
    """The result of validating one data source."""

    path: str
    sha256: str
    format: str
    examples: list[Example]
    tasks: dict[str, int] = field(default_factory=dict)
    source: Source | None = None

    def summary(self) -> dict[str, Any]:
        """Return the JSON-safe summary recorded in the plan (path, sha256, format, counts, source kind)."""
        out: dict[str, Any] = {"path": self.path, "sha256": self.sha256, "format": self.format,
                               "examples": len(self.examples), "tasks": dict(self.tasks)}
        if self.source is not None:
            out["source"] = self.source.summary()
        return out


def _known_fields_hint() -> str:
    return ("no known fields: expected `instruction` + `output` (alpaca), `messages` (chat), `conversations` "
            "(sharegpt), `prompt` + `completion`, or `text`")


def scan_file(path: str, declared_format: str | None = None, default_task: str = "default",
              split: str | None = None) -> FileScan:
    """Validate every record of the data source ``path`` (a file, a dataset folder or a Hub id) and return its examples.

    ``declared_format`` forces a format; otherwise each record's format is detected and the whole
    source must agree with its first record. Raises DataError listing every problem with its location.
    """
    declared_format = canonical_format(declared_format)
    if declared_format is not None and declared_format not in FORMATS:
        raise DataError([Diagnostic("data-bad-format", f"unknown data format `{declared_format}`",
                                    Location("--data-format"), "use auto, " + ", ".join(FORMATS))])
    source = resolve_source(path, split)
    diags: list[Diagnostic] = []
    examples: list[Example] = []
    file_format = declared_format
    first = ""
    for where, item in iter_rows(source):
        if len(diags) >= MAX_ERRORS_PER_FILE:
            break
        if isinstance(item, Diagnostic):
            diags.append(item)
            continue
        record = normalize_record(item)
        detected = detect_format(record)
        if declared_format is not None:
            fmt = declared_format
        elif detected is None:
            keys = [k for k in ("instruction", "messages", "conversations", "prompt", "text") if k in record]
            msg = (f"ambiguous record: it has {', '.join(f'`{k}`' for k in keys)}" if len(keys) > 1 else
                   _known_fields_hint())
            diags.append(Diagnostic("data-unknown-format", msg, where, "give one format per record, or --data-format"))
            continue
        else:
            fmt = detected
            if file_format is None:
                file_format, first = detected, (f"line {where.line}" if where.line else where.file)
            elif detected != file_format:
                diags.append(Diagnostic("data-mixed-formats", f"mixed formats: this line is {detected} but the file "
                                        f"is {file_format} (from {first})", where,
                                        "put each format in its own file and pass several --data"))
                continue
        problems = check_record(record, fmt)
        for code, message in problems:
            diags.append(Diagnostic(code, message, where))
        if not problems:
            task = record.get("task") or default_task
            examples.append(Example(fmt, record, task, str(where), len(examples)))
    if not diags and not examples:
        diags.append(Diagnostic("data-empty-file", "the file has no records", Location(source.display)))
    if diags:
        if len(diags) >= MAX_ERRORS_PER_FILE:
            diags.append(Diagnostic("data-too-many-errors", f"stopped after {MAX_ERRORS_PER_FILE} errors",
                                    Location(source.display), severity="warning"))
        raise DataError(diags)
    tasks = Counter(e.task for e in examples)
    return FileScan(source.display if source.hub_id else source.path, source_sha256(source.path),
                    file_format or declared_format or "text", examples, dict(tasks), source)


def scan_files(paths: Iterable[str], declared_format: str | None = None, split: str | None = None) -> list[FileScan]:
    """Validate every source; with several sources each is its own task unless records name one.

    Raises DataError with the problems of all sources together.
    """
    paths = list(paths)
    several = len(paths) > 1
    scans: list[FileScan] = []
    diags: list[Diagnostic] = []
    for number, path in enumerate(paths):
        name = os.path.basename(os.path.normpath(path))
        default_task = (os.path.splitext(name)[0] if os.path.exists(path) else name) if several else "default"
        try:
            scan = scan_file(path, declared_format, default_task, split)
        except DataError as exc:
            diags.extend(exc.diagnostics)
            continue
        for ex in scan.examples:
            ex.file = number
        scans.append(scan)
    if diags:
        raise DataError(diags)
    return scans


# ------------------------------------------------------------------------------------------ mixing


def temperature_weights(sizes: dict[str, int], temperature: float, cap: int | None = None) -> dict[str, float]:
    """Return the sampling probability of each task: ``p_i = min(N_i, cap)^T / sum_j min(N_j, cap)^T``.

    T = 1 is proportional to size, T -> 0 is uniform. Raises ValueError for T <= 0 or an empty dict.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not sizes:
        raise ValueError("no tasks")
    capped = {k: float(min(n, cap) if cap else n) for k, n in sizes.items()}
    raw = {k: n ** temperature for k, n in capped.items()}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def _apportion(weights: dict[str, float], total: int) -> dict[str, int]:
    """Return integer counts summing to ``total`` in proportion to ``weights`` (largest remainder)."""
    exact = {k: w * total for k, w in weights.items()}
    counts = {k: int(math.floor(v)) for k, v in exact.items()}
    rest = total - sum(counts.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[:rest]:
        counts[k] += 1
    return counts


@dataclass
class Split:
    """The training and evaluation examples of a run and the mixture report."""

    train: list[Example]
    eval: list[Example]
    report: dict[str, Any]


def split_and_mix(examples: list[Example], eval_fraction: float, seed: int, temperature: float | None = None,
                  cap: int | None = None) -> Split:
    """Return the deterministic eval split (per task) and the temperature-mixed training list.

    With one task the training list is the shuffled remainder. With several, task i is sampled
    with probability ∝ N_i^T (optionally N_i capped); the epoch keeps sum(N_i) samples, small tasks
    are up-sampled (repeated) and large ones down-sampled. Raises ValueError for a fraction outside [0, 1).
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval fraction must be in [0, 1), got {eval_fraction}")
    by_task: dict[str, list[Example]] = {}
    for ex in examples:
        by_task.setdefault(ex.task, []).append(ex)
    train_pools: dict[str, list[Example]] = {}
    eval_list: list[Example] = []
    report_tasks: dict[str, dict[str, Any]] = {}
    for task, items in by_task.items():
        order = list(range(len(items)))
        random.Random(f"{seed}:split:{task}").shuffle(order)
        n_eval = 0
        if eval_fraction > 0 and len(items) >= 2:
            n_eval = min(len(items) - 1, max(1, round(len(items) * eval_fraction)))
        eval_list.extend(items[i] for i in order[:n_eval])
        train_pools[task] = [items[i] for i in order[n_eval:]]
        report_tasks[task] = {"examples": len(items), "train": len(train_pools[task]), "eval": n_eval}
    sizes = {t: len(p) for t, p in train_pools.items()}
    total = sum(sizes.values())
    if len(train_pools) == 1:
        (task, pool), = train_pools.items()
        train = list(pool)
        random.Random(f"{seed}:order").shuffle(train)
        report_tasks[task].update({"natural": 1.0, "weight": 1.0, "samples": len(train)})
        return Split(train, eval_list, {"multitask": False, "tasks": report_tasks, "train_samples": len(train)})
    temp = 0.7 if temperature is None else float(temperature)
    weights = temperature_weights(sizes, temp, cap)
    counts = _apportion(weights, total)
    train = []
    for task, pool in train_pools.items():
        n = counts[task]
        picked: list[Example] = []
        while len(picked) + len(pool) <= n:
            picked.extend(pool)
        rest = list(pool)
        random.Random(f"{seed}:sample:{task}:{len(picked)}").shuffle(rest)
        picked.extend(rest[: n - len(picked)])
        train.extend(picked)
        report_tasks[task].update({"natural": round(sizes[task] / total, 6), "weight": round(weights[task], 6),
                                   "samples": n})
    random.Random(f"{seed}:order").shuffle(train)
    return Split(train, eval_list, {"multitask": True, "temperature": temp, "cap": cap, "tasks": report_tasks,
                                    "train_samples": len(train)})


def examples_of(scans: list[FileScan]) -> list[Example]:
    """Return the examples of all scanned sources, in source order."""
    return [ex for scan in scans for ex in scan.examples]


def current_sha256(entry: dict) -> str:
    """Return the content sha256 of a plan's data entry as it is now (file, folder, or cached Hub snapshot).

    Raises OSError when it cannot be read, DataError when a Hub dataset is no longer cached.
    """
    source = entry.get("source") or {}
    if source.get("hub_id"):
        return source_sha256(resolve_source(source["hub_id"], source.get("split")).path)
    return source_sha256(entry["path"])
