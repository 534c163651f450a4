"""``decide combine``: one adapter from several LoRA adapters of the same base, through peft.

Methods (peft ``add_weighted_adapter`` combination types):

* ``weighted``: exactly ``Σ wᵢ·ΔWᵢ`` (peft ``cat``: the ranks are stacked, rank = Σ rᵢ); default
  weights ``1/n`` (the average of the task vectors);
* ``ties``: TIES-merging of the full weight updates (trim to the top ``density`` fraction by
  magnitude, elect the majority sign, average the agreeing values; peft ``ties_svd``);
* ``dare``: DARE (drop each value with probability ``1 - density``, rescale by ``1/density``) then a
  weighted sum (peft ``dare_linear_svd``), or ``dare_ties`` (DARE then TIES' sign election);

for ``ties``/``dare``/``dare_ties`` the weights default to 1 and the combined update is factored
back to LoRA form by SVD at ``rank`` (default: the sum of the input ranks, capped at the smallest
dimension of a target module, where the factorisation is exact).

Refused (exit 2, nothing written): fewer than two runs, runs that are not finished, methods whose
adapters are not plain LoRA factors (DoRA's magnitude vectors, AdaLoRA's SVD triplets, IA3,
prompt/prefix tuning, full fine-tuning), adapters of different base models (config sha256 and
origin), a weight count that does not match. The result is an adapter folder (``save_pretrained``
layout, loadable with ``PeftModel.from_pretrained``) with the first run's tokenizer and a
``combine.json`` report: the inputs, the settings, and how far the combined update is from each input.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any

from .errors import Diagnostic, Location, PlanError

METHODS = {"weighted": "cat", "ties": "ties_svd", "dare": "dare_linear_svd", "dare_ties": "dare_ties_svd"}
LORA_METHODS = ("lora", "qlora")
MARKER = "combine.json"
REFUSED = {
    "dora": "DoRA adapters carry magnitude vectors that peft's add_weighted_adapter does not combine",
    "adalora": "AdaLoRA adapters are SVD triplets (P, Λ, Q), not the LoRA factors the combinations work on",
    "ia3": "IA3 vectors scale activations; TIES/DARE combine weight updates",
    "prompt_tuning": "prompt tuning learns virtual tokens, not weight updates",
    "prefix_tuning": "prefix tuning learns key/value prefixes, not weight updates",
    "full_ft": "a fully fine-tuned run has no adapter",
}


def _log(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def _error(code: str, message: str, where: str, help_text: str = "") -> PlanError:
    return PlanError([Diagnostic(code, message, Location(where), help_text)])


def check_compatible(runs: list[str], plans: list[dict], weights: list[float] | None, method: str,
                     density: float | None) -> list[str]:
    """Raise PlanError (exit 2) when the runs cannot be combined; return warnings otherwise."""
    if method not in METHODS:
        raise _error("combine-bad-method", f"unknown combination `{method}`", "--method", "one of " + ", ".join(METHODS))
    if len(runs) < 2:
        raise _error("combine-too-few", "combining needs at least two runs", "RUNS")
    diags = []
    for run, plan in zip(runs, plans, strict=True):
        if plan["method"] not in LORA_METHODS:
            why = REFUSED.get(plan["method"], f"{plan['method']} adapters cannot be combined")
            diags.append(Diagnostic("combine-incompatible-method", f"{run} is a {plan['method']} run: {why}",
                                    Location(run), "combine LoRA or QLoRA runs"))
    first = plans[0]["model"]
    for run, plan in zip(runs[1:], plans[1:], strict=True):
        model = plan["model"]
        same_config = model["config_sha256"] == first["config_sha256"]
        same_origin = (model.get("hub_id"), model.get("revision")) == (first.get("hub_id"), first.get("revision")) \
            if first.get("hub_id") or model.get("hub_id") else os.path.realpath(model["path"]) == \
            os.path.realpath(first["path"])
        if not (same_config and same_origin):
            diags.append(Diagnostic("combine-different-base", f"{run} was trained on another base model "
                                    f"({model.get('hub_id') or model['path']}) than {runs[0]} "
                                    f"({first.get('hub_id') or first['path']})", Location(run),
                                    "adapters can only be combined on the base they were trained on"))
    if weights is not None and len(weights) != len(runs):
        diags.append(Diagnostic("combine-weights-count", f"{len(weights)} weight(s) for {len(runs)} runs",
                                Location("--weights"), "give one weight per run, in the same order"))
    if density is not None and not 0 < density <= 1:
        diags.append(Diagnostic("combine-bad-density", f"density {density} is not in (0, 1]", Location("--density")))
    if diags:
        raise PlanError(diags)
    warnings = []
    quantized = {bool(p.get("quantization")) for p in plans}
    if len(quantized) > 1:
        warnings.append("some adapters were trained on a 4-bit base and others on a 16/32-bit base; their updates "
                        "are combined as they are")
    return warnings


def _targets(model: Any, adapter: str) -> dict[str, Any]:
    """Return ``{module name: delta weight}`` of ``adapter`` in a peft LoRA model."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            layer: Any = module
            out[name] = layer.get_delta_weight(adapter).detach().float()
    return out


def _max_exact_rank(model: Any, adapter: str) -> int:
    from peft.tuners.lora import LoraLayer

    dims: list[int] = [min(int(m.in_features), int(m.out_features)) for m in model.modules()  # type: ignore[arg-type]
                       if isinstance(m, LoraLayer) and adapter in m.lora_A]
    return min(dims)


def combine_runs(runs: list[str], output: str, *, method: str = "weighted", weights: list[float] | None = None,
                 density: float | None = None, rank: int | None = None, seed: int = 0, overwrite: bool = False,
                 log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Combine the adapters of the finished LoRA/QLoRA ``runs`` into one adapter folder ``output``.

    Returns the report (also written to ``output/combine.json``). Raises PlanError (exit 2) for
    incompatible runs or an occupied ``output``.
    """
    import torch
    from peft import PeftModel

    from .merge import load_run_plan
    from .modeling import load_base_model, load_tokenizer

    runs = [os.path.abspath(r) for r in runs]
    plans = [load_run_plan(r, r) for r in runs]
    warnings = check_compatible(runs, plans, weights, method, density)
    output = os.path.abspath(output)
    if os.path.exists(output) and not (overwrite and os.path.isfile(os.path.join(output, MARKER))):
        raise _error("combine-output-exists", f"{output} exists", "--output",
                     "choose another --output, or --overwrite to replace a previous combination")
    n = len(runs)
    weights = list(weights) if weights is not None else ([1.0 / n] * n if method == "weighted" else [1.0] * n)
    density = density if density is not None else (None if method == "weighted" else 0.5)
    for w in warnings:
        log(f"warning: {w}")
    base = load_base_model(plans[0], quantize=False)
    names = [f"input{i}" for i in range(n)]
    model: Any = PeftModel.from_pretrained(base, os.path.join(runs[0], "adapter"), adapter_name=names[0])
    for name, run in zip(names[1:], runs[1:], strict=True):
        model.load_adapter(os.path.join(run, "adapter"), adapter_name=name)
    ranks = [int(model.peft_config[name].r) for name in names]
    combination = METHODS[method]
    svd_rank = None
    if combination.endswith("svd"):
        svd_rank = min(rank or sum(ranks), _max_exact_rank(model, names[0]))
    torch.manual_seed(seed)
    model.base_model.add_weighted_adapter(names, weights, "combined", combination_type=combination,
                                          svd_rank=svd_rank, density=density)
    combined = _targets(model, "combined")
    distances = []
    for run, name in zip(runs, names, strict=True):
        deltas = _targets(model, name)
        num = sum(float((combined[k] - deltas[k]).pow(2).sum()) for k in combined if k in deltas)
        den = sum(float(deltas[k].pow(2).sum()) for k in deltas)
        distances.append({"run": run, "relative_distance": (num / den) ** 0.5 if den else None})
    staging = f"{output}.tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging, selected_adapters=["combined"])
        inner = os.path.join(staging, "combined")
        load_tokenizer(os.path.join(runs[0], "adapter")).save_pretrained(inner)
        config = model.peft_config["combined"]
        report = {"output": output, "method": method, "peft_combination_type": combination, "weights": weights,
                  "density": density, "svd_rank": svd_rank, "seed": seed, "rank": int(config.r),
                  "inputs": [{"run": r, "method": p["method"], "rank": k, "plan_sha256": p["plan_sha256"]}
                             for r, p, k in zip(runs, plans, ranks, strict=True)],
                  "base_model": {k: plans[0]["model"].get(k) for k in ("path", "hub_id", "revision", "config_sha256")},
                  "distance_from_inputs": distances, "warnings": warnings}
        with open(os.path.join(inner, MARKER), "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(inner, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
