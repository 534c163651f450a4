"""The per-method estimate table of a decision: memory breakdown, fit and cost of every method at its defaults."""

from __future__ import annotations

import dataclasses
from typing import Any

from .cost import CostConstants, estimate_cost
from .derive import Candidate, Derived
from .memory import breakdown


def architecture_dict(arch: Any) -> dict:
    """Return the architecture as a plain dict (a new dict each time; the conversion is cached per instance)."""
    if dataclasses.is_dataclass(arch) and not isinstance(arch, type):
        memo = arch.memo("as_dict") if hasattr(arch, "memo") else {}
        found = memo.get(None)
        if found is None:
            found = memo[None] = dataclasses.asdict(arch)
        return dict(found)
    return dict(arch)


def candidate_cost(cost_constants: CostConstants, derived: Derived, cand: Candidate, facts: dict) -> dict | None:
    """Return the cost (GPU-hours, dollars, ...) of training ``cand``, or None without TFLOP/s or data.

    Cost is linear in the tokens trained, so the cost of one token is computed once per candidate
    (candidates are shared by every decision at the same memory point) and scaled.
    """
    gpu = derived.gpu
    if not gpu.tflops:
        return None
    tokens = float(facts["data"]["examples"]) * float(facts["data"]["avg_tokens"])
    if tokens <= 0:  # no data given (decide estimate): no cost to state
        return None
    unit = cand.cache.get("unit_cost")
    if unit is None:
        unit = estimate_cost(derived.arch, cand.method_config(), cand.training_setup(gpu.count), tokens_total=1.0,
                             epochs=1.0, gpu_tflops=float(gpu.tflops), price_per_hour=float(gpu.price_per_hour or 0.0),
                             constants=cost_constants, trainable=cand.estimate.trainable_params)
        cand.cache["unit_cost"] = unit
    return unit.scaled_dict(tokens * float(cand.training.get("epochs", 1)))


def method_estimates(cost_constants: CostConstants, derived: Derived, facts: dict) -> dict[str, dict]:
    """Return, per method at its default configuration: the memory breakdown, fit, and cost when it fits.

    Each entry is a new dict; its ``memory`` breakdown is shared with other decisions at the same
    memory point and must not be changed (decisions are read-only records).
    """
    out: dict[str, dict] = {}
    for method, cand in derived.defaults.items():
        fixed = cand.cache.get("table_entry")
        if fixed is None:
            fixed = {"label": cand.label(), "fits": cand.fits, "usable_gb": round(cand.usable_gb, 3),
                     "headroom_gb": round(cand.headroom_gb, 3), "sharding": cand.training["sharding"],
                     "micro_batch_size": cand.training["micro_batch_size"], "inapplicable": cand.inapplicable or None,
                     "memory": cand.estimate.to_dict()}
            cand.cache["table_entry"] = fixed
        entry = fixed.copy()  # the memory breakdown is shared by every decision at this memory point: read-only
        entry["cost"] = candidate_cost(cost_constants, derived, cand, facts) if cand.fits else None
        out[method] = entry
    return out


def method_breakdowns(derived: Derived, names: tuple[str, ...]) -> dict[str, dict]:
    """Return, per method in ``names`` (at its default configuration), the estimate term by term.

    Each entry: ``label``, the ``settings`` the estimate is for (the ones the memory model chose,
    the settings ladder's included), ``fit_changes``, ``rows`` (component, term, detail, gib; they
    sum to ``total_gib``) and the architecture's ``moe`` facts. Raises KeyError for an unknown method.
    """
    out: dict[str, dict] = {}
    gpu = derived.gpu
    for name in names:
        cand = derived.defaults[name]
        if cand.inapplicable:
            out[name] = {"label": cand.label(), "fits": False, "inapplicable": cand.inapplicable, "rows": []}
            continue
        setup = cand.training_setup(gpu.count)
        rows = breakdown(derived.arch, cand.method_config(), setup, derived.constants)
        t = cand.training
        out[name] = {
            "label": cand.label(), "fits": cand.fits, "usable_gb": round(cand.usable_gb, 3),
            "settings": {"precision": t["precision"], "optimizer": t["optimizer"],
                         "micro_batch_size": t["micro_batch_size"],
                         "gradient_accumulation_steps": t.get("gradient_accumulation_steps", 1),
                         "seq_len": t["seq_len"], "gradient_checkpointing": t["gradient_checkpointing"],
                         "sharding": t["sharding"], "gpu_count": gpu.count},
            "fit_changes": list(cand.fit_changes),
            "rows": [{**r, "gib": round(float(r["gib"]), 4)} for r in rows],
            "total_gib": round(cand.estimate.total_gib, 4),
        }
    return out
