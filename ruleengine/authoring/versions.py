"""Policy versions: ``versions.lock`` maps policy name + version to its semantic hash.

A change that alters a policy's meaning (``Policy.semantic_sha256``: rules, thresholds, tables,
constants; not comments, file layout or rule order) must come with a new ``version``. The lock
file records the hash of every released version; ``decide check`` fails when the current
version is recorded with a different hash, and ``decide check --update-lock`` records it.

The lock is the first ``versions.lock`` found walking up from the policy's directory
(``policies/versions.lock`` for the bundled policies), or the one given by ``--lock``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from ..diagnostics import Diagnostic, DiagnosticError, Location
from ..yamlsafe import load_yaml_file

LOCK_NAME = "versions.lock"
LOCK_HEADER = """\
# Semantic hashes of released policy versions (Policy.semantic_sha256), per policy name.
# `decide check` fails when a policy's current version is listed here with a different hash:
# the policy changed without a version bump. After a reviewed change: bump `version`, add an
# entry to policies/CHANGELOG.md, then run `decide check --update-lock POLICY`.
"""
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?$")


def parse_version(text: str) -> tuple:
    """Return a sortable key for a semantic version; raises ValueError when ``text`` is not one.

    Pre-releases sort before their release (``1.1.0-rc.1`` < ``1.1.0``).
    """
    m = _SEMVER.match(str(text))
    if not m:
        raise ValueError(f"`{text}` is not a semantic version (MAJOR.MINOR.PATCH)")
    pre = m.group(4)
    pre_key: tuple = (1,) if pre is None else (0,) + tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) + (pre_key,)


def find_lock(policy_path: str | os.PathLike) -> Path | None:
    """Return the nearest ``versions.lock`` at or above the policy's directory, or None."""
    p = Path(policy_path).resolve()
    folder = p if p.is_dir() else p.parent
    for d in (folder, *folder.parents):
        candidate = d / LOCK_NAME
        if candidate.is_file():
            return candidate
    return None


def read_lock(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Return ``{policy name: {version: semantic sha256}}`` from a lock file.

    Raises DiagnosticError (located) when the file is not a valid lock.
    """
    doc = load_yaml_file(str(path))
    data = doc.data or {}
    policies = data.get("policies") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("lock_version") != 1 or not isinstance(policies, dict):
        raise DiagnosticError([Diagnostic("lock-bad-file", "a versions.lock holds `lock_version: 1` and `policies:`",
                                          Location(str(path), 1, 1), "regenerate it with `decide check --update-lock`")])
    out: dict[str, dict[str, str]] = {}
    diags = []
    for name, versions in policies.items():
        if not isinstance(versions, dict):
            diags.append(Diagnostic("lock-bad-entry", f"`{name}` must map versions to hashes", doc.loc(("policies", name))))
            continue
        for version, digest in versions.items():
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                diags.append(Diagnostic("lock-bad-entry", f"{name} {version}: expected a sha256 hex digest",
                                        doc.loc(("policies", name, version))))
                continue
            out.setdefault(str(name), {})[str(version)] = digest
    if diags:
        raise DiagnosticError(diags)
    return out


def write_lock(path: str | os.PathLike, entries: dict[str, dict[str, str]]) -> None:
    """Write the lock file (sorted by policy name and version)."""
    ordered: dict[str, Any] = {}
    for name in sorted(entries):
        versions = entries[name]
        ordered[name] = {v: versions[v] for v in sorted(versions, key=_version_sort)}
    text = LOCK_HEADER + yaml.safe_dump({"lock_version": 1, "policies": ordered}, sort_keys=False)
    Path(path).write_text(text, encoding="utf-8")


def _version_sort(v: str) -> tuple:
    try:
        return (0,) + parse_version(v)
    except ValueError:
        return (1, v)


def lock_diagnostics(policy: Any, lock: dict[str, dict[str, str]] | None, lock_path: str | None,
                     version_loc: Location) -> list[Diagnostic]:
    """Return the version diagnostics of ``policy`` against the lock entries.

    ``version-not-bumped`` (error): the current version is locked with another hash.
    ``version-older`` (warning): a higher version of this policy is already locked.
    ``version-unlocked`` (note): the current version is not in the lock yet.
    """
    if lock is None:
        return []
    versions = lock.get(policy.name, {})
    current = policy.semantic_sha256
    recorded = versions.get(policy.version)
    out: list[Diagnostic] = []
    if recorded is not None and recorded != current:
        out.append(Diagnostic(
            "version-not-bumped",
            f"policy `{policy.name}` changed but its version is still {policy.version}: {lock_path} records "
            f"semantic hash {recorded[:12]} for {policy.version}, the policy now hashes to {current[:12]}",
            version_loc, "bump `version` (e.g. " + _next_version(policy.version) + "), add an entry to "
            "policies/CHANGELOG.md, then run `decide check --update-lock`", "error"))
        return out
    try:
        mine = parse_version(policy.version)
        higher = [v for v in versions if _version_sort(v) > (0,) + mine]
    except ValueError:
        higher = []
    if higher and recorded is None:
        out.append(Diagnostic("version-older", f"version {policy.version} is lower than the locked "
                              f"{max(higher, key=_version_sort)} of `{policy.name}`", version_loc,
                              "versions only go up; use a version above every locked one", "warning"))
    if recorded is None:
        same = [v for v, h in versions.items() if h == current]
        extra = f" (same meaning as locked {same[0]})" if same else ""
        out.append(Diagnostic("version-unlocked", f"version {policy.version} of `{policy.name}` is not in "
                              f"{lock_path}{extra}", version_loc,
                              "record it with `decide check --update-lock` once the change is reviewed", "note"))
    return out


def _next_version(version: str) -> str:
    try:
        major, minor, _patch = (int(x) for x in version.split("-")[0].split("."))
    except ValueError:
        return "a higher version"
    return f"{major}.{minor + 1}.0"


def update_lock(policy: Any, lock_path: str | os.PathLike) -> tuple[bool, list[Diagnostic]]:
    """Record the policy's current version and hash in the lock (creating the file if needed).

    Returns (changed, diagnostics). Refuses (no write, a ``version-not-bumped`` error) when the
    version is already locked with a different hash. Raises DiagnosticError for a malformed lock.
    """
    path = Path(lock_path)
    entries = read_lock(path) if path.exists() else {}
    recorded = entries.get(policy.name, {}).get(policy.version)
    if recorded == policy.semantic_sha256:
        return False, []
    if recorded is not None:
        diags = lock_diagnostics(policy, entries, str(path), Location(str(path)))
        return False, [d for d in diags if d.severity == "error"]
    entries.setdefault(policy.name, {})[policy.version] = policy.semantic_sha256
    write_lock(path, entries)
    return True, []
