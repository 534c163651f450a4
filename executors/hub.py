"""Models by Hugging Face Hub id: resolved to a snapshot folder of the local cache.

``--model`` takes a directory or a Hub id (``meta-llama/Llama-3.2-1B``, optionally ``@revision``).
An id is looked up in the local cache first (``HF_HOME``/``HF_HUB_CACHE``, the layout
``models--org--name/snapshots/<commit>/`` that ``huggingface_hub`` writes); when it is not there
and ``HF_HUB_OFFLINE`` is not set, ``snapshot_download`` fetches the config, tokenizer and
safetensors weights. Offline, or without network, a missing model is a located error (exit 2)
naming the cache that was searched. ``huggingface_hub`` is imported only for Hub ids.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import Diagnostic, Location, PlanError

_REPO_ID = re.compile(r"^(?P<id>[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)(?:@(?P<rev>[\w./-]+))?$")
MODEL_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass
class ResolvedModel:
    """Where a ``--model`` argument points: a local folder, and the Hub id and commit when it came from the Hub."""

    path: str
    hub_id: str | None = None
    revision: str | None = None

    def summary(self) -> dict[str, str | None]:
        """Return the plan's record of where the model came from."""
        return {"hub_id": self.hub_id, "revision": self.revision, "source": "hub-cache" if self.hub_id else "local"}


def cache_dir() -> str:
    """Return the Hugging Face hub cache directory in effect (``HF_HUB_CACHE``, else ``HF_HOME/hub``).

    Read from the environment at each call (huggingface_hub reads it once, at import).
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def offline() -> bool:
    """Return True when ``HF_HUB_OFFLINE`` asks the Hub libraries not to use the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model(spec: str) -> ResolvedModel:
    """Return the local folder of ``spec``: the directory itself, or the cached snapshot of a Hub id.

    Raises PlanError (exit 2) when ``spec`` is neither an existing directory nor a Hub id, or when
    the Hub model is not cached and cannot be downloaded (offline, or no network).
    """
    local = os.path.abspath(os.path.expanduser(spec))
    if os.path.isdir(local):
        return ResolvedModel(local)
    match = _REPO_ID.match(spec)
    if not match or spec.startswith((".", "/", "~")) or os.sep + os.sep in spec:
        raise PlanError([Diagnostic("plan-no-model", f"no model directory at {spec}", Location("--model"),
                                    "give a model directory (config.json, weights, tokenizer) or a Hub id such as "
                                    "meta-llama/Llama-3.2-1B")])
    repo_id, revision = match.group("id"), match.group("rev")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True, cache_dir=cache_dir())
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        folder = None
    if folder is None and not offline():
        try:
            folder = snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_PATTERNS,
                                       cache_dir=cache_dir())
        except Exception:  # noqa: BLE001 - no network, gated model, unknown id: all mean "not available here"
            folder = None
    if folder is None or not os.path.isfile(os.path.join(folder, "config.json")):
        why = "HF_HUB_OFFLINE is set" if offline() else "it could not be downloaded"
        raise PlanError([Diagnostic(
            "plan-model-not-cached", f"the model {spec} is not in the local Hugging Face cache ({cache_dir()}) and "
            f"{why}", Location("--model"),
            f"download it where there is network (`hf download {repo_id}`) into this cache (HF_HOME), or give a local "
            "model directory")])
    return ResolvedModel(os.path.abspath(folder), repo_id, os.path.basename(os.path.normpath(folder)))
