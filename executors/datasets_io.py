"""Data sources: local files of every common format, dataset folders, and Hub datasets from the local cache.

``--data`` accepts:

* ``.jsonl`` / ``.ndjson`` (one object per line) and ``.json`` (an array of objects, or JSON lines),
  read here so that every problem is located at ``file:line:col``;
* ``.csv``, ``.tsv``, ``.parquet``, ``.arrow`` files, loaded with Hugging Face ``datasets``;
* a directory: a ``save_to_disk`` dataset (``datasets.load_from_disk``) or a folder of data files
  (``datasets.load_dataset(folder)``);
* a Hub dataset id (``org/name``), resolved from the local Hugging Face cache
  (``huggingface_hub.snapshot_download(..., local_files_only=True)``, honouring ``HF_HOME`` and
  ``HF_HUB_OFFLINE``) and then loaded as a folder; a clear error says when it is not cached.

Rows of Arrow-backed sources are located as ``file[row]`` (``file:line`` for CSV/TSV), and have their
null-valued keys dropped (Arrow gives every row every column). Every source has a content sha256 (a
file's bytes; a folder's sorted file list with each file's sha256) that plans record and ``--resume``
re-checks. ``datasets`` and ``huggingface_hub`` are imported only for the sources that need them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import DataError, Diagnostic, Location

LINE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow"}
SUPPORTED = ", ".join(sorted({*LINE_FORMATS, *TABLE_FORMATS}))
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Source:
    """One ``--data`` source, resolved: what kind it is, where its files are, and which split it reads."""

    spec: str  # as given
    kind: str  # jsonl | json | csv | tsv | parquet | arrow | saved | folder
    path: str  # absolute path of the file or folder
    split: str | None = None
    hub_id: str | None = None
    revision: str | None = None

    @property
    def display(self) -> str:
        """Return the name diagnostics use: the path (files), or the Hub id."""
        return self.hub_id or self.path

    def summary(self) -> dict[str, Any]:
        """Return the JSON-safe description recorded in the plan."""
        return {"kind": self.kind, "split": self.split, "hub_id": self.hub_id, "revision": self.revision}


def file_sha256(path: str) -> str:
    """Return the hex sha256 of the file at ``path``; raises OSError when it cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(path: str) -> str:
    """Return the sha256 of a folder's content: its sorted relative file paths, each with its sha256.

    Hidden files and folders (``.cache``, ``.git`` ...) are left out. Raises OSError.
    """
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            full = os.path.join(root, name)
            h.update(f"{os.path.relpath(full, path)}\0{file_sha256(full)}\n".encode())
    return h.hexdigest()


def source_sha256(path: str) -> str:
    """Return the content sha256 of a data file or folder; raises OSError when it cannot be read."""
    return tree_sha256(path) if os.path.isdir(path) else file_sha256(path)


def _json_kind(path: str) -> str:
    """Return ``json`` for a file holding one JSON array, ``jsonl`` for JSON lines named ``.json``."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    return "json" if head.startswith(b"[") else "jsonl"


def resolve_source(spec: str, split: str | None = None) -> Source:
    """Return the :class:`Source` of a ``--data`` argument.

    Raises DataError (exit 2) for a missing file, an unsupported extension, or a Hub id that is
    not in the local cache.
    """
    path = os.path.abspath(os.path.expanduser(spec))
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext in LINE_FORMATS:
            return Source(spec, _json_kind(path) if ext == ".json" else "jsonl", path, split)
        if ext in TABLE_FORMATS:
            return Source(spec, TABLE_FORMATS[ext], path, split)
        raise DataError([Diagnostic("data-unknown-extension", f"cannot read {spec}: unknown data file type "
                                    f"`{ext or '(none)'}`", Location("--data"), f"supported: {SUPPORTED}, a dataset "
                                    "folder, or a Hub dataset id")])
    if os.path.isdir(path):
        saved = any(os.path.isfile(os.path.join(path, n)) for n in ("dataset_dict.json", "state.json"))
        return Source(spec, "saved" if saved else "folder", path, split)
    ext = os.path.splitext(spec)[1].lower()
    if _REPO_ID.match(spec) and ext not in LINE_FORMATS and ext not in TABLE_FORMATS:
        return _hub_source(spec, split)
    raise DataError([Diagnostic("data-missing-file", f"data file {spec} does not exist", Location("--data"))])


def _hub_source(repo_id: str, split: str | None) -> Source:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from .hub import cache_dir

    try:
        folder = snapshot_download(repo_id, repo_type="dataset", local_files_only=True, cache_dir=cache_dir())
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise DataError([Diagnostic(
            "data-not-cached", f"the Hub dataset {repo_id} is not in the local Hugging Face cache ({cache_dir()})",
            Location("--data"), f"download it where there is network (`hf download {repo_id} --repo-type dataset`) "
            "and copy the cache, or give a local file or folder")]) from None
    revision = os.path.basename(os.path.normpath(folder))
    return Source(repo_id, "folder", folder, split, hub_id=repo_id, revision=revision)


# ------------------------------------------------------------------------------------------ rows

Row = tuple[Location, "dict | Diagnostic"]


def _jsonl_rows(path: str) -> Iterator[Row]:
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            lines = fh.read().split("\n")
        except UnicodeDecodeError as exc:
            yield Location(path), Diagnostic("data-bad-encoding", f"not UTF-8 text: {exc.reason} at byte {exc.start}",
                                             Location(path))
            return
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = Location(path, lineno, 1)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, Diagnostic("data-bad-json", f"invalid JSON: {exc.msg}", Location(path, lineno, exc.colno),
                                    "each line must be one JSON object")
            continue
        if not isinstance(record, dict):
            yield where, Diagnostic("data-not-object", f"expected a JSON object, got {type(record).__name__}", where,
                                    "each line must be one JSON object")
            continue
        yield where, record


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _json_array_rows(path: str) -> Iterator[Row]:
    """Yield the objects of a JSON array file, each located at the line:col where it starts."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        yield Location(path), Diagnostic("data-bad-encoding", f"not UTF-8 text: {exc.reason}", Location(path))
        return
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    i = ws.match(text, text.index("[") + 1).end()  # type: ignore[union-attr]
    if text[i:i + 1] == "]":
        return
    while True:
        where = Location(path, *_position(text, i))
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            yield where, Diagnostic("data-bad-json", f"invalid JSON: {exc.msg}", Location(path, exc.lineno, exc.colno),
                                    "the file must be one JSON array of objects")
            return
        if isinstance(value, dict):
            yield where, value
        else:
            yield where, Diagnostic("data-not-object", f"expected a JSON object, got {type(value).__name__}", where,
                                    "the file must be one JSON array of objects")
        i = ws.match(text, i).end()  # type: ignore[union-attr]
        if text[i:i + 1] == ",":
            i = ws.match(text, i + 1).end()  # type: ignore[union-attr]
            continue
        if text[i:i + 1] != "]":
            yield Location(path, *_position(text, i)), Diagnostic(
                "data-bad-json", "invalid JSON: expected ',' or ']' after an array element",
                Location(path, *_position(text, i)), "the file must be one JSON array of objects")
        return


def datasets_cache_dir() -> str:
    """Return the ``datasets`` cache in effect (``HF_DATASETS_CACHE``, else ``HF_HOME/datasets``), read at each call."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return os.environ["HF_DATASETS_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "datasets")


def load_table(source: Source) -> Any:
    """Return the ``datasets.Dataset`` of an Arrow-backed source (the chosen split).

    Raises DataError when ``datasets`` is missing, the data cannot be read, or the split does not exist.
    """
    try:
        import datasets
    except ImportError:
        raise DataError([Diagnostic("data-needs-datasets", f"reading {source.display} needs the `datasets` package",
                                    Location("--data"), "pip install 'finetune-policy[train]'")]) from None
    datasets.disable_progress_bars()
    try:
        if source.kind == "saved":
            loaded = datasets.load_from_disk(source.path)
        elif source.kind == "folder":
            loaded = datasets.load_dataset(source.path, cache_dir=datasets_cache_dir())
        else:
            builder = "csv" if source.kind in ("csv", "tsv") else source.kind
            kwargs = {"delimiter": "\t"} if source.kind == "tsv" else {}
            loaded = datasets.load_dataset(builder, data_files=source.path, cache_dir=datasets_cache_dir(), **kwargs)
    except Exception as exc:  # noqa: BLE001 - datasets/pyarrow raise many types for unreadable data
        raise DataError([Diagnostic("data-unreadable", f"cannot read {source.display}: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}", Location(source.display),
                                    "check the file's format")]) from None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        split = source.split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
        if split not in loaded:
            raise DataError([Diagnostic("data-no-split", f"{source.display} has no split "
                                        f"`{source.split or 'train'}`; splits: {', '.join(names)}",
                                        Location("--data-split"), "choose one with --data-split")])
        source.split = split
        return loaded[split]
    return loaded


def iter_rows(source: Source) -> Iterator[Row]:
    """Yield ``(location, record)`` for every row of ``source``, or ``(location, Diagnostic)`` for a bad one.

    Raises DataError when the source as a whole cannot be read.
    """
    if source.kind == "jsonl":
        yield from _jsonl_rows(source.path)
        return
    if source.kind == "json":
        yield from _json_array_rows(source.path)
        return
    table = load_table(source)
    csv_like = source.kind in ("csv", "tsv")
    for i, row in enumerate(table):
        where = Location(source.display, i + 2, 1) if csv_like else Location(f"{source.display}[{i}]")
        yield where, dict(row)
