"""Memory-model keys of earlier policies, still read by this engine: retired keys ignored, changed values converted.

A policy written for an earlier memory model (or a release snapshot of one, which `decide check`
compiles to compute a version bump) keeps compiling. The document stays as written, so its hashes
(the lock's) do not change; the compiler reports each key as a located warning saying what to write
instead (:func:`warnings`), and the memory model reads the upgraded form (:func:`upgraded`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

# (section, group, key) -> why the key no longer exists
RETIRED: dict[tuple[str, str, str], str] = {
    ("memory", "activations", "dora_per_output"):
        "DoRA's saved tensors are sized from the dtypes (memory model of default 1.2.0)",
    ("memory", "activations", "ia3_per_element"):
        "IA3's saved tensors are sized from the dtypes (memory model of default 1.2.0)",
}
# (section, group, key) -> {old value: new value}
CONVERTED: dict[tuple[str, str, str], dict[Any, Any]] = {
    ("memory", "sharding", "gather_root"): {True: "all", False: "none"},
}


def warnings(data: dict, warn: Callable[[str, str, tuple, str], None]) -> None:
    """Report every retired key and converted value in ``data`` (a merged policy document) via ``warn``.

    ``warn(code, message, path, help)`` is called once per key; ``data`` is not changed.
    """
    for (section, group, key), why in RETIRED.items():
        block = _block(data, section, group)
        if block is not None and key in block:
            warn("memory-key-retired", f"`{section}.{group}.{key}` is no longer used: {why}",
                 (section, group, key), "remove the key; this engine ignores it")
    for (section, group, key), table in CONVERTED.items():
        block = _block(data, section, group)
        new = _converted(table, block[key]) if block is not None and key in block else None
        if new is not None:
            warn("memory-value-converted", f"`{section}.{group}.{key}: {_yaml(block[key])}` is read as `{new}`",  # type: ignore[index]
                 (section, group, key), f"write `{key}: {new}`")


def upgraded(section: str, values: dict) -> dict:
    """Return a copy of the policy section ``section`` (e.g. ``memory``) as this engine reads it.

    Retired keys are dropped and changed values converted; a section needing neither is returned as is.
    """
    out = values
    for (name, group, key) in RETIRED:
        if name == section and key in (values.get(group) or {}):
            out = copy.deepcopy(values) if out is values else out
            del out[group][key]
    for (name, group, key), table in CONVERTED.items():
        if name != section or not isinstance(values.get(group), dict) or key not in values[group]:
            continue
        new = _converted(table, values[group][key])
        if new is not None:
            out = copy.deepcopy(values) if out is values else out
            out[group][key] = new
    return out


def _converted(table: dict[Any, Any], value: Any) -> Any:
    for old, new in table.items():
        if type(value) is type(old) and value == old:
            return new
    return None


def _block(data: dict, section: str, group: str) -> dict | None:
    block = data.get(section)
    block = block.get(group) if isinstance(block, dict) else None
    return block if isinstance(block, dict) else None


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
