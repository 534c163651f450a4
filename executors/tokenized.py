"""Tokenized datasets: rendering with the chat template, a tokenization cache on disk, packing, collators.

Each data source is rendered (``executors.chat_template``) and tokenized once, in one batch call
of the fast tokenizer, and stored as an Arrow dataset (``datasets.Dataset.save_to_disk``) under
``$FINETUNE_POLICY_CACHE`` (default ``~/.cache/finetune-policy``)``/tokenized/<key>``. The key
hashes everything the tokens depend on: the source's content sha256 and format, the tokenizer
files, the chat template, ``seq_len`` and the library versions. ``decide plan`` fills the cache
and ``decide train`` (and every process of a multi-GPU launch) reads it back, memory-mapped.

The training and evaluation sets select rows of these tables in the plan's split and mixture
order. Packing uses TRL's best-fit-decreasing ``pack_dataset`` (examples are never split) and
batches use TRL's padding-free collator: the micro-batch is flattened into one row whose
``position_ids`` restart at every example, and transformers builds a block-diagonal attention
mask from them, so packed examples never attend to each other and no token is padding. Prompt and
prefix tuning, whose virtual tokens must precede every example, use padded batches instead.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .chat_template import Renderer, TemplateError, TemplateSpec, tokenize_rendered
from .data import IGNORE_INDEX, Example, FileScan, examples_of, scan_files, split_and_mix
from .errors import DataError, Diagnostic, Location
from .formats import to_sample

TOKENIZE_VERSION = "2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja",
                   "chat_template.json")


def cache_root() -> str:
    """Return the cache directory of this project (``$FINETUNE_POLICY_CACHE`` or ``~/.cache/finetune-policy``)."""
    return os.environ.get("FINETUNE_POLICY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                   "finetune-policy")


def tokenizer_fingerprint(model_path: str) -> str:
    """Return a sha256 over the tokenizer files of ``model_path`` (what the token ids depend on)."""
    h = hashlib.sha256()
    names = sorted({os.path.basename(p) for p in TOKENIZER_FILES
                    for p in glob.glob(os.path.join(model_path, p))})
    for name in names:
        with open(os.path.join(model_path, name), "rb") as fh:
            h.update(name.encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("tokenizers", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cache_key(scan: FileScan, tokenizer_sha: str, template: TemplateSpec, seq_len: int) -> str:
    """Return the cache key of one source's tokenization (sha256 of everything the tokens depend on)."""
    parts = {"version": TOKENIZE_VERSION, "source": scan.sha256, "format": scan.format, "tokenizer": tokenizer_sha,
             "read_as": scan.source.summary() if scan.source is not None else None,  # kind and split of a folder
             "template": template.sha256, "seq_len": seq_len, "libraries": _versions()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def tokenize_examples(examples: list[Example], tokenizer: Any, template: TemplateSpec,
                      seq_len: int) -> dict[str, list]:
    """Return the columns ``input_ids``, ``labels``, ``keep`` for ``examples`` (in order).

    ``keep`` is False for an example left without any trained token after truncation to
    ``seq_len``. Raises DataError locating every example the chat template cannot render.
    """
    renderer = Renderer(tokenizer, template)
    texts: list[str] = []
    spans: list[list[tuple[int, int]]] = []
    diags: list[Diagnostic] = []
    for ex in examples:
        try:
            text, regions = renderer.render(to_sample(ex.record, ex.format))
        except TemplateError as exc:
            diags.append(Diagnostic("data-template-failed", str(exc), Location(ex.source)))
            if len(diags) >= 25:
                break
            continue
        texts.append(text)
        spans.append(regions)
    if diags:
        raise DataError(diags)
    try:
        rows = tokenize_rendered(tokenizer, texts, spans, seq_len)
    except NotImplementedError:  # slow (Python) tokenizers have no offset mapping
        raise DataError([Diagnostic("data-slow-tokenizer", f"the tokenizer ({type(tokenizer).__name__}) cannot map "
                                    "tokens to characters, which the loss mask needs", Location("--model"),
                                    "save the model with a fast tokenizer (tokenizer.json)")]) from None
    return {"input_ids": [r[0] if r else [] for r in rows], "labels": [r[1] if r else [] for r in rows],
            "keep": [r is not None for r in rows]}


@dataclass
class TokenizedSource:
    """One source's tokenized table (a ``datasets.Dataset``) and how it was obtained."""

    table: Any
    key: str
    cached: bool
    seconds: float
    examples: int

    def stats(self) -> dict[str, Any]:
        """Return the cache statistics recorded in the metrics."""
        return {"key": self.key[:16], "cache": "hit" if self.cached else "miss", "seconds": round(self.seconds, 4),
                "examples": self.examples,
                "examples_per_s": round(self.examples / self.seconds, 1) if self.seconds > 0 else None}


def _load_cached(folder: str, examples: int) -> Any:
    """Return the cached table in ``folder``, or None when it is absent, unreadable or of another size."""
    import datasets

    if not os.path.isfile(os.path.join(folder, "meta.json")):
        return None
    try:
        table = datasets.load_from_disk(folder)
    except (OSError, ValueError):
        return None
    return table if len(table) == examples else None


def tokenized_source(scan: FileScan, tokenizer: Any, template: TemplateSpec, seq_len: int, tokenizer_sha: str,
                     use_cache: bool = True) -> TokenizedSource:
    """Return the tokenized table of ``scan``: from the cache, or tokenized now and stored in the cache.

    Raises DataError for an example the template cannot render; a cache that cannot be written is
    skipped silently (the tokens are still returned).
    """
    import datasets

    datasets.disable_progress_bars()
    key = cache_key(scan, tokenizer_sha, template, seq_len)
    folder = os.path.join(cache_root(), "tokenized", key)
    start = time.perf_counter()
    if use_cache:
        cached = _load_cached(folder, len(scan.examples))
        if cached is not None:
            return TokenizedSource(cached, key, True, time.perf_counter() - start, len(cached))
        if os.path.isdir(folder):  # damaged (a kill while it was written is impossible: it is renamed in)
            shutil.rmtree(folder, ignore_errors=True)
    columns = tokenize_examples(scan.examples, tokenizer, template, seq_len)
    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                  "labels": datasets.List(datasets.Value("int32")), "keep": datasets.Value("bool")})
    table = datasets.Dataset.from_dict(columns, features=features)
    seconds = time.perf_counter() - start
    if use_cache:
        tmp = f"{folder}.tmp{os.getpid()}"
        try:
            table.save_to_disk(tmp)
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as fh:
                json.dump({"source": scan.path, "sha256": scan.sha256, "format": scan.format, "seq_len": seq_len,
                           "template": template.source, "examples": len(table), "seconds": seconds}, fh)
            os.replace(tmp, folder)  # fails when another process (a launched rank) stored it first: use theirs
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        stored = _load_cached(folder, len(scan.examples))
        if stored is not None:
            table = stored  # memory-mapped from the cache, like every later reader
    return TokenizedSource(table, key, False, seconds, len(table))


@dataclass
class RunData:
    """The training and evaluation datasets of a run, with their statistics."""

    train: Any
    eval: Any
    stats: dict[str, Any] = field(default_factory=dict)


def _select(tables: list[Any], offsets: list[int], picked: list[Example]) -> tuple[Any, int]:
    """Return the rows of ``picked`` (in order, repeats kept) from the concatenated tables, and the dropped count."""
    import datasets

    whole = datasets.concatenate_datasets(tables) if len(tables) > 1 else tables[0]
    keep = whole["keep"]
    rows = [offsets[ex.file] + ex.index for ex in picked]
    kept = [r for r in rows if keep[r]]
    return whole.select(kept).remove_columns(["keep"]), len(rows) - len(kept)


def _token_counts(table: Any) -> tuple[int, int]:
    lengths = [len(ids) for ids in table["input_ids"]]
    trained = sum(sum(1 for label in labels if label != IGNORE_INDEX) for labels in table["labels"])
    return sum(lengths), trained


def build_run_data(data_plan: dict, tokenizer: Any, model_path: str, use_cache: bool = True,
                   scans: list[FileScan] | None = None) -> RunData:
    """Return the tokenized training and evaluation datasets of a plan's ``data`` section.

    Re-validates the sources (unless ``scans`` are given), reproduces the plan's split and mixture
    exactly, reads or fills the tokenization cache, and packs the training and evaluation sets
    (best-fit decreasing, TRL) when the plan packs. Raises DataError for invalid data.
    """
    template = TemplateSpec.from_dict(data_plan["chat_template"])
    if scans is None:
        scans = scan_files([f["path"] for f in data_plan["files"]], data_plan.get("declared_format"),
                           data_plan.get("split"))
        for number, scan in enumerate(scans):
            for ex in scan.examples:
                ex.file = number
    seq_len = int(data_plan["seq_len"])
    tokenizer_sha = tokenizer_fingerprint(model_path)
    sources = [tokenized_source(scan, tokenizer, template, seq_len, tokenizer_sha, use_cache) for scan in scans]
    offsets = [0]
    for s in sources[:-1]:
        offsets.append(offsets[-1] + len(s.table))
    mt = data_plan.get("multitask") or {}
    split = split_and_mix(examples_of(scans), data_plan["eval_fraction"], data_plan["seed"],
                          mt.get("temperature"), mt.get("cap"))
    tables = [s.table for s in sources]
    train, dropped_train = _select(tables, offsets, split.train)
    if len(train) == 0:
        raise DataError([Diagnostic("data-nothing-to-train", "no training example keeps a trained token after "
                                    f"truncation to seq_len {seq_len}", Location("--data"),
                                    "raise the sequence length (--seq-len or --train-seq-len) or shorten the "
                                    "prompts")])
    evals, dropped_eval = _select(tables, offsets, split.eval) if split.eval else (None, 0)
    train_tokens, trained_tokens = _token_counts(train)
    stats: dict[str, Any] = {
        "train_examples": len(train), "eval_examples": len(evals) if evals is not None else 0,
        "dropped_train": dropped_train, "dropped_eval": dropped_eval,
        "train_tokens_per_epoch": train_tokens, "trained_tokens_per_epoch": trained_tokens,
        "tokenization": [s.stats() for s in sources], "mixture": split.report,
    }
    if data_plan.get("packing"):
        from trl.data_utils import pack_dataset

        train = pack_dataset(train, seq_len, strategy="bfd")
        if evals is not None:
            evals = pack_dataset(evals, seq_len, strategy="bfd")
        stats["packing"] = {"strategy": "bfd (TRL pack_dataset)", "attention": "per example (position_ids)"}
    stats["train_sequences"] = len(train)
    stats["eval_sequences"] = len(evals) if evals is not None else 0
    return RunData(train, evals, stats)


class CountingCollator:
    """TRL's language-modeling collator (padding-free or padded), counting real and padding tokens.

    ``padding_fraction`` is what this run's batches carried; ``padding_fraction_if_padded`` is what
    right-padding every micro-batch to its longest sequence would have carried.
    """

    def __init__(self, pad_token_id: int, padding_free: bool):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.inner = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=padding_free)
        self.padding_free = padding_free
        self.tokens = 0
        self.slots = 0
        self.slots_if_padded = 0

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        """Return the batch for ``features`` and update the token counts."""
        batch = self.inner(features)
        lengths = [len(f["input_ids"]) for f in features]
        self.tokens += sum(lengths)
        self.slots += int(batch["input_ids"].numel())
        self.slots_if_padded += max(lengths) * len(lengths)
        return batch

    def stats(self) -> dict[str, Any]:
        """Return the token counts and padding fractions of every batch collated so far."""
        def frac(slots: int) -> float | None:
            return round(1 - self.tokens / slots, 6) if slots else None

        return {"padding_free": self.padding_free, "tokens": self.tokens, "slots": self.slots,
                "slots_if_padded": self.slots_if_padded, "padding_fraction": frac(self.slots),
                "padding_fraction_if_padded": frac(self.slots_if_padded)}
