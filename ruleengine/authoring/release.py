"""Releasing a policy version: the lock entry, the CHANGELOG entry and the bump the change needs.

A released version is recorded three times, next to ``versions.lock``: its semantic hash in the
lock, its snapshot in ``releases/<name>/<version>.yaml`` (the whole policy as one file) and a
section in ``CHANGELOG.md``. A new version is compared with the snapshot of the highest locked
version below it: ``decide diff``'s semantic impact computes the bump the change needs
(``versions.required_bump``), and a smaller bump, or a missing CHANGELOG section, is an error of
``decide check`` that ``decide check --update-lock`` refuses to lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..diagnostics import Diagnostic, Location
from .versions import (
    bump_diagnostics,
    changelog_diagnostics,
    lock_diagnostics,
    previous_version,
    read_lock,
    release_path,
    update_lock,
    write_release,
)


def release_diagnostics(policy: Any, lock_path: str, version_loc: Location) -> tuple[list[Diagnostic], str]:
    """Return the version diagnostics of ``policy`` against the lock, its CHANGELOG and its previous release.

    Returns (diagnostics, provenance text). Raises DiagnosticError for a malformed lock and
    PolicyError when a release snapshot cannot be loaded.
    """
    from ..policy import load_policy
    from .diff import semantic_impact

    lock = read_lock(lock_path) if Path(lock_path).exists() else {}
    diags = lock_diagnostics(policy, lock, lock_path, version_loc)
    diags += changelog_diagnostics(policy, lock_path, version_loc)
    how = "exact (lock and CHANGELOG)"
    if lock.get(policy.name, {}).get(policy.version) is not None:
        return diags, how + f"; {policy.version} is locked"
    prev = previous_version(lock, policy.name, policy.version)
    if prev is None:
        return diags, how + "; first version of this policy"
    snapshot = release_path(lock_path, policy.name, prev)
    if not snapshot.exists():
        diags.append(Diagnostic(
            "version-bump-unverified", f"no snapshot of the previous release {policy.name} {prev} "
            f"({snapshot}): the bump {prev} -> {policy.version} cannot be computed", version_loc,
            f"restore it (`decide check --update-lock` on {prev} writes it) to verify the bump", "warning"))
        return diags, how + f"; bump not verified (no snapshot of {prev})"
    old = load_policy(str(snapshot))
    if old.semantic_sha256 != lock[policy.name][prev]:
        diags.append(Diagnostic(
            "release-snapshot-mismatch", f"{snapshot} does not hash to the locked {policy.name} {prev} "
            f"({old.semantic_sha256[:12]} != {lock[policy.name][prev][:12]})", version_loc,
            "restore the snapshot from version control", "error"))
        return diags, how
    impact = semantic_impact(old, policy) if old.semantic_sha256 != policy.semantic_sha256 else None
    diags += bump_diagnostics(old, policy, impact, version_loc)
    grid = f" over {impact.total:,} fact sets" if impact is not None else ""
    return diags, how + f"; bump computed against release {prev}{grid}"


def lock_release(policy: Any, lock_path: str, version_loc: Location) -> tuple[bool, list[Diagnostic]]:
    """Record the policy's version in the lock and write its release snapshot, unless a version check fails.

    Returns (changed, diagnostics): nothing is written when ``release_diagnostics`` finds an error
    (a too-small bump, a missing CHANGELOG entry, the version locked with another hash).
    """
    diags, _ = release_diagnostics(policy, lock_path, version_loc)
    errors = [d for d in diags if d.severity == "error"]
    if errors:
        return False, errors
    changed, more = update_lock(policy, lock_path)
    if more:
        return False, more
    snapshot = release_path(lock_path, policy.name, policy.version)
    if changed or not snapshot.exists():
        write_release(policy, lock_path)
        changed = True
    return changed, []
