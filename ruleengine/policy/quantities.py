"""Numbers with units in a policy: thresholds, literals in conditions and the GPU catalog.

* A threshold declares its ``unit`` from the fixed vocabulary (``ruleengine.units.UNITS``: GiB,
  params, examples, tokens, ms, requests/day, $, ...) and may be written in the same human forms as
  facts (``2GiB``, ``81559MiB``, ``11B``, ``100k``, ``200ms``, ``$2.5``, ``5%``).
* Every comparison of a fact with a threshold must use the fact's unit (``threshold-unit-mismatch``);
  a threshold without ``unit`` takes the unit of the facts it is compared with (``threshold-no-unit``
  warns, saying which), and two different ones are an error (``threshold-unit-conflict``).
* Values must be plausible for their unit and for the fact they are compared with
  (``threshold-implausible``, ``rule-value-implausible``): a GiB threshold of 2147483648 is bytes,
  a parameter threshold of 11 means 11B, a GPU of 81920 GiB is MiB. Zero is always plausible.
* GPU catalog entries: ``memory_gb`` is GiB, ``price_per_hour`` $/hour; both accept human forms and
  are checked the same way (``gpu-implausible``).
"""

from __future__ import annotations

from typing import Any

from ..diagnostics import did_you_mean
from ..units import UNITS, format_plain, parse_quantity, plausibility
from ..vocabulary import GPU_GIB, FactType

#: thresholds the engine reads itself, and their units (derive.py)
ENGINE_THRESHOLD_UNITS = {"unmerged_latency_overhead": "fraction", "multitask_temperature": "exponent"}
GPU_FIELDS = {"memory_gb": ("GiB", (1e-3, GPU_GIB[1])), "price_per_hour": ("$/hour", None),
              "tflops": ("count", (1e-3, 1e6))}


def resolve_thresholds(ctx: Any) -> None:
    """Parse every threshold (human forms in its declared unit) into ``ctx.thresholds``; record declared units."""
    for name, raw in (ctx.data.get("thresholds") or {}).items():
        path = ("thresholds", name)
        if name in ctx.invalid.get("thresholds", ()):
            ctx.thresholds[name] = 0.0
            continue
        unit = raw.get("unit") if isinstance(raw, dict) else None
        value = raw["value"] if isinstance(raw, dict) else raw
        if unit is not None and unit not in UNITS:
            ctx.error("threshold-unknown-unit", f"unit `{unit}` is not in the vocabulary; the threshold is checked as "
                      "if it had none", path + ("unit",), did_you_mean(unit, UNITS) + " (units: " + ", ".join(UNITS) + ")",
                      severity="warning")
            unit = None
        ctx.threshold_units[name] = unit
        try:
            number = parse_quantity(value, unit)
        except ValueError as exc:
            ctx.error("threshold-bad-value", str(exc), path + (("value",) if isinstance(raw, dict) else ()))
            ctx.invalid.setdefault("thresholds", set()).add(name)
            number = 0.0
        ctx.thresholds[name] = number


def literal(ctx: Any, fact: str, ft: FactType, item: Any, path: tuple) -> Any:
    """Return a numeric literal of a comparison as a number (human forms in the fact's unit), or None when bad.

    Records ``rule-type-mismatch`` for a value that is no number and ``rule-value-implausible`` for one
    outside the fact's plausible range.
    """
    if isinstance(item, bool) or not isinstance(item, (int, float, str)):
        ctx.error("rule-type-mismatch", f"`{fact}` is a number; {item!r} is not", path)
        return None
    try:
        number = parse_quantity(item, ft.unit or None)
    except ValueError as exc:
        ctx.error("rule-type-mismatch", f"`{fact}` is a number ({ft.unit or 'no unit'}); {exc}", path)
        return None
    if ft.unit and number != 0:
        why = plausibility(number, ft.unit, *(ft.plausible or (None, None)))
        if why:
            ctx.error("rule-value-implausible", f"`{fact}` compared with {why}", path,
                      f"`{fact}` is in {ft.unit}: {UNITS[ft.unit].description}")
    if isinstance(item, str):  # "13B" means the same as 13000000000
        return int(number) if float(number).is_integer() else number
    return item


def check_threshold_units(ctx: Any, uses: dict[str, list[tuple[str, tuple]]]) -> None:
    """Check every threshold's unit against the facts it is compared with, and its magnitude.

    ``uses`` maps a threshold to (fact, comparison path) pairs.
    """
    from ..vocabulary import vocabulary

    vocab = vocabulary("advise")
    for name in ctx.thresholds:
        if name in ctx.invalid.get("thresholds", ()):
            continue
        declared = ctx.threshold_units.get(name)
        facts = [(fact, path) for fact, path in uses.get(name, []) if fact in vocab and vocab[fact].unit]
        units = {vocab[fact].unit for fact, _ in facts}
        where = ("thresholds", name)
        if declared:
            for fact, path in facts:
                if vocab[fact].unit != declared:
                    ctx.error("threshold-unit-mismatch", f"`{fact}` is in {vocab[fact].unit} but threshold `{name}` "
                              f"is in {declared}", path + ("value",),
                              f"compare {fact} with a threshold in {vocab[fact].unit}" + _hint(fact, declared))
        elif len(units) > 1:
            ctx.error("threshold-unit-conflict", f"threshold `{name}` is compared with facts in different units ("
                      + ", ".join(f"{f}: {vocab[f].unit}" for f, _ in facts) + ")", where,
                      "use one threshold per unit", key=True)
        else:
            inferred = next(iter(units), None) or ENGINE_THRESHOLD_UNITS.get(name)
            fix = (f"write `{name}: {{value: {format_plain(ctx.thresholds[name])}, unit: {inferred}}}`" if inferred
                   else "declare `unit:`, one of " + ", ".join(UNITS))
            ctx.error("threshold-no-unit", f"threshold `{name}` declares no unit"
                      + (f"; it is compared as {inferred}" if inferred else ""), where, fix, key=True,
                      severity="warning")
            ctx.threshold_units[name] = inferred
        unit = ctx.threshold_units.get(name) or declared
        value = ctx.thresholds[name]
        if not unit or value == 0:
            continue
        ranges = [r for fact, _ in facts if vocab[fact].unit == unit and (r := vocab[fact].plausible) is not None]
        low = max((r[0] for r in ranges), default=None)
        high = min((r[1] for r in ranges), default=None)
        why = plausibility(value, unit, low, high)
        if why:
            raw = (ctx.data.get("thresholds") or {}).get(name)
            ctx.error("threshold-implausible", f"threshold `{name}`: {why}",
                      where + (("value",) if isinstance(raw, dict) else ()),
                      f"{unit}: {UNITS[unit].description}")


def _hint(fact: str, declared: str) -> str:
    if {fact, declared} == {"model.params_b", "params"}:
        return "; model.params_b counts billions: compare model.params with a params threshold"
    return ""


def parse_catalog(ctx: Any) -> None:
    """Parse the GPU catalog's numbers (human forms) in place and check their magnitudes."""
    gpus = ctx.data.get("gpus")
    if not isinstance(gpus, dict):
        return
    parsed: dict[str, Any] = {}
    for name, entry in gpus.items():
        if name in ctx.invalid.get("gpus", ()) or not isinstance(entry, dict):
            parsed[name] = entry
            continue
        entry = dict(entry)
        for key, (unit, rng) in GPU_FIELDS.items():
            if key not in entry:
                continue
            path = ("gpus", name, key)
            try:
                number = parse_quantity(entry[key], unit)
            except ValueError as exc:
                ctx.error("gpu-bad-value", f"GPU `{name}` {key}: {exc}", path)
                continue
            why = plausibility(number, unit, *(rng or (None, None)))
            if why:
                ctx.error("gpu-implausible", f"GPU `{name}` {key}: {why}", path,
                          f"{key} is in {unit}: {UNITS[unit].description}")
            if isinstance(entry[key], str):
                entry[key] = int(number) if float(number).is_integer() else number
        parsed[name] = entry
    ctx.data = {**ctx.data, "gpus": parsed}
