"""The policy language: loading, validation and compilation of versioned YAML policies."""

from __future__ import annotations

import os
from functools import lru_cache

from ..paths import default_policy
from .compiler import STAGES, CompileContext, PolicyError, compile_files, read_policy_files, run_stages
from .model import Policy, Rule, snapshot_sha256

__all__ = ["Policy", "PolicyError", "Rule", "STAGES", "CompileContext", "default_policy_path", "load_policy",
           "load_policy_files", "run_stages", "snapshot_sha256"]


def default_policy_path() -> str:
    """Return the path of the bundled default policy (a bundle directory)."""
    return str(default_policy())


def load_policy(path: str | os.PathLike | None = None) -> Policy:
    """Load, validate and compile the policy at ``path`` (file or bundle dir; None = bundled default).

    Raises PolicyError carrying every diagnostic found, with file:line:col.
    """
    files, root, origin, reader = read_policy_files(path if path is not None else default_policy())
    return compile_files(files, root, origin, reader)


@lru_cache(maxsize=64)
def _compile_snapshot(files: tuple, root: str, origin: str) -> Policy:
    return compile_files(dict(files), root, origin)


def load_policy_files(files: dict[str, str], root: str, origin: str = "<snapshot>") -> Policy:
    """Compile a policy from in-memory files (a snapshot); raises PolicyError on invalid content."""
    return _compile_snapshot(tuple(sorted(files.items())), root, origin)
