"""The compiled policy: rules with condition ASTs, tables and constants, plus its source snapshot."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..conditions import Condition, to_data
from ..diagnostics import Location

#: policy properties a rule may waive (``waives:``): where the rule is chosen, the property need not hold
WAIVABLE_PROPERTIES = ("more-data-keeps-capacity",)


@dataclass(frozen=True)
class Rule:
    """One rule. ``kind`` is "select" (chooses a method, first hit) or "advise" (warnings/notes, all hits)."""

    id: str
    kind: str
    priority: int
    when: Condition
    then: dict[str, Any]
    warn: tuple[dict, ...]
    note: tuple[dict, ...]
    rationale: str
    source: str
    location: Location
    order: int = 0  # position in (priority, id) order among rules of the same kind, 1-based
    waives: tuple[str, ...] = ()  # WAIVABLE_PROPERTIES this rule is allowed to break (decide check --properties)

    def to_data(self) -> dict:
        """Return the rule as plain data (canonical form used for hashing and dumping)."""
        data: dict[str, Any] = {"id": self.id, "kind": self.kind, "priority": self.priority,
                                "when": to_data(self.when)}
        if self.then:
            data["then"] = self.then
        if self.waives:
            data["waives"] = list(self.waives)
        if self.warn:
            data["warn"] = list(self.warn)
        if self.note:
            data["note"] = list(self.note)
        data["rationale"] = self.rationale
        if self.source:
            data["source"] = self.source
        return data


def snapshot_sha256(snapshot: dict) -> str:
    """Return the content hash of a policy snapshot ``{"root": name, "files": {name: text}}``.

    sha256 over canonical JSON (sorted keys, no whitespace, UTF-8) of ``root`` and ``files``.
    """
    canonical = json.dumps({"root": snapshot["root"], "files": snapshot["files"]}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Policy:
    """A loaded, validated and compiled policy. Treat it as immutable: hashes and rule lists are computed once."""

    name: str
    version: str
    language: str
    owner: str
    description: str
    settings: dict[str, Any]
    memory: dict[str, Any]
    cost: dict[str, Any]
    gpus: dict[str, dict]
    thresholds: dict[str, float]
    threshold_meta: dict[str, dict]
    defaults: dict[str, Any]
    use_cases: dict[str, dict]
    rules: list[Rule]
    root: str
    files: dict[str, str]
    origin: str
    locations: dict[str, Location] = field(default_factory=dict)  # "rules.<id>", "thresholds.<n>", ...

    @cached_property
    def sha256(self) -> str:
        """Return the content hash of the policy's files (see ``snapshot_sha256``); computed once."""
        return snapshot_sha256(self.snapshot())

    @property
    def short_hash(self) -> str:
        """Return the first 12 hex digits of the content hash."""
        return self.sha256[:12]

    def snapshot(self) -> dict:
        """Return a self-contained copy of the policy source: ``{"root", "files"}``."""
        return {"root": self.root, "files": dict(sorted(self.files.items()))}

    @cached_property
    def select_rules(self) -> list[Rule]:
        """Return the select rules in evaluation order (priority, then id)."""
        return [r for r in self.rules if r.kind == "select"]

    @cached_property
    def advise_rules(self) -> list[Rule]:
        """Return the advise rules in evaluation order (priority, then id)."""
        return [r for r in self.rules if r.kind == "advise"]

    def gpu_names(self) -> dict[str, str]:
        """Return every name ``hardware.gpu`` accepts, catalog names and aliases, mapped to the catalog name."""
        return gpu_names(self.gpus)

    def rule(self, rule_id: str) -> Rule:
        """Return the rule with this id; raises KeyError if there is none."""
        return self._rules_by_id[rule_id]

    @cached_property
    def _rules_by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}

    def semantic_data(self) -> dict:
        """Return the policy's meaning as canonical data: independent of file layout, comments and rule order."""
        return {
            "language": self.language, "name": self.name, "settings": self.settings,
            "memory": self.memory, "cost": self.cost, "gpus": self.gpus, "thresholds": self.thresholds,
            "defaults": self.defaults, "use_cases": self.use_cases,
            "rules": [r.to_data() for r in sorted(self.rules, key=lambda r: r.id)],
        }

    @cached_property
    def semantic_sha256(self) -> str:
        """Return the hash of ``semantic_data()``: equal for policies that decide identically by construction."""
        canonical = json.dumps(self.semantic_data(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def dump_data(self) -> dict:
        """Return the whole policy as one plain document (a single-file policy equivalent to this one), its
        sections in the canonical order of `decide fmt`."""
        data: dict[str, Any] = {"language": self.language, "name": self.name, "version": self.version}
        if self.owner:
            data["owner"] = self.owner
        if self.description:
            data["description"] = self.description
        for key in ("settings", "memory", "cost", "gpus"):
            value = getattr(self, key)
            if value:
                data[key] = value
        if self.thresholds:
            data["thresholds"] = {k: ({"value": v, **self.threshold_meta[k]} if self.threshold_meta.get(k) else v)
                                  for k, v in self.thresholds.items()}
        for key in ("defaults", "use_cases"):
            value = getattr(self, key)
            if value:
                data[key] = value
        data["rules"] = [r.to_data() for r in self.rules]
        return data


def gpu_names(gpus: dict[str, dict]) -> dict[str, str]:
    """Return ``{name or alias: catalog name}`` for a ``gpus:`` catalog (catalog names map to themselves).

    An alias that is also a catalog name, or that two entries claim, keeps its first meaning; the
    policy compiler reports both as errors, so a loaded policy never has them.
    """
    out = {name: name for name in gpus}
    for name, entry in gpus.items():
        for alias in (entry or {}).get("aliases") or ():
            out.setdefault(alias, name)
    return out
