"""Datasets: JSONL loading and validation, prompt templates, loss masks, multi-task mixing, packing.

Three record formats, auto-detected per line or declared with ``--data-format``:

* ``alpaca``: ``instruction``, optional ``input``, and ``output`` (or ``response``)
* ``chat``: ``messages``, a list of ``{"role": system|user|assistant, "content": str}``
* ``text``: ``text``

Any record may carry a ``task`` name (multi-task data). Validation reads every line and reports
every problem as ``file:line:col: error[code]: message``; nothing is trained when one is found.
For instruction and chat data the loss covers only the response tokens (labels -100 elsewhere).

This module imports no torch: tokenized examples are lists of ints, and the collator imports
torch only when it is called.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError, Diagnostic, Location

FORMATS = ("alpaca", "chat", "text")
ROLES = ("system", "user", "assistant")
MAX_ERRORS_PER_FILE = 25
IGNORE_INDEX = -100

ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
CHAT_HEADER = "<|{role}|>\n"


@dataclass
class Example:
    """One validated record: its format, the record itself, its task and where it came from."""

    format: str
    record: dict
    task: str
    source: str  # "file:line"


@dataclass
class FileScan:
    """The result of validating one data file."""

    path: str
    sha256: str
    format: str
    examples: list[Example]
    tasks: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Return the JSON-safe summary recorded in the plan (path, sha256, format, counts)."""
        return {"path": self.path, "sha256": self.sha256, "format": self.format, "examples": len(self.examples),
                "tasks": dict(self.tasks)}


def file_sha256(path: str) -> str:
    """Return the hex sha256 of the file at ``path``; raises OSError when it cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def detect_format(record: dict) -> str | None:
    """Return the format a record's fields indicate (``alpaca``, ``chat``, ``text``), None when none or several do."""
    found = [fmt for fmt, key in (("alpaca", "instruction"), ("chat", "messages"), ("text", "text")) if key in record]
    return found[0] if len(found) == 1 else None


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _check_record(record: dict, fmt: str) -> list[tuple[str, str]]:
    """Return (code, message) problems of ``record`` read as ``fmt``."""
    problems: list[tuple[str, str]] = []
    if fmt == "alpaca":
        if "instruction" not in record:
            problems.append(("data-missing-field", "missing field `instruction` (alpaca format)"))
        elif not _nonempty_str(record["instruction"]):
            problems.append(("data-empty-field", "`instruction` is empty or not a string"))
        if "input" in record and not isinstance(record["input"], str):
            problems.append(("data-bad-type", "`input` must be a string"))
        answer = "output" if "output" in record else "response" if "response" in record else None
        if answer is None:
            problems.append(("data-missing-field", "missing field `output` (or `response`) (alpaca format)"))
        elif not _nonempty_str(record[answer]):
            problems.append(("data-empty-field", f"`{answer}` is empty or not a string"))
    elif fmt == "chat":
        messages = record.get("messages")
        if "messages" not in record:
            problems.append(("data-missing-field", "missing field `messages` (chat format)"))
        elif not isinstance(messages, list) or not messages:
            problems.append(("data-bad-type", "`messages` must be a non-empty list of {role, content}"))
        else:
            for i, msg in enumerate(messages):
                if not isinstance(msg, dict):
                    problems.append(("data-bad-type", f"messages[{i}] must be an object with role and content"))
                    continue
                if msg.get("role") not in ROLES:
                    problems.append(("data-bad-role", f"messages[{i}].role is {msg.get('role')!r}; "
                                     f"expected one of {', '.join(ROLES)}"))
                if not _nonempty_str(msg.get("content")):
                    problems.append(("data-empty-field", f"messages[{i}].content is empty or not a string"))
            if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
                problems.append(("data-no-response", "no assistant message: nothing to learn from this conversation"))
    elif fmt == "text":
        if "text" not in record:
            problems.append(("data-missing-field", "missing field `text` (text format)"))
        elif not _nonempty_str(record["text"]):
            problems.append(("data-empty-field", "`text` is empty or not a string"))
    if "task" in record and not _nonempty_str(record["task"]):
        problems.append(("data-bad-task", "`task` must be a non-empty string"))
    return problems


def scan_file(path: str, declared_format: str | None = None, default_task: str = "default") -> FileScan:
    """Validate every line of the JSONL file ``path`` and return its examples.

    ``declared_format`` forces a format; otherwise each line's format is detected and the whole
    file must agree with its first record. Raises DataError listing every problem with file:line:col.
    """
    if declared_format is not None and declared_format not in FORMATS:
        raise DataError([Diagnostic("data-bad-format", f"unknown data format `{declared_format}`",
                                    Location("--data-format"), "use auto, " + ", ".join(FORMATS))])
    if not os.path.isfile(path):
        raise DataError([Diagnostic("data-missing-file", f"data file {path} does not exist", Location("--data"))])
    diags: list[Diagnostic] = []
    examples: list[Example] = []
    file_format = declared_format
    first_line = 0
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            lines = fh.read().split("\n")
        except UnicodeDecodeError as exc:
            raise DataError([Diagnostic("data-bad-encoding", f"not UTF-8 text: {exc.reason} at byte {exc.start}",
                                        Location(path))]) from None
    for lineno, line in enumerate(lines, start=1):
        if len(diags) >= MAX_ERRORS_PER_FILE:
            break
        if not line.strip():
            continue
        where = Location(path, lineno, 1)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            diags.append(Diagnostic("data-bad-json", f"invalid JSON: {exc.msg}", Location(path, lineno, exc.colno),
                                    "each line must be one JSON object"))
            continue
        if not isinstance(record, dict):
            diags.append(Diagnostic("data-not-object", f"expected a JSON object, got {type(record).__name__}", where,
                                    "each line must be one JSON object"))
            continue
        detected = detect_format(record)
        if declared_format is not None:
            fmt = declared_format
        elif detected is None:
            keys = [k for k in ("instruction", "messages", "text") if k in record]
            msg = (f"ambiguous record: it has {', '.join(f'`{k}`' for k in keys)}" if keys else
                   "no known fields: expected `instruction` + `output` (alpaca), `messages` (chat) or `text`")
            diags.append(Diagnostic("data-unknown-format", msg, where, "give one format per line, or --data-format"))
            continue
        else:
            fmt = detected
            if file_format is None:
                file_format, first_line = detected, lineno
            elif detected != file_format:
                diags.append(Diagnostic("data-mixed-formats", f"mixed formats: this line is {detected} but the file "
                                        f"is {file_format} (from line {first_line})", where,
                                        "put each format in its own file and pass several --data"))
                continue
        problems = _check_record(record, fmt)
        for code, message in problems:
            diags.append(Diagnostic(code, message, where))
        if not problems:
            task = record.get("task") or default_task
            examples.append(Example(fmt, record, task, f"{path}:{lineno}"))
    if not diags and not examples:
        diags.append(Diagnostic("data-empty-file", "the file has no records", Location(path)))
    if diags:
        if len(diags) >= MAX_ERRORS_PER_FILE:
            diags.append(Diagnostic("data-too-many-errors", f"stopped after {MAX_ERRORS_PER_FILE} errors",
                                    Location(path), severity="warning"))
        raise DataError(diags)
    tasks = Counter(e.task for e in examples)
    return FileScan(path, file_sha256(path), file_format or declared_format or "text", examples, dict(tasks))


def scan_files(paths: Iterable[str], declared_format: str | None = None) -> list[FileScan]:
    """Validate every file; with several files each file is its own task unless records name one.

    Raises DataError with the problems of all files together.
    """
    paths = [os.path.abspath(p) for p in paths]
    several = len(paths) > 1
    scans: list[FileScan] = []
    diags: list[Diagnostic] = []
    for path in paths:
        default_task = os.path.splitext(os.path.basename(path))[0] if several else "default"
        try:
            scans.append(scan_file(path, declared_format, default_task))
        except DataError as exc:
            diags.extend(exc.diagnostics)
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


# ---------------------------------------------------------------------------------- tokenization


def segments(example: Example) -> list[tuple[str, bool, bool]]:
    """Return the text segments of an example as ``(text, trained, eos_after)`` triples.

    ``trained`` marks the tokens the loss covers: the response of alpaca records, the assistant
    turns of chats, everything of raw text.
    """
    rec = example.record
    if example.format == "alpaca":
        template = ALPACA_PROMPT_WITH_INPUT if _nonempty_str(rec.get("input")) else ALPACA_PROMPT
        prompt = template.format(instruction=rec["instruction"], input=rec.get("input", ""))
        answer = rec["output"] if "output" in rec else rec["response"]
        return [(prompt, False, False), (answer, True, True)]
    if example.format == "chat":
        out: list[tuple[str, bool, bool]] = []
        for msg in rec["messages"]:
            out.append((CHAT_HEADER.format(role=msg["role"]), False, False))
            if msg["role"] == "assistant":
                out.append((msg["content"], True, True))
                out.append(("\n", False, False))
            else:
                out.append((msg["content"] + "\n", False, False))
        return out
    return [(rec["text"], True, True)]


def tokenize_example(example: Example, tokenizer: Any, seq_len: int) -> dict[str, list[int]] | None:
    """Return ``{"input_ids", "labels"}`` for one example, truncated to ``seq_len`` tokens.

    Labels are -100 on prompt tokens. Returns None when truncation leaves no trained token.
    """
    ids: list[int] = []
    labels: list[int] = []
    if tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    for text, trained, eos in segments(example):
        piece = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos and tokenizer.eos_token_id is not None:
            piece.append(tokenizer.eos_token_id)
        ids.extend(piece)
        labels.extend(piece if trained else [IGNORE_INDEX] * len(piece))
    ids, labels = ids[:seq_len], labels[:seq_len]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def tokenize_all(examples: list[Example], tokenizer: Any, seq_len: int) -> tuple[list[dict], int]:
    """Return the tokenized examples and how many were dropped (no trained token left after truncation)."""
    out: list[dict] = []
    dropped = 0
    for ex in examples:
        item = tokenize_example(ex, tokenizer, seq_len)
        if item is None:
            dropped += 1
        else:
            out.append(item)
    return out, dropped


def pack(items: list[dict], seq_len: int) -> list[dict]:
    """Return ``items`` packed greedily, in order, into sequences of at most ``seq_len`` tokens.

    Examples are never split; attention is not blocked between packed examples (plain packing,
    as TRL's ``wrapped`` strategy without splitting).
    """
    packed: list[dict] = []
    cur_ids: list[int] = []
    cur_labels: list[int] = []
    for item in items:
        if cur_ids and len(cur_ids) + len(item["input_ids"]) > seq_len:
            packed.append({"input_ids": cur_ids, "labels": cur_labels})
            cur_ids, cur_labels = [], []
        cur_ids = cur_ids + item["input_ids"]
        cur_labels = cur_labels + item["labels"]
    if cur_ids:
        packed.append({"input_ids": cur_ids, "labels": cur_labels})
    return packed


class PadCollator:
    """Pads a batch of tokenized examples on the right; returns torch tensors (imports torch on call)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict]) -> dict[str, Any]:
        """Return ``{"input_ids", "attention_mask", "labels"}`` as LongTensors padded to the longest item."""
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
            labels[i, :n] = torch.tensor(b["labels"], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def examples_of(scans: list[FileScan]) -> list[Example]:
    """Return the examples of all scanned files, in file order."""
    return [ex for scan in scans for ex in scan.examples]


def build_datasets(data_plan: dict, tokenizer: Any) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Return the tokenized train and eval datasets of a plan's ``data`` section, and a stats dict.

    Re-validates the files (so a changed file fails here too) and reproduces the plan's split and
    mixture exactly. Raises DataError for invalid files.
    """
    scans = scan_files([f["path"] for f in data_plan["files"]], data_plan.get("declared_format"))
    mt = data_plan.get("multitask") or {}
    split = split_and_mix(examples_of(scans), data_plan["eval_fraction"], data_plan["seed"],
                          mt.get("temperature"), mt.get("cap"))
    seq_len = int(data_plan["seq_len"])
    train, dropped_train = tokenize_all(split.train, tokenizer, seq_len)
    evals, dropped_eval = tokenize_all(split.eval, tokenizer, seq_len)
    if data_plan.get("packing"):
        train = pack(train, seq_len)
        evals = pack(evals, seq_len)
    tokens = sum(sum(1 for label in item["labels"] if label != IGNORE_INDEX) for item in train)
    stats = {"train_sequences": len(train), "eval_sequences": len(evals), "dropped_train": dropped_train,
             "dropped_eval": dropped_eval, "trained_tokens_per_epoch": tokens, "mixture": split.report}
    return train, evals, stats
