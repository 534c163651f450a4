"""`decide diff OLD NEW`: what changed in the text of two policies, and which verdicts it flips.

Textual changes compare the compiled policies section by section (rules by id, thresholds,
use-case rows, GPUs, defaults, memory and cost constants, settings). The semantic impact
evaluates both policies on a representative grid (``grid.build_grid``) and counts the fact sets
whose verdict (feasible, method, rank) differs, with concrete examples.

OLD and NEW are policy files, bundle directories, or ``REV:PATH`` to read a policy from git
(``HEAD:policies/default``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..diagnostics import Diagnostic, Location
from .analysis import facts_text
from .grid import Grid, GridEvaluator, Outcome, build_grid, point_facts, point_weight
from .versions import parse_version

SECTIONS = ("settings", "memory", "cost", "defaults")


@dataclass
class Change:
    """One textual change: what (section and name), how (added/removed/modified) and field details."""

    section: str
    name: str
    change: str
    details: list[str] = field(default_factory=list)

    def text(self) -> str:
        """Return the change as one line plus its details."""
        head = f"{self.section} `{self.name}` {self.change}" if self.name else f"{self.section} {self.change}"
        return head + (": " + "; ".join(self.details) if self.details else "")


@dataclass
class Impact:
    """The semantic impact of a change over a grid of fact sets."""

    grid: Grid
    total: int = 0
    flips: Counter = field(default_factory=Counter)  # feasibility / method / rank / rule-only -> weighted count
    transitions: Counter = field(default_factory=Counter)  # (old label, new label) -> weighted count
    examples: list[dict] = field(default_factory=list)
    changed_points: list[tuple] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verdict_flips(self) -> int:
        """Return the weighted number of fact sets whose verdict changed."""
        return self.flips["feasibility"] + self.flips["method"] + self.flips["rank"] + self.flips["validity"]


@dataclass
class DiffReport:
    """Everything `decide diff` reports."""

    old: Any
    new: Any
    changes: list[Change]
    impact: Impact | None
    diagnostics: list[Diagnostic]

    def to_dict(self) -> dict:
        """Return a JSON-safe report."""
        imp = self.impact
        return {
            "old": {"name": self.old.name, "version": self.old.version, "origin": self.old.origin,
                    "semantic_sha256": self.old.semantic_sha256},
            "new": {"name": self.new.name, "version": self.new.version, "origin": self.new.origin,
                    "semantic_sha256": self.new.semantic_sha256},
            "changes": [c.__dict__ for c in self.changes],
            "impact": None if imp is None else {
                "fact_sets": imp.total, "grid": imp.grid.describe(), "verdict_flips": imp.verdict_flips,
                "by_kind": dict(imp.flips),
                "transitions": [{"old": o, "new": n, "count": c} for (o, n), c in imp.transitions.most_common()],
                "examples": imp.examples, "seconds": round(imp.seconds, 3)},
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }


# --- loading -----------------------------------------------------------------------------------

def load_any(spec: str) -> Any:
    """Return the policy at a path, or at ``REV:PATH`` in git. Raises PolicyError when it cannot be loaded."""
    from ..policy import PolicyError, load_policy
    from ..policy.compiler import compile_files

    if os.path.exists(spec) or ":" not in spec or os.path.splitdrive(spec)[0]:
        return load_policy(spec)
    rev, path = spec.split(":", 1)
    path = path.rstrip("/") or "."

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    kind = (git("cat-file", "-t", f"{rev}:./{path}") or "").strip()
    if kind not in ("tree", "blob"):
        raise PolicyError([Diagnostic("policy-missing-file", f"`{spec}`: no such path at revision `{rev}` in git",
                                      Location(spec), "write REV:PATH with PATH relative to the current directory")])
    folder, root = (path, "policy.yaml") if kind == "tree" else (os.path.dirname(path), os.path.basename(path))

    def reader(name: str) -> str | None:
        return git("show", f"{rev}:./{os.path.join(folder, name) if folder else name}")

    text = reader(root)
    if text is None:
        raise PolicyError([Diagnostic("policy-missing-file", f"`{spec}` has no {root}", Location(spec))])
    return compile_files({root: text}, root, f"{rev}:{folder}", reader)


# --- textual changes ------------------------------------------------------------------------------

def _show(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


def _dict_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        name = f"{prefix}{key}"
        if key not in old:
            out.append(f"{name} added ({_show(new[key])})")
        elif key not in new:
            out.append(f"{name} removed (was {_show(old[key])})")
        elif old[key] != new[key]:
            if isinstance(old[key], dict) and isinstance(new[key], dict):
                out.extend(_dict_changes(old[key], new[key], name + "."))
            else:
                out.append(f"{name}: {_show(old[key])} -> {_show(new[key])}")
    return out


def textual_changes(old: Any, new: Any) -> list[Change]:
    """Return the changes between two policies: rules (by id), thresholds, use cases, GPUs, constants."""
    changes: list[Change] = []
    for attr in ("name", "version", "language"):
        if getattr(old, attr) != getattr(new, attr):
            changes.append(Change("policy", attr, "modified", [f"{getattr(old, attr)} -> {getattr(new, attr)}"]))
    old_rules = {r.id: r.to_data() for r in old.rules}
    new_rules = {r.id: r.to_data() for r in new.rules}
    for rid in sorted(set(old_rules) | set(new_rules)):
        if rid not in old_rules:
            loc = new.locations.get(f"rules.{rid}")
            changes.append(Change("rule", rid, "added", [f"at {loc}"] if loc else []))
        elif rid not in new_rules:
            changes.append(Change("rule", rid, "removed"))
        elif old_rules[rid] != new_rules[rid]:
            changes.append(Change("rule", rid, "modified", _dict_changes(old_rules[rid], new_rules[rid])))
    for section, label in (("thresholds", "threshold"), ("use_cases", "use case"), ("gpus", "GPU")):
        a, b = getattr(old, section), getattr(new, section)
        for key in sorted(set(a) | set(b)):
            if key not in a:
                changes.append(Change(label, key, "added", [_show(b[key])]))
            elif key not in b:
                changes.append(Change(label, key, "removed", [f"was {_show(a[key])}"]))
            elif a[key] != b[key]:
                details = (_dict_changes(a[key], b[key]) if isinstance(a[key], dict)
                           else [f"{_number(a[key])} -> {_number(b[key])}"])
                changes.append(Change(label, key, "modified", details))
    for section in SECTIONS:
        details = _dict_changes(getattr(old, section) or {}, getattr(new, section) or {})
        if details:
            changes.append(Change(section, "", "modified", details))
    return changes


# --- semantic impact ---------------------------------------------------------------------------

def _kind(a: Outcome, b: Outcome) -> str | None:
    if a.error or b.error:
        return None if a.error == b.error else "validity"
    if a.feasible != b.feasible:
        return "feasibility"
    if a.method != b.method:
        return "method"
    if a.rank != b.rank:
        return "rank"
    if a.rule != b.rule:
        return "rule-only"
    return None


def semantic_impact(old: Any, new: Any, grid: Grid | None = None, max_examples: int = 8) -> Impact:
    """Evaluate both policies on the grid and return the weighted flip counts, transitions and examples.

    Raises GridMismatch (exit 4) if the grid evaluation disagrees with a full decision on a spot check.
    """
    t0 = time.perf_counter()
    grid = grid or build_grid([old, new])
    a = GridEvaluator(old).outcomes(grid)
    b = GridEvaluator(new).outcomes(grid)
    impact = Impact(grid)
    seen_transitions: set = set()
    for key, oa in a.items():
        ob = b[key]
        w = point_weight(grid, key)
        impact.total += w
        kind = _kind(oa, ob)
        if kind is None:
            continue
        impact.flips[kind] += w
        if kind == "rule-only":
            continue
        impact.changed_points.append(key)
        transition = (oa.label(), ob.label())
        impact.transitions[transition] += w
        if transition not in seen_transitions and len(impact.examples) < max_examples:
            seen_transitions.add(transition)
            facts = point_facts(grid, key)
            impact.examples.append({"facts": facts, "text": facts_text(facts), "kind": kind,
                                    "old": oa.label(), "old_rule": oa.rule, "new": ob.label(), "new_rule": ob.rule})
    impact.seconds = time.perf_counter() - t0
    return impact


def version_diagnostics(old: Any, new: Any, impact: Impact | None) -> list[Diagnostic]:
    """Return the versioning problems of the change from ``old`` to ``new``.

    ``version-not-bumped`` (error): verdicts flip on the grid and the version is unchanged;
    ``version-not-bumped`` (warning): the meaning changed without verdict flips on the grid;
    ``version-regressed`` (error): the new version is lower; ``version-bump-too-small`` (warning):
    verdicts flip with only a patch bump (see docs/policy-language.md, Versioning).
    """
    loc = Location(new.origin)
    out: list[Diagnostic] = []
    same_meaning = old.semantic_sha256 == new.semantic_sha256
    flips = impact.verdict_flips if impact else 0
    try:
        vo, vn = parse_version(old.version), parse_version(new.version)
    except ValueError:
        return out
    if vn < vo:
        out.append(Diagnostic("version-regressed", f"version goes down: {old.version} -> {new.version}", loc,
                              "versions only go up", "error"))
    elif vn == vo and not same_meaning:
        if flips:
            out.append(Diagnostic("version-not-bumped", f"{flips} fact sets change verdict but the version is still "
                                  f"{new.version}", loc, "bump `version` (a verdict change is at least a minor bump), "
                                  "add a CHANGELOG entry and run `decide check --update-lock`", "error"))
        else:
            out.append(Diagnostic("version-not-bumped", "the policy's meaning changed (semantic hash) but the version "
                                  f"is still {new.version}; no verdict flips on the grid", loc,
                                  "bump the patch version at least", "warning"))
    elif flips and vn[:2] == vo[:2]:
        out.append(Diagnostic("version-bump-too-small", f"{flips} fact sets change verdict but only the patch "
                              f"version changed ({old.version} -> {new.version})", loc,
                              "a verdict change needs at least a minor bump", "warning"))
    return out


def diff_policies(old_spec: str, new_spec: str, semantic: bool = True) -> DiffReport:
    """Return the textual changes, semantic impact and version diagnostics of OLD -> NEW.

    Raises PolicyError when either policy cannot be loaded and GridMismatch on an evaluator bug.
    """
    old, new = load_any(old_spec), load_any(new_spec)
    changes = textual_changes(old, new)
    impact = semantic_impact(old, new) if semantic and old.semantic_sha256 != new.semantic_sha256 else None
    return DiffReport(old, new, changes, impact, version_diagnostics(old, new, impact))


def render_diff_text(report: DiffReport) -> str:
    """Return the diff report as text."""
    o, n = report.old, report.new
    lines = [f"{o.name} {o.version} ({o.origin}) -> {n.name} {n.version} ({n.origin})"]
    if o.semantic_sha256 == n.semantic_sha256:
        lines.append("same meaning (semantic hash " + n.semantic_sha256[:12] + "): no verdict can differ")
    lines.append(f"textual changes ({len(report.changes)}):")
    for c in report.changes:
        lines.append(f"  {c.text()}")
    imp = report.impact
    if imp is not None:
        pct = 100.0 * imp.verdict_flips / imp.total if imp.total else 0.0
        lines.append(f"semantic impact over {imp.total:,} fact sets ({imp.grid.describe()}):")
        lines.append(f"  {imp.verdict_flips:,} ({pct:.2f}%) change verdict: {imp.flips['method']:,} method, "
                     f"{imp.flips['rank']:,} rank, {imp.flips['feasibility']:,} feasibility"
                     + (f", {imp.flips['validity']:,} valid in one policy only" if imp.flips["validity"] else "")
                     + f"; {imp.flips['rule-only']:,} more change only the deciding rule")
        if imp.transitions:
            lines.append("  transitions (old -> new: fact sets):")
            for (a, b), count in imp.transitions.most_common(10):
                lines.append(f"    {a} -> {b}: {count:,}")
        if imp.examples:
            lines.append("  examples:")
            for ex in imp.examples:
                lines.append(f"    {ex['text']}")
                lines.append(f"      {ex['old']} ({ex['old_rule'] or 'no rule'}) -> {ex['new']} "
                             f"({ex['new_rule'] or 'no rule'})")
    for d in report.diagnostics:
        lines.append(d.render())
    errors = sum(1 for d in report.diagnostics if d.severity == "error")
    lines.append(f"version: {o.version} -> {n.version}: " + ("FAIL" if errors else "ok"))
    return "\n".join(lines)
