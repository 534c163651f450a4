"""Explanations as filters over the trace: why this method, why not the others, what would flip it.

Also the per-method estimate table, the suggestions for an infeasible decision, and the text
renderers used by the CLI.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from .derive import Candidate, Derived
from .facts import FactsError
from .units import format_count
from .vocabulary import METHODS

# --- estimates and rejections ---------------------------------------------------------------


def architecture_dict(arch: Any) -> dict:
    """Return the architecture as a plain dict."""
    if dataclasses.is_dataclass(arch) and not isinstance(arch, type):
        return dataclasses.asdict(arch)
    return dict(arch)


def _cost(policy: Any, derived: Derived, cand: Candidate, facts: dict) -> dict | None:
    from .cost import CostConstants, estimate_cost
    from .memory import MethodConfig, TrainingSetup

    gpu = derived.gpu
    if not gpu.tflops:
        return None
    t = cand.training
    setup = TrainingSetup(precision=t["precision"], optimizer=t["optimizer"], micro_batch_size=int(t["micro_batch_size"]),
                          seq_len=int(t["seq_len"]), gradient_checkpointing=bool(t["gradient_checkpointing"]),
                          sharding=t["sharding"], gpu_count=gpu.count)
    cfg = MethodConfig(method=cand.method, rank=cand.init_rank or cand.rank,
                       target_modules=cand.target_modules or "all-linear",
                       num_virtual_tokens=cand.num_virtual_tokens, adapter_size=cand.adapter_size)
    tokens = float(facts["data"]["examples"]) * float(facts["data"]["avg_tokens"])
    if tokens <= 0:  # no data given (decide estimate): no cost to state
        return None
    cost = estimate_cost(derived.arch, cfg, setup, tokens_total=tokens, epochs=float(t.get("epochs", 1)),
                         gpu_tflops=float(gpu.tflops), price_per_hour=float(gpu.price_per_hour or 0.0),
                         constants=CostConstants.from_policy(policy.cost))
    return cost.to_dict()


def method_estimates(policy: Any, derived: Derived, facts: dict) -> dict[str, dict]:
    """Return, per method at its default configuration: the memory breakdown, fit, and cost when it fits."""
    out: dict[str, dict] = {}
    for method in METHODS:
        cand = derived.defaults[method]
        entry = {"label": cand.label(), "fits": cand.fits, "usable_gb": round(cand.usable_gb, 3),
                 "headroom_gb": round(cand.headroom_gb, 3), "sharding": cand.training["sharding"],
                 "micro_batch_size": cand.training["micro_batch_size"],
                 "memory": cand.estimate.to_dict()}
        entry["cost"] = _cost(policy, derived, cand, facts) if cand.fits else None
        out[method] = entry
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if abs(v) >= 1e4:
            return format_count(v)
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def describe_failure(failed: dict) -> str:
    """Return a failing condition as a sentence: ``data.examples = 50k, needs >= 1M (short by 950k)``."""
    op = failed["op"]
    actual, expected = failed["actual"], failed["expected"]
    name = failed.get("threshold")
    rhs = f"{name} = {_fmt(expected)}" if name else _fmt(expected)
    if failed["condition"].startswith("not "):
        text = f"{failed['fact']} = {_fmt(actual)}, and `{failed['condition'][4:]}` must not hold"
        return text
    text = f"{failed['fact']} = {_fmt(actual)}, needs {op} {rhs}"
    margin = failed.get("margin")
    if margin is not None and op in ("<", "<=", ">", ">="):
        text += f" ({'short' if op in ('>', '>=') else 'over'} by {_fmt(abs(margin))})"
    return text


def rejected_methods(trace: list[dict], derived: Derived, chosen: Candidate | None,
                     why_not: dict[str, str] | None = None) -> list[dict]:
    """Return, for every method other than the chosen one, why it was not chosen.

    Codes: ``memory`` (a rule chose it but its verdict does not fit, or no rule chose it and it
    does not fit at its defaults), ``outranked`` (a rule chose it and it fits, but a rule that
    comes first won), ``conditions`` (the rules that choose it did not match: the first failing
    condition with the actual value and margin), ``no-rule`` (no rule of the policy chooses it;
    the policy's ``defaults.methods.<m>.why_not`` says why, when given).
    """
    out: list[dict] = []
    chosen_event = next((e for e in trace if e.get("chosen")), None)
    for method in METHODS:
        if chosen is not None and method == chosen.method:
            continue
        default = derived.defaults[method]
        events = [e for e in trace if e["kind"] == "select" and e["method"] == method]
        base = {"method": method, "memory_gb": round(default.estimate.total_gib, 3),
                "usable_gb": round(default.usable_gb, 3), "margin_gb": round(default.headroom_gb, 3),
                "rule": None, "condition": None}
        outranked = [e for e in events if e["matched"]]
        too_big = [e for e in events if e["conditions_hold"] and not e["fits"]]
        if outranked and chosen_event is not None:
            e = outranked[0]
            out.append({**base, "code": "outranked", "rule": e["rule"],
                        "reason": f"rule `{e['rule']}` (priority {e['priority']}) would choose {e['candidate']}, "
                                  f"but `{chosen_event['rule']}` (priority {chosen_event['priority']}) comes first"})
        elif too_big:
            e = too_big[0]
            out.append({**base, "code": "memory", "rule": e["rule"], "memory_gb": e["memory_gb"],
                        "margin_gb": round(e["usable_gb"] - e["memory_gb"], 3),
                        "reason": f"rule `{e['rule']}` chooses {e['candidate']}, which needs {e['memory_gb']:.1f} GiB "
                                  f"per GPU > {e['usable_gb']:.1f} GiB usable (short by "
                                  f"{e['memory_gb'] - e['usable_gb']:.1f} GiB)"})
        elif not default.fits:
            why = (f"needs {default.estimate.total_gib:.1f} GiB per GPU at its defaults > {default.usable_gb:.1f} "
                   f"GiB usable (short by {-default.headroom_gb:.1f} GiB)")
            out.append({**base, "code": "memory", "reason": why})
        elif events:
            e = events[0]
            failed = e["failed"] or {}
            out.append({**base, "code": "conditions", "rule": e["rule"], "condition": failed or None,
                        "reason": f"rule `{e['rule']}` does not apply: {describe_failure(failed)}" if failed
                        else f"rule `{e['rule']}` does not apply"})
        else:
            reason = f"no rule of this policy chooses {method}"
            if why_not and why_not.get(method):
                reason += f": {why_not[method]}"
            out.append({**base, "code": "no-rule", "reason": reason})
    return out


# --- what-if searches ---------------------------------------------------------------------


def _outcome(policy: Any, facts: dict, origin: str) -> tuple[tuple, Candidate | None] | None:
    from .engine import evaluate_policy

    try:
        ev = evaluate_policy(policy, facts, origin, use_engine=False)
    except (FactsError, ValueError, ZeroDivisionError):
        return None
    c = ev.candidate
    return ((c.method, c.rank) if c else ("infeasible", None)), c


def _with(facts: dict, path: str, value: Any) -> dict:
    out = copy.deepcopy(facts)
    group, key = path.split(".")
    out[group][key] = value
    if path == "model.params":
        out["model"].pop("config", None)
    return out


def suggestions(policy: Any, facts: dict, origin: str = "") -> list[dict]:
    """Return what would make an infeasible decision feasible, each re-evaluated under the policy.

    Tries, in order: a larger GPU from the catalog, more GPUs (sharded), ZeRO-3 with CPU offload,
    a shorter sequence and batch of 1, and the largest model that fits. Never suggests a method
    that does not fit: every suggestion is a real evaluation of the policy.
    """
    out: list[dict] = []
    hw = facts["hardware"]
    count = int(hw.get("gpu_count", 1))
    for name, spec in sorted(policy.gpus.items(), key=lambda kv: (kv[1]["memory_gb"], kv[1]["price_per_hour"])):
        trial = copy.deepcopy(facts)
        trial["hardware"] = {"gpu": name, "gpu_count": count}
        res = _outcome(policy, trial, origin)
        if res and res[1] is not None:
            out.append({"kind": "larger-gpu", "facts": {"hardware.gpu": name, "hardware.gpu_count": count},
                        "verdict": res[1].label(), "memory_gb": round(res[1].estimate.total_gib, 2),
                        "text": f"with {count}x {name} ({spec['memory_gb']} GiB): {res[1].label()}"})
            break
    for n in (2, 4, 8, 16, 32, 64):
        if n <= count:
            continue
        trial = _with(facts, "hardware.gpu_count", n)
        res = _outcome(policy, trial, origin)
        if res and res[1] is not None:
            label = hw.get("gpu") or f"{hw.get('gpu_memory_gb')} GiB GPUs"
            out.append({"kind": "more-gpus", "facts": {"hardware.gpu_count": n}, "verdict": res[1].label(),
                        "memory_gb": round(res[1].estimate.total_gib, 2),
                        "text": f"with {n}x {label} (sharding {res[1].training['sharding']}): {res[1].label()}"})
            break
    trial = copy.deepcopy(facts)
    trial.setdefault("training", {})["sharding"] = "zero3_offload"
    if count > 1:
        res = _outcome(policy, trial, origin)
        if res and res[1] is not None:
            out.append({"kind": "zero3-offload", "facts": {"training.sharding": "zero3_offload"},
                        "verdict": res[1].label(), "memory_gb": round(res[1].estimate.total_gib, 2),
                        "text": f"with ZeRO-3 and CPU offload on the same GPUs: {res[1].label()} "
                                f"({res[1].estimate.cpu_offload_gib:.0f} GiB of host RAM per GPU)"})
    trial = copy.deepcopy(facts)
    trial.setdefault("training", {}).update({"micro_batch_size": 1, "seq_len": 512, "gradient_checkpointing": True})
    res = _outcome(policy, trial, origin)
    if res and res[1] is not None:
        out.append({"kind": "smaller-batch", "facts": {"training.micro_batch_size": 1, "training.seq_len": 512},
                    "verdict": res[1].label(), "memory_gb": round(res[1].estimate.total_gib, 2),
                    "text": f"with micro_batch_size 1 and seq_len 512: {res[1].label()}"})
    lo, hi = 1e8, float(facts["model"].get("params") or 0)
    if hi > lo and (res := _outcome(policy, _with(facts, "model.params", lo), origin)) and res[1] is not None:
        for _ in range(24):
            mid = (lo * hi) ** 0.5
            r = _outcome(policy, _with(facts, "model.params", mid), origin)
            if r and r[1] is not None:
                lo = mid
            else:
                hi = mid
        res = _outcome(policy, _with(facts, "model.params", lo), origin)
        if res and res[1] is not None:
            out.append({"kind": "smaller-model", "facts": {"model.params": round(lo)}, "verdict": res[1].label(),
                        "memory_gb": round(res[1].estimate.total_gib, 2),
                        "text": f"a model of at most {format_count(lo)} parameters: {res[1].label()}"})
    return out


_CF_FACTS = {
    "hardware.gpu_memory_gb": ("GiB of GPU memory", False),
    "hardware.gpu_count": ("GPUs", True),
    "data.examples": ("examples", True),
    "model.params": ("parameters", False),
}


def _threshold_points(policy: Any, fact: str) -> list[float]:
    from .conditions import comparisons

    points: list[float] = []
    for rule in policy.select_rules:
        for cmp in comparisons(rule.when):
            if cmp.fact == fact and isinstance(cmp.value, (int, float)) and not isinstance(cmp.value, bool):
                v = float(cmp.value)
                points.extend([v, v * (1 + 1e-9) + 1e-9, v * (1 - 1e-9) - 1e-9])
    return points


def counterfactuals(policy: Any, facts: dict, ev: Any, origin: str = "") -> list[dict]:
    """Return, per numeric fact and direction, the smallest single change that changes the verdict.

    Each is found by scanning the policy's own thresholds and a geometric grid, then bisecting to
    the boundary; every reported value is a real evaluation of the policy (plain evaluator).
    """
    current_sig = (ev.candidate.method, ev.candidate.rank) if ev.candidate else ("infeasible", None)
    out: list[dict] = []
    values = {"hardware.gpu_memory_gb": ev.derived.gpu.memory_gb, "hardware.gpu_count": ev.derived.gpu.count,
              "data.examples": float(facts["data"]["examples"]), "model.params": float(ev.derived.arch.params)}
    for fact, (unit, integer) in _CF_FACTS.items():
        if fact == "data.examples" and facts["data"].get("tasks"):
            continue
        v0 = values[fact]
        if v0 <= 0:
            continue
        for direction in (1, -1):
            found = _search(policy, facts, origin, fact, v0, direction, integer, current_sig)
            if found is None:
                continue
            value, cand = found
            delta = value - v0
            verdict = cand.label() if cand else "infeasible (nothing fits)"
            shown = _fmt(float(value)) if not integer else str(int(value))
            text = (f"with {_fmt(abs(delta)) if not integer else int(abs(delta))} {'more' if delta > 0 else 'fewer'} "
                    f"{unit} ({fact} {_fmt(float(v0)) if not integer else int(v0)} -> {shown}): {verdict}")
            out.append({"fact": fact, "from": v0, "to": value, "delta": delta, "verdict": verdict,
                        "method": cand.method if cand else None, "rank": cand.rank if cand else None,
                        "feasible": cand is not None, "text": text})
    out.sort(key=lambda c: (abs(c["delta"]) / max(abs(c["from"]), 1e-9)))
    return out


def _search(policy: Any, facts: dict, origin: str, fact: str, v0: float, direction: int, integer: bool,
            sig0: tuple) -> tuple[float, Candidate | None] | None:
    if integer:
        grid = [v0 + direction * k for k in range(1, 8)] + [v0 * 2**(direction * k) for k in range(1, 7)]
    else:
        grid = [v0 * 1.25 ** (direction * k) for k in range(1, 20)]
    grid += [p for p in _threshold_points(policy, fact) if (p - v0) * direction > 0]
    grid = sorted({round(g) if integer else g for g in grid if g > 0 and (not integer or g >= 1)},
                  key=lambda g: abs(g - v0))
    grid = [g for g in grid if (g - v0) * direction > 0]
    prev = v0
    for g in grid:
        res = _outcome(policy, _with(facts, fact, int(g) if integer else g), origin)
        if res is None:
            prev = g
            continue
        sig, cand = res
        if sig != sig0:
            lo, hi = prev, g  # lo keeps sig0, hi flips
            for _ in range(30 if not integer else 64):
                if integer and abs(hi - lo) <= 1:
                    break
                if not integer and abs(hi - lo) <= max(abs(v0) * 1e-4, 1e-6):
                    break
                mid = (lo + hi) / 2 if not integer else round((lo + hi) / 2)
                r = _outcome(policy, _with(facts, fact, int(mid) if integer else mid), origin)
                if r is not None and r[0] != sig0:
                    hi, _cand = mid, r[1]
                else:
                    lo = mid
            final = _outcome(policy, _with(facts, fact, int(hi) if integer else hi), origin)
            if final is None:
                return None
            return (int(hi) if integer else hi), final[1]
        prev = g
    return None


# --- rendering ------------------------------------------------------------------------------


def verdict_label(verdict: dict | None) -> str:
    """Return a one-line description of a verdict, e.g. ``LoRA r=16 (alpha 32, all-linear)``."""
    if not verdict:
        return "infeasible: no method fits"
    m = verdict["method"]
    parts = [m if not verdict.get("rank") else f"{m} r={verdict['rank']}"]
    extra = []
    if verdict.get("alpha"):
        extra.append(f"alpha {verdict['alpha']:g}")
    if verdict.get("target_modules"):
        t = verdict["target_modules"]
        extra.append(t if isinstance(t, str) else ",".join(t))
    if verdict.get("num_virtual_tokens"):
        extra.append(f"{verdict['num_virtual_tokens']} virtual tokens")
    if verdict.get("quantization"):
        q = verdict["quantization"]
        extra.append(f"{q['bits']}-bit {q['quant_type']}" + (" double-quant" if q.get("double_quant") else ""))
    return parts[0] + (f" ({', '.join(extra)})" if extra else "")


def render_estimates_table(estimates: dict[str, dict]) -> list[str]:
    """Return the per-method memory/cost table as text lines."""
    head = (f"  {'method':<14}{'mb':>4}{'weights':>8}{'grads':>7}{'optim':>7}{'activ':>7}{'logits':>7}{'other':>7}"
            f"{'total':>8}  {'fits':<5}{'trainable':>11}{'GPU-h':>9}{'cost $':>9}")
    lines = [head]
    for _method, e in estimates.items():
        m = e["memory"]
        other = m.get("quant_constants_gib", 0) + m.get("overhead_gib", 0)
        cost = e.get("cost") or {}
        gh = f"{cost['gpu_hours']:.1f}" if cost.get("gpu_hours") is not None else "-"
        usd = f"{cost['dollars']:.0f}" if cost.get("dollars") is not None else "-"
        lines.append(f"  {e['label']:<14}{e.get('micro_batch_size', ''):>4}{m['weights_gib']:>8.1f}{m['gradients_gib']:>7.1f}{m['optimizer_gib']:>7.1f}"
                     f"{m['activations_gib']:>7.1f}{m['logits_gib']:>7.1f}{other:>7.1f}{m['total_gib']:>8.1f}  "
                     f"{'yes' if e['fits'] else 'NO':<5}{format_count(m['trainable_params']):>11}{gh:>9}{usd:>9}")
    return lines


def render_decision_text(d: dict, show_estimates: bool = True) -> str:
    """Return the human-readable report of a decision dict."""
    p = d["policy"]
    a = d.get("architecture") or {}
    hw = d["facts"]["normalized"]["hardware"]
    der = d["derived"]
    lines = [f"Decision {d['decision_id']}   policy {p['name']} {p['version']} (sha256 {p['sha256'][:12]})"]
    if d["feasible"]:
        lines.append(f"Verdict: {verdict_label(d['verdict'])}   [rule {d['chosen_rule']}]")
        lines.append(f"  why: {d['rationale']}")
        if d.get("source"):
            lines.append(f"  source: {d['source']}")
        t = d["verdict"]["training"]
        lines.append(f"  training: {t['precision']}, {t['optimizer']}, lr {t.get('learning_rate', 0):g}, "
                     f"micro-batch {t['micro_batch_size']} x grad-accum {t['gradient_accumulation_steps']}, "
                     f"seq {t['seq_len']}, checkpointing {'on' if t['gradient_checkpointing'] else 'off'}, "
                     f"sharding {t['sharding']}")
        est = d["estimates"].get(d["verdict"]["method"], {})
        chosen_ev = next((e for e in d["trace"] if e.get("chosen")), None)
        if chosen_ev:
            lines.append(f"  memory: {chosen_ev['memory_gb']:.1f} GiB per GPU of {chosen_ev['usable_gb']:.1f} usable")
        cost = est.get("cost") if est else None
        if cost and cost.get("gpu_hours") is not None:
            lines.append(f"  cost (at defaults): {cost['gpu_hours']:.1f} GPU-hours, ${cost['dollars']:.0f}")
    else:
        lines.append("Verdict: INFEASIBLE - no method fits in memory on this hardware")
    src = "inferred from the parameter count" if der.get("model.arch_inferred") else "from model.config"
    lines.append(f"Model: {format_count(der['model.params'])} parameters, {a.get('num_layers')} layers, hidden "
                 f"{a.get('hidden_size')}, vocabulary {a.get('vocab_size')} ({src})")
    gpu = hw.get("gpu") or "custom GPU"
    lines.append(f"Hardware: {der['hardware.gpu_count']}x {gpu}, {der['hardware.gpu_memory_gb']:g} GiB each, "
                 f"{der['hardware.usable_gb']:.1f} GiB usable")
    if show_estimates:
        lines.append("Memory per GPU at each method's defaults (GiB; mb = the micro-batch chosen to fit):")
        lines.extend(render_estimates_table(d["estimates"]))
    if d["warnings"]:
        lines.append("Warnings:")
        lines.extend(f"  - [{w['code']}] {w['message']}" for w in d["warnings"])
    if d["notes"]:
        lines.append("Notes:")
        lines.extend(f"  - [{n['code']}] {n['message']}" for n in d["notes"])
    if d.get("suggestions"):
        lines.append("What would fit:")
        lines.extend(f"  - {s['text']}" for s in d["suggestions"])
    return "\n".join(lines)


def render_explanation(d: dict) -> str:
    """Return why the verdict was chosen, why each other method was not, and the counterfactuals."""
    lines = []
    if d["feasible"]:
        lines.append(f"Chosen: {verdict_label(d['verdict'])}")
        lines.append(f"  by rule `{d['chosen_rule']}`: {d['rationale']}")
        if d.get("source"):
            lines.append(f"  source: {d['source']}")
        ev = next((e for e in d["trace"] if e.get("chosen")), None)
        if ev:
            lines.append(f"  it fits: {ev['memory_gb']:.1f} GiB per GPU of {ev['usable_gb']:.1f} usable")
        earlier = [e for e in d["trace"] if e["kind"] == "select" and ev and e["order"] < ev["order"]]
        if earlier:
            lines.append("  rules that come first and did not apply:")
            for e in earlier:
                if not e["conditions_hold"]:
                    lines.append(f"    - {e['rule']}: {describe_failure(e['failed'])}")
                else:
                    lines.append(f"    - {e['rule']}: {e['candidate']} needs {e['memory_gb']:.1f} GiB > "
                                 f"{e['usable_gb']:.1f} usable")
    else:
        lines.append("Nothing fits: every select rule's verdict exceeds usable memory or does not apply.")
    lines.append("Why not the others:")
    for r in d["rejected"]:
        lines.append(f"  - {r['method']}: {r['reason']}")
    if d.get("counterfactuals"):
        lines.append("What would change the verdict (smallest single change of one fact):")
        for c in d["counterfactuals"]:
            lines.append(f"  - {c['text']}")
    elif d.get("counterfactuals") is not None:
        lines.append("No single change of GPU memory, GPU count, data size or model size within x64 changes the verdict.")
    if d.get("suggestions"):
        lines.append("What would fit:")
        lines.extend(f"  - {s['text']}" for s in d["suggestions"])
    if d["warnings"]:
        lines.append("Warnings:")
        lines.extend(f"  - [{w['code']}] {w['message']}" for w in d["warnings"])
    return "\n".join(lines)
