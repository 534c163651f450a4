"""Text renderers of decisions and explanations (decision dicts in, lines of text out).

Pure functions of the JSON form of a decision (schemas/decision.schema.json), so a recorded
decision renders exactly as a fresh one. The CLI and ``decide audit show`` use them.
"""

from __future__ import annotations

from .explain import describe_failure
from .units import format_count


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
        if e.get("inapplicable"):
            lines.append(f"  {e['label']:<14}  n/a: {e['inapplicable']}")
            continue
        m = e["memory"]
        other = m.get("quant_constants_gib", 0) + m.get("overhead_gib", 0)
        cost = e.get("cost") or {}
        gh = f"{cost['gpu_hours']:.1f}" if cost.get("gpu_hours") is not None else "-"
        usd = f"{cost['dollars']:.0f}" if cost.get("dollars") is not None else "-"
        lines.append(f"  {e['label']:<14}{e.get('micro_batch_size', ''):>4}{m['weights_gib']:>8.1f}{m['gradients_gib']:>7.1f}{m['optimizer_gib']:>7.1f}"
                     f"{m['activations_gib']:>7.1f}{m['logits_gib']:>7.1f}{other:>7.1f}{m['total_gib']:>8.1f}  "
                     f"{'yes' if e['fits'] else 'NO':<5}{format_count(m['trainable_params']):>11}{gh:>9}{usd:>9}")
    return lines


def render_breakdown(name: str, entry: dict) -> list[str]:
    """Return one method's estimate term by term as text lines (the ``breakdown`` of ``decide estimate``)."""
    if entry.get("inapplicable"):
        return [f"{entry['label']}: not applicable to this model: {entry['inapplicable']}"]
    t = entry["settings"]
    lines = [f"{entry['label']}: {entry['total_gib']:.2f} GiB per GPU of {entry['usable_gb']:.1f} usable "
             f"({'fits' if entry['fits'] else 'does NOT fit'}); micro-batch {t['micro_batch_size']} x grad-accum "
             f"{t['gradient_accumulation_steps']}, seq {t['seq_len']}, checkpointing "
             f"{'on' if t['gradient_checkpointing'] else 'off'}, {t['precision']}, {t['optimizer']}, sharding "
             f"{t['sharding']} on {t['gpu_count']} GPU{'s' if t['gpu_count'] > 1 else ''}"]
    if entry["fit_changes"]:
        needed, *changes = entry["fit_changes"]
        lines.append(f"  settings changed to fit ({needed}): " + "; ".join(changes))
    lines.append(f"  {'component':<16}{'term':<52}{'GiB':>8}  detail")
    for r in entry["rows"]:
        lines.append(f"  {r['component']:<16}{r['term'][:51]:<52}{r['gib']:>8.2f}  {r['detail']}")
    lines.append(f"  {'total':<16}{'':<52}{sum(r['gib'] for r in entry['rows']):>8.2f}")
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
    elif der.get("fits.any"):
        fitting = [m for m, e in d["estimates"].items() if e.get("fits")]
        held = [e["rule"] for e in d["trace"] if e.get("kind") == "select" and e.get("conditions_hold")]
        why = (f"the rules whose conditions hold ({', '.join(held)}) choose verdicts that do not fit" if held
               else "no select rule's conditions hold for these facts")
        lines.append("Verdict: INFEASIBLE - no rule chooses a method that fits: " + why + "; "
                     + ", ".join(fitting) + " would fit (a gap in the policy, see `decide check`)")
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
