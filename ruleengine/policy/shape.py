"""Structural limits of a policy document, checked before its schema, and pruning after schema errors.

Before the schema: the document may nest at most ``MAX_DEPTH`` levels and a rule's conditions at most
``MAX_CONDITION_DEPTH`` (deeper ones would exhaust the validators' recursion; no policy needs them);
every number must be finite and lie within +-2**53, what durable-rules compares exactly
(``durable_host.ENGINE_LIMITS["integer_range"]``; a test keeps the two equal). A larger number is
never a meaningful GPU size, threshold or training setting.

After the schema: the parts with errors are *pruned* (a rule, a threshold, a table row, a GPU entry,
a defaults entry, a whole section of the wrong type) so that the later stages (resolve, check) still
run on the rest and report their errors in the same run. Names stay known (a pruned threshold can
still be referred to), so pruning causes no follow-up errors.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 80  # rules[i].when with MAX_CONDITION_DEPTH levels of all/any/not is 3 + 2 x 32 deep
MAX_CONDITION_DEPTH = 32
MAX_EXACT = 2**53
_NAMED = ("thresholds", "use_cases", "gpus")


def structure_errors(ctx: Any) -> tuple[set[tuple], set[tuple]]:
    """Record the structural errors of ``ctx.data``; return the paths nesting too deeply (to prune before
    the schema, whose validators recurse) and the paths of bad numbers (to prune after it)."""
    bad: set[tuple] = set()
    numbers: set[tuple] = set()
    rules = ctx.data.get("rules")
    skip: set[tuple] = set()
    if isinstance(rules, list):
        for i, rule in enumerate(rules):
            if isinstance(rule, dict) and "when" in rule:
                depth = _condition_depth(rule["when"])
                if depth > MAX_CONDITION_DEPTH:
                    path = ("rules", i, "when")
                    ctx.error("rule-too-deep", f"the conditions nest more than {MAX_CONDITION_DEPTH} levels deep",
                              path, "flatten them: `all` inside `all` (and `any` inside "
                              "`any`) means the same as one list")
                    bad.add(path)
                    skip.add(path)
    stack: list[tuple[Any, tuple]] = [(ctx.data, ())]
    while stack:
        value, path = stack.pop()
        if path in skip:
            continue
        if len(path) > MAX_DEPTH:
            ctx.error("policy-too-deep", f"the document nests more than {MAX_DEPTH} levels here", path,
                      "no policy section needs this depth")
            bad.add(path)
            continue
        if isinstance(value, dict):
            stack.extend((v, path + (k,)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, path + (i,)) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            ctx.error("number-not-finite", f"{value} is not a finite number", path,
                      "write a finite number (.inf and .nan cannot be compared or computed with)")
            numbers.add(path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_EXACT:
            shown = (f"{value:.4g}" if isinstance(value, float) else
                     str(value) if value.bit_length() <= 64 else f"an integer of about 2**{value.bit_length()}")
            ctx.error("number-out-of-range", f"{shown} is beyond +-2**53", path,
                      "no policy number is that large; check the unit (bytes instead of GiB?)")
            numbers.add(path)
    return bad, numbers


def hide_deep(ctx: Any, paths: set[tuple]) -> set[tuple]:
    """Replace the values at ``paths`` (too deep for the schema validators) by empty ones; return the units
    (first two path parts) whose schema diagnostics are then to be ignored and which are pruned later."""
    data = dict(ctx.data)
    units: set[tuple] = set()
    for path in paths:
        units.add(path[:2])
        node: Any = data
        parents = []
        for part in path[:-1]:
            parents.append((node, part))
            node = node[part]
        # copy the containers along the path, then empty the value at its end
        empty: Any = [] if isinstance(node, list) else {}
        replaced: Any = list(node) if isinstance(node, list) else dict(node)
        replaced[path[-1]] = [] if path[-1] == "when" else empty
        for parent, part in reversed(parents):
            parent_copy: Any = list(parent) if isinstance(parent, list) else dict(parent)
            parent_copy[part] = replaced
            replaced = parent_copy
        data = replaced
    ctx.data = data
    return units


def _condition_depth(cond: Any) -> int:
    """Return how many condition levels (lists, all, any, not) nest in ``cond``, iteratively."""
    deepest = 0
    stack = [(cond, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_CONDITION_DEPTH + 1:
            continue
        if isinstance(node, list):
            stack.extend((c, depth + 1) for c in node)
        elif isinstance(node, dict):
            for key in ("all", "any"):
                if isinstance(node.get(key), list):
                    stack.extend((c, depth + 1) for c in node[key])
            if "not" in node:
                stack.append((node["not"], depth + 1))
    return deepest


def prune(ctx: Any, paths: set[tuple]) -> None:
    """Replace ``ctx.data`` by a copy without the parts at ``paths`` (the units holding schema errors).

    Rules become None (indices, and so locations, are kept); thresholds, use cases and GPU entries
    keep their names and are listed in ``ctx.invalid`` (their checks are skipped); defaults entries and
    sections of the wrong type are dropped.
    """
    data: dict[str, Any] = dict(ctx.data)
    copied: set[str] = set()

    def section(name: str, kind: type) -> Any:
        if name not in copied:
            value: Any = data.get(name)
            if kind is list:
                data[name] = list(value) if isinstance(value, list) else []
            else:
                data[name] = dict(value) if isinstance(value, dict) else {}
            copied.add(name)
        return data[name]

    for path in sorted(paths, key=len):
        if not path:
            continue
        name = path[0]
        if name == "rules":
            if len(path) == 1 or not isinstance(data.get("rules"), list) or not isinstance(path[1], int):
                data["rules"] = []
                copied.add("rules")
                continue
            rules = section("rules", list)
            if path[1] < len(rules):
                rules[path[1]] = None
        elif name in _NAMED:
            if len(path) == 1 or not isinstance(data.get(name), dict):
                data.pop(name, None)
                continue
            entries = section(name, dict)
            ctx.invalid.setdefault(name, set()).add(path[1])
            if path[1] in entries and name == "gpus":
                entries[path[1]] = {}
        elif name == "defaults":
            if len(path) <= 2 or not isinstance(data.get("defaults"), dict):
                defaults = section("defaults", dict)
                if len(path) == 2:
                    defaults.pop(path[1], None)
                else:
                    data["defaults"] = {}
                continue
            defaults = section("defaults", dict)
            sub = defaults.get(path[1])
            if isinstance(sub, dict):
                sub = dict(sub)
                sub.pop(path[2], None)
                defaults[path[1]] = sub
            else:
                defaults.pop(path[1], None)
        elif name == "settings":
            data["settings"] = {}
        elif len(path) == 1 and name not in ("language", "name", "version", "include"):
            data.pop(name, None)  # a section of the wrong type (memory, cost, ...)
    ctx.data = data
