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
from .grid import Grid, GridEvaluator, build_grid, point_weight
from .versions import bump_diagnostics

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
    """The semantic impact of a change over a grid of fact sets (every count weighted by GPU class)."""

    grid: Grid
    total: int = 0
    flips: Counter = field(default_factory=Counter)  # feasibility / method / rank / validity / rule-only / messages
    transitions: Counter = field(default_factory=Counter)  # (old label, new label) -> weighted count
    messages: Counter = field(default_factory=Counter)  # ("+" | "-", "warning" | "note", code) -> weighted count
    examples: list[dict] = field(default_factory=list)
    old_valid: int = 0  # fact sets valid under the old policy (its domain)
    domain_flips: int = 0  # verdict flips among them
    seconds: float = 0.0
    evaluations: int = 0  # memory points derived, both policies
    checks: int = 0  # rule checks run, both policies

    @property
    def verdict_flips(self) -> int:
        """Return the weighted number of fact sets whose verdict changed."""
        return self.flips["feasibility"] + self.flips["method"] + self.flips["rank"] + self.flips["validity"]

    @property
    def message_flips(self) -> int:
        """Return the weighted number of fact sets whose verdict is the same but whose warnings or notes changed."""
        return self.flips["messages"]

    @property
    def domain_flip_percent(self) -> float:
        """Return the verdict flips inside the old policy's domain, in percent of that domain."""
        return 100.0 * self.domain_flips / self.old_valid if self.old_valid else 0.0


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
                "message_flips": imp.message_flips, "by_kind": dict(imp.flips),
                "domain": {"fact_sets": imp.old_valid, "verdict_flips": imp.domain_flips,
                           "percent": round(imp.domain_flip_percent, 4)},
                "transitions": [{"old": o, "new": n, "count": c} for (o, n), c in imp.transitions.most_common()],
                "messages": [{"change": "added" if sign == "+" else "removed", "kind": kind, "code": code,
                              "count": c} for (sign, kind, code), c in imp.messages.most_common()],
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
    """Return the changed fields of two mappings, one line each; nested mappings and lists field by field."""
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        name = f"{prefix}{key}"
        if key not in old:
            out.append(f"{name} added ({_show(new[key])})")
        elif key not in new:
            out.append(f"{name} removed (was {_show(old[key])})")
        elif old[key] != new[key]:
            out.extend(_value_changes(old[key], new[key], name))
    return out


def _value_changes(a: Any, b: Any, name: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return _dict_changes(a, b, name + ".")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out: list[str] = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                out.extend(_value_changes(x, y, f"{name}[{i}]"))
        return out
    return [f"{name}: {_show(a)} -> {_show(b)}"]


def condition_text(cond: Any) -> str:
    """Return a condition in plain data (``to_data`` form) as one readable line, thresholds by name."""
    if isinstance(cond, list):
        return " and ".join(_grouped(c) for c in cond) if cond else "always"
    if not isinstance(cond, dict):
        return str(cond)
    if "all" in cond:
        return condition_text(cond["all"])
    if "any" in cond:
        return " or ".join(_grouped(c) for c in cond["any"]) if cond["any"] else "never"
    if "not" in cond:
        return f"not {_grouped(cond['not'])}"
    value = cond.get("value")
    if isinstance(value, dict) and "threshold" in value:
        rhs = "{" + str(value["threshold"]) + "}"
    elif isinstance(value, dict) and "fact" in value:
        rhs = str(value["fact"])
    else:
        rhs = json.dumps(value, default=str) if isinstance(value, (list, bool)) or value is None else _number(value)
    return f"{cond.get('fact')} {cond.get('op')} {rhs}"


def _grouped(cond: Any) -> str:
    text = condition_text(cond)
    return f"({text})" if isinstance(cond, dict) and ("any" in cond or "all" in cond) and " " in text else text


def _items(when: Any) -> list[str]:
    if isinstance(when, dict) and "all" in when:
        when = when["all"]
    return [condition_text(c) for c in when] if isinstance(when, list) else [condition_text(when)]


def rule_changes(old: dict, new: dict) -> list[str]:
    """Return a rule's changes field by field: conditions as removed/added comparisons, the rest by path."""
    out: list[str] = []
    a, b = _items(old.get("when", [])), _items(new.get("when", []))
    if a != b:
        removed = [c for c in a if c not in b]
        added = [c for c in b if c not in a]
        if not removed and not added:
            out.append("when: conditions reordered")
        out.extend(f"when: - {c}" for c in removed)
        out.extend(f"when: + {c}" for c in added)
    rest_a = {k: v for k, v in old.items() if k != "when"}
    rest_b = {k: v for k, v in new.items() if k != "when"}
    out.extend(_dict_changes(rest_a, rest_b))
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
            rule = new_rules[rid]
            changes.append(Change("rule", rid, "added", ([f"at {loc}"] if loc else []) + [
                f"{rule['kind']}, priority {rule['priority']}, when {condition_text(rule['when'])}"]
                + ([f"then {_show(rule['then'])}"] if rule.get("then") else [])))
        elif rid not in new_rules:
            changes.append(Change("rule", rid, "removed", [f"was: when {condition_text(old_rules[rid]['when'])}"]))
        elif old_rules[rid] != new_rules[rid]:
            changes.append(Change("rule", rid, "modified", rule_changes(old_rules[rid], new_rules[rid])))
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

def _kind(a: tuple | None, b: tuple | None, rule_a: str | None, rule_b: str | None) -> str | None:
    """Return how two outcomes differ: feasibility, method, rank, rule-only, or None. A label is (method, rank)."""
    if (a is None) != (b is None):
        return "feasibility"
    if a is not None and b is not None:
        if a[0] != b[0]:
            return "method"
        if a[1] != b[1]:
            return "rank"
    if rule_a != rule_b:
        return "rule-only"
    return None


def _label(label: tuple | None) -> str:
    if label is None:
        return "infeasible"
    method, rank = label
    return f"{method} r={rank}" if rank else str(method)


def _lowest(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


def semantic_impact(old: Any, new: Any, grid: Grid | None = None, max_examples: int = 8,
                    spot_checks: int = 20) -> Impact:
    """Evaluate both policies on the grid and return the weighted flip counts, transitions and examples.

    Verdicts (feasibility, method, rank), the deciding rule and the warning and note codes are
    compared at every fact set. Raises GridMismatch (exit 4) if the grid evaluation disagrees with a
    full decision on a spot check.
    """
    t0 = time.perf_counter()
    grid = grid or build_grid([old, new])
    ga, gb = GridEvaluator(old), GridEvaluator(new)
    a = ga.evaluate(grid, spot_checks)
    b = gb.evaluate(grid, spot_checks)
    impact = Impact(grid)
    impact.evaluations = ga.evaluations + gb.evaluations
    impact.checks = ga.checks + gb.checks
    n = grid.rule_size
    seen: set = set()

    def example(mem: tuple, index: int, kind: str, key: Any) -> None:
        if key in seen or len(impact.examples) >= max_examples:
            return
        seen.add(key)
        facts = grid.facts(mem, index)
        oa, ob = ga.outcome(grid, a, mem, index), gb.outcome(grid, b, mem, index)
        impact.examples.append({
            "facts": facts, "text": facts_text(facts), "kind": kind, "old": oa.label(), "old_rule": oa.rule,
            "new": ob.label(), "new_rule": ob.rule,
            "warnings": {"added": sorted(ob.warnings - oa.warnings), "removed": sorted(oa.warnings - ob.warnings)},
            "notes": {"added": sorted(ob.notes - oa.notes), "removed": sorted(oa.notes - ob.notes)}})

    for mem in grid.memory_points():
        w = point_weight(grid, mem)
        impact.total += w * n
        ra, rb = a[mem], b[mem]
        if ra.error is None:
            impact.old_valid += w * n
        if ra.error or rb.error:
            if ra.error != rb.error:
                impact.flips["validity"] += w * n
                if ra.error is None:
                    impact.domain_flips += w * n
                la = f"invalid ({ra.error})" if ra.error else "valid"
                lb = f"invalid ({rb.error})" if rb.error else "valid"
                impact.transitions[(la, lb)] += w * n
                example(mem, 0, "validity", (la, lb))
            continue
        verdict_changed = 0
        for r1, m1 in ra.chosen.items():
            for r2, m2 in rb.chosen.items():
                both = m1 & m2
                if not both:
                    continue
                l1, l2 = ra.labels.get(r1), rb.labels.get(r2)
                kind = _kind(l1, l2, r1, r2)
                if kind is None:
                    continue
                count = both.bit_count()
                impact.flips[kind] += w * count
                if kind == "rule-only":
                    continue
                verdict_changed |= both
                impact.domain_flips += w * count
                transition = (_label(l1), _label(l2))
                impact.transitions[transition] += w * count
                example(mem, _lowest(both), kind, transition)
        message_changed = 0
        for code in set(ra.codes) | set(rb.codes):
            ma, mb = ra.codes.get(code, 0), rb.codes.get(code, 0)
            if ma == mb:
                continue
            kind, name = code.split(":", 1)
            kind = "warning" if kind == "warn" else "note"
            for sign, mask in (("+", mb & ~ma), ("-", ma & ~mb)):
                if mask:
                    impact.messages[(sign, kind, name)] += w * mask.bit_count()
                    only = mask & ~verdict_changed
                    if only:
                        example(mem, _lowest(only), "messages", (sign, kind, name))
            message_changed |= ma ^ mb
        impact.flips["messages"] += w * (message_changed & ~verdict_changed).bit_count()
    impact.seconds = time.perf_counter() - t0
    return impact


def version_diagnostics(old: Any, new: Any, impact: Impact | None) -> list[Diagnostic]:
    """Return the versioning errors of the change from ``old`` to ``new`` (``versions.bump_diagnostics``).

    The bump is computed (``versions.required_bump``): MAJOR for removed use cases, GPUs, thresholds
    or defaulted facts, or verdict flips in the old domain above the policy's tolerance; MINOR for
    other flips and verdict-relevant changes; PATCH for texts and advice. A smaller bump is an error.
    """
    return bump_diagnostics(old, new, impact, Location(new.origin))


def diff_policies(old_spec: str, new_spec: str, semantic: bool = True) -> DiffReport:
    """Return the textual changes, semantic impact and version diagnostics of OLD -> NEW.

    Raises PolicyError when either policy cannot be loaded and GridMismatch on an evaluator bug.
    """
    old, new = load_any(old_spec), load_any(new_spec)
    changes = textual_changes(old, new)
    impact = semantic_impact(old, new) if semantic and old.semantic_sha256 != new.semantic_sha256 else None
    return DiffReport(old, new, changes, impact, version_diagnostics(old, new, impact))


def _message_text(ex: dict) -> str:
    parts: list[str] = []
    for kind in ("warnings", "notes"):
        word = kind[:-1]
        parts.extend(f"+{word} {c}" for c in ex[kind]["added"])
        parts.extend(f"-{word} {c}" for c in ex[kind]["removed"])
    return ("; " + ", ".join(parts)) if parts else ""


def render_diff_text(report: DiffReport) -> str:
    """Return the diff report as text."""
    o, n = report.old, report.new
    lines = [f"{o.name} {o.version} ({o.origin}) -> {n.name} {n.version} ({n.origin})"]
    if o.semantic_sha256 == n.semantic_sha256:
        lines.append("same meaning (semantic hash " + n.semantic_sha256[:12] + "): no verdict can differ")
    lines.append(f"textual changes ({len(report.changes)}):")
    for c in report.changes:
        if c.section == "rule" and len(c.details) > 1:
            lines.append(f"  rule `{c.name}` {c.change}:")
            lines.extend(f"    {d}" for d in c.details)
        else:
            lines.append(f"  {c.text()}")
    imp = report.impact
    if imp is not None:
        pct = 100.0 * imp.verdict_flips / imp.total if imp.total else 0.0
        lines.append(f"semantic impact over {imp.total:,} fact sets ({imp.grid.describe()}):")
        lines.append(f"  {imp.verdict_flips:,} ({pct:.2f}%) change verdict: {imp.flips['method']:,} method, "
                     f"{imp.flips['rank']:,} rank, {imp.flips['feasibility']:,} feasibility"
                     + (f", {imp.flips['validity']:,} valid in one policy only" if imp.flips["validity"] else "")
                     + f"; {imp.flips['rule-only']:,} more change only the deciding rule")
        mpct = 100.0 * imp.message_flips / imp.total if imp.total else 0.0
        lines.append(f"  {imp.message_flips:,} ({mpct:.2f}%) more keep their verdict but change warnings or notes")
        if imp.messages:
            lines.append("  warnings and notes (added + / removed -: fact sets):")
            for (sign, kind, code), count in imp.messages.most_common(10):
                lines.append(f"    {sign}{kind} {code}: {count:,}")
        if imp.transitions:
            lines.append("  transitions (old -> new: fact sets):")
            for (a, b), count in imp.transitions.most_common(10):
                lines.append(f"    {a} -> {b}: {count:,}")
        if imp.examples:
            lines.append("  examples:")
            for ex in imp.examples:
                lines.append(f"    {ex['text']}")
                lines.append(f"      {ex['old']} ({ex['old_rule'] or 'no rule'}) -> {ex['new']} "
                             f"({ex['new_rule'] or 'no rule'})" + _message_text(ex))
    for d in report.diagnostics:
        lines.append(d.render())
    errors = sum(1 for d in report.diagnostics if d.severity == "error")
    lines.append(f"version: {o.version} -> {n.version}: " + ("FAIL" if errors else "ok"))
    return "\n".join(lines)
