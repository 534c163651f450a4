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


# --- the bump a change needs ----------------------------------------------------------------------

BUMPS = ("none", "patch", "minor", "major")
DEFAULT_MAJOR_FLIP_PERCENT = 10.0
RELEASES_DIR = "releases"
CHANGELOG_NAME = "CHANGELOG.md"


def version_bump(old: str, new: str) -> str:
    """Return the bump from version ``old`` to ``new``: none, patch, minor, major, or "down".

    Raises ValueError when either is not a semantic version. A pre-release counts as the bump of its
    release (``1.1.0`` -> ``1.2.0-rc.1`` is minor).
    """
    a, b = parse_version(old), parse_version(new)
    if b < a:
        return "down"
    if b[0] != a[0]:
        return "major"
    if b[1] != a[1]:
        return "minor"
    if b[2] != a[2] or b != a:
        return "patch"
    return "none"


def _verdict_data(policy: Any) -> dict:
    """Return what can change a verdict: the semantic data without texts, advice, advise rules and the properties
    rules waive (which change what `check --properties` accepts, not what is decided)."""
    from ..conditions import comparisons
    from ..policy.quantities import ENGINE_THRESHOLD_UNITS

    data = policy.semantic_data()
    data["rules"] = [{k: v for k, v in r.items() if k not in ("rationale", "source", "warn", "note", "waives")}
                     for r in data["rules"] if r.get("kind") != "advise"]
    selecting = {cmp.threshold for r in policy.select_rules for cmp in comparisons(r.when) if cmp.threshold}
    data["thresholds"] = {k: v for k, v in (data.get("thresholds") or {}).items()
                          if k in selecting or k in ENGINE_THRESHOLD_UNITS}
    data["use_cases"] = {k: {f: v for f, v in row.items() if f not in ("label", "notes", "source")}
                         for k, row in (data.get("use_cases") or {}).items()}
    data["gpus"] = {k: {f: v for f, v in (entry or {}).items() if f not in ("label", "source")}
                    for k, entry in (data.get("gpus") or {}).items()}
    defaults = dict(data.get("defaults") or {})
    defaults["methods"] = {m: {k: v for k, v in (spec or {}).items() if k != "why_not"}
                           for m, spec in (defaults.get("methods") or {}).items()}
    data["defaults"] = defaults
    return data


def _flat_keys(d: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in (d or {}).items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flat_keys(v, name + ".")
        else:
            out.add(name)
    return out


def required_bump(old: Any, new: Any, impact: Any | None) -> tuple[str, list[str]]:
    """Return the smallest bump the change ``old`` -> ``new`` needs, and why (docs/policy-language.md §11).

    major: a use case, GPU (or alias), threshold or defaulted fact removed, a new language, or verdict
    flips inside the old policy's domain above ``settings.major_flip_percent`` of it (default 10);
    minor: any other verdict flip, or any change that can alter a verdict (rules, thresholds, rows,
    GPUs, defaults, memory and cost constants, settings); patch: texts and advice only; none: the same
    meaning. ``impact`` is ``diff.semantic_impact(old, new)`` (None when not computed).
    """
    reasons: list[str] = []
    removed = [("use case", sorted(set(old.use_cases) - set(new.use_cases))),
               ("GPU", sorted(set(old.gpu_names()) - set(new.gpu_names()))),
               ("threshold", sorted(set(old.thresholds) - set(new.thresholds))),
               ("default fact", sorted(_flat_keys((old.defaults or {}).get("facts") or {})
                                       - _flat_keys((new.defaults or {}).get("facts") or {})))]
    for what, names in removed:
        if names:
            reasons.append(f"{what}{'s' if len(names) > 1 else ''} removed: " + ", ".join(f"`{n}`" for n in names))
    if old.language != new.language:
        reasons.append(f"language {old.language} -> {new.language}")
    tolerance = float(new.settings.get("major_flip_percent", DEFAULT_MAJOR_FLIP_PERCENT))
    if impact is not None and impact.domain_flips and impact.domain_flip_percent > tolerance:
        reasons.append(f"{impact.domain_flip_percent:.2f}% of the old policy's fact sets change verdict "
                       f"(more than settings.major_flip_percent = {tolerance:g}%)")
    if reasons:
        return "major", reasons
    if impact is not None and impact.verdict_flips:
        reasons.append(f"{impact.verdict_flips:,} fact sets change verdict")
    added = [("use case", sorted(set(new.use_cases) - set(old.use_cases))),
             ("GPU", sorted(set(new.gpus) - set(old.gpus))),
             ("rule", sorted({r.id for r in new.select_rules} - {r.id for r in old.select_rules}))]
    for what, names in added:
        if names:
            reasons.append(f"{what}{'s' if len(names) > 1 else ''} added: " + ", ".join(f"`{n}`" for n in names))
    if not reasons and _verdict_data(old) != _verdict_data(new):
        reasons.append("rules, thresholds, tables, defaults or constants that can alter a verdict changed")
    if reasons:
        return "minor", reasons
    if old.semantic_sha256 != new.semantic_sha256:
        return "patch", ["texts or advice changed"]
    return "none", []


def bump_diagnostics(old: Any, new: Any, impact: Any | None, loc: Location) -> list[Diagnostic]:
    """Return the version errors of ``old`` -> ``new``: a version that goes down, or a bump below the one needed.

    ``version-regressed`` (error), ``version-not-bumped`` (error: the meaning changed, the version did
    not), ``version-bump-too-small`` (error: e.g. a patch bump for a change that flips verdicts).
    """
    try:
        actual = version_bump(old.version, new.version)
    except ValueError:
        return []
    if actual == "down":
        return [Diagnostic("version-regressed", f"version goes down: {old.version} -> {new.version}", loc,
                           "versions only go up", "error")]
    needed, reasons = required_bump(old, new, impact)
    if BUMPS.index(actual) >= BUMPS.index(needed):
        return []
    why = "; ".join(reasons)
    if actual == "none":
        return [Diagnostic("version-not-bumped", f"the policy changed but its version is still {new.version}: {why}",
                           loc, f"bump `version` to {next_version(old.version, needed)} (a {needed.upper()} change), "
                           "add a CHANGELOG entry and run `decide check --update-lock`", "error")]
    return [Diagnostic("version-bump-too-small", f"{old.version} -> {new.version} is a {actual.upper()} bump but the "
                       f"change needs {needed.upper()}: {why}", loc,
                       f"use version {next_version(old.version, needed)} (docs/policy-language.md §11)", "error")]


def next_version(version: str, bump: str) -> str:
    """Return ``version`` bumped by ``bump`` (patch, minor or major); the input when it is not a version."""
    try:
        major, minor, patch = (int(x) for x in version.split("-")[0].split("."))
    except ValueError:
        return version
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def release_path(lock_path: str | os.PathLike, name: str, version: str) -> Path:
    """Return where the snapshot of released ``name`` ``version`` lives: ``releases/<name>/<version>.yaml``."""
    return Path(lock_path).parent / RELEASES_DIR / name / f"{version}.yaml"


def write_release(policy: Any, lock_path: str | os.PathLike) -> Path:
    """Write the policy as one self-contained YAML file beside the lock (the released version's snapshot)."""
    path = release_path(lock_path, policy.name, policy.version)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = os.path.relpath(Path(__file__).resolve().parents[2] / "schemas" / "policy-file.schema.json", path.parent)
    header = (f"# yaml-language-server: $schema={Path(schema).as_posix()}\n"
              f"# Snapshot of {policy.name} {policy.version} as released (semantic hash {policy.semantic_sha256}),\n"
              "# written by `decide check --update-lock`; `decide check` diffs the next version against it.\n")
    path.write_text(header + yaml.safe_dump(policy.dump_data(), sort_keys=False, allow_unicode=True, width=100),
                    encoding="utf-8")
    return path


def previous_version(lock: dict[str, dict[str, str]], name: str, version: str) -> str | None:
    """Return the highest version of ``name`` in the lock below ``version`` (None when there is none)."""
    try:
        mine = parse_version(version)
    except ValueError:
        return None
    below = [v for v in lock.get(name, {}) if _version_sort(v) < (0,) + mine]
    return max(below, key=_version_sort) if below else None


def changelog_diagnostics(policy: Any, lock_path: str | os.PathLike, version_loc: Location) -> list[Diagnostic]:
    """Return ``changelog-missing-entry`` (error) when CHANGELOG.md beside the lock has no section for this version.

    A section is a Markdown heading naming the policy and the version, e.g. ``## default 1.2.0``.
    """
    path = Path(lock_path).parent / CHANGELOG_NAME
    shown = _display(path)
    help_text = f"add a section `## {policy.name} {policy.version}` to {shown} saying what changed and why"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return [Diagnostic("changelog-missing-entry", f"{shown} does not exist (every locked version needs an entry)",
                           version_loc, help_text, "error")]
    pattern = re.compile(rf"^#{{1,6}}\s+{re.escape(policy.name)}\s+v?{re.escape(policy.version)}(\s|$)", re.M)
    if pattern.search(text):
        return []
    return [Diagnostic("changelog-missing-entry", f"{shown} has no entry for {policy.name} {policy.version}",
                       version_loc, help_text, "error")]


def _display(path: Path) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel
