"""What-if searches above the evaluator: suggestions for an infeasible decision and counterfactuals.

Every answer here is a real evaluation of the policy on changed facts (``Evaluator.evaluate`` with
the plain evaluator, which agrees with durable-rules by construction of every decision); nothing
below this module calls it.
"""

from __future__ import annotations

from typing import Any

from .conditions import comparisons
from .derive import Candidate
from .evaluate import Evaluation, Evaluator
from .facts import FactsError
from .units import format_count
from .units import format_value as _fmt


def _outcome(evaluator: Evaluator, facts: dict, origin: str) -> tuple[tuple, Candidate | None] | None:
    """Return (verdict signature, chosen candidate) for hypothetical ``facts``, or None when they are invalid."""
    try:
        return evaluator.outcome(facts, origin)
    except (FactsError, ValueError, ZeroDivisionError):
        return None


def _fits(res: tuple[tuple, Candidate | None] | None) -> bool:
    return bool(res and res[1] is not None)


def _with(facts: dict, path: str, value: Any) -> dict:
    """Return ``facts`` with one fact changed (a new dict for the changed group; the rest shared, never mutated)."""
    group, key = path.split(".")
    changed = {**facts[group], key: value}
    if path == "model.params":
        changed.pop("config", None)
        changed.pop("config_content", None)
    return {**facts, group: changed}


#: host RAM per node tried to see whether ZeRO-3 CPU offload would make an infeasible decision feasible
HOST_PROBE_GIB = 8192.0
#: the shortest data sequence length suggested
MIN_SUGGESTED_SEQ_LEN = 128


def _default_seq_len(evaluator: Evaluator) -> int:
    return int((evaluator.policy.defaults.get("training") or {}).get("seq_len") or 2048)


def suggestions(evaluator: Evaluator, facts: dict, origin: str = "") -> list[dict]:
    """Return what would make an infeasible decision feasible, each re-evaluated under the policy.

    Tries, in order: a larger GPU from the catalog, more GPUs (sharded), enough host RAM for ZeRO-3
    CPU offload (how much, per node), the longest data sequence length that fits (halving from the
    current one), and the largest model that fits. Never suggests a method that does not fit: every
    suggestion is a real evaluation of the policy. The largest GPU, the largest GPU count and the
    shortest sequence are tried first and the others only when those help (the smallest sufficient
    GPU memory size by bisection over the catalog's sizes, then that size's first GPU that fits): a
    policy where more memory turns a feasible decision infeasible fails `decide check --properties`
    anyway.
    """
    policy = evaluator.policy
    out: list[dict] = []
    hw = facts["hardware"]
    count = int(hw.get("gpu_count", 1))
    current = float(hw.get("gpu_memory_gb") or policy.gpus.get(hw.get("gpu") or "", {}).get("memory_gb") or 0.0)
    larger = [(name, spec) for name, spec in sorted(policy.gpus.items(),
                                                    key=lambda kv: (kv[1]["memory_gb"], kv[1]["price_per_hour"]))
              if spec["memory_gb"] > current]  # no more memory than today's GPU cannot fit what does not
    other_hw = {k: v for k, v in hw.items() if k not in ("gpu", "gpu_memory_gb")}  # host memory stays

    def on_gpu(name: str) -> dict:
        return {**facts, "hardware": {**other_hw, "gpu": name, "gpu_count": count}}

    # the largest GPU first: when even it does not help, the smaller ones are not tried. Then the smallest
    # memory size where some GPU fits, by bisection over the distinct sizes (more memory never turns a
    # fitting decision into one that does not), and its first GPU (cheapest) that fits
    if larger and _fits(_outcome(evaluator, on_gpu(larger[-1][0]), origin)):
        sizes: list[list[tuple[str, dict]]] = []
        for name, spec in larger:
            if sizes and sizes[-1][0][1]["memory_gb"] == spec["memory_gb"]:
                sizes[-1].append((name, spec))
            else:
                sizes.append([(name, spec)])

        def first_fit(group: list[tuple[str, dict]]) -> tuple[str, dict, Candidate] | None:
            for name, spec in group:
                res = _outcome(evaluator, on_gpu(name), origin)
                if res and res[1] is not None:
                    return name, spec, res[1]
            return None

        short, enough = -1, len(sizes) - 1  # sizes[enough] fits (the largest GPU did); sizes[short] does not
        found = first_fit(sizes[enough])
        while enough - short > 1:
            mid = (short + enough) // 2
            res_mid = first_fit(sizes[mid])
            if res_mid is not None:
                enough, found = mid, res_mid
            else:
                short = mid
        if found is not None:
            name, spec, cand = found
            out.append({"kind": "larger-gpu", "facts": {"hardware.gpu": name, "hardware.gpu_count": count},
                        "verdict": cand.label(), "memory_gb": round(cand.estimate.total_gib, 2),
                        "text": f"with {count}x {name} ({spec['memory_gb']} GiB): {cand.label()}"})
    counts = [n for n in (2, 4, 8, 16, 32, 64) if n > count]
    if counts and _fits(_outcome(evaluator, _with(facts, "hardware.gpu_count", counts[-1]), origin)):
        for n in counts:
            res = _outcome(evaluator, _with(facts, "hardware.gpu_count", n), origin)
            if res and res[1] is not None:
                label = hw.get("gpu") or f"{hw.get('gpu_memory_gb')} GiB GPUs"
                out.append({"kind": "more-gpus", "facts": {"hardware.gpu_count": n}, "verdict": res[1].label(),
                            "memory_gb": round(res[1].estimate.total_gib, 2),
                            "text": f"with {n}x {label} (sharding {res[1].training['sharding']}): {res[1].label()}"})
                break
    if float(hw.get("host_memory_gb") or 0) < HOST_PROBE_GIB:  # would ZeRO-3 CPU offload fit, given host RAM?
        res = _outcome(evaluator, _with(facts, "hardware.host_memory_gb", HOST_PROBE_GIB), origin)
        if res and res[1] is not None and res[1].training.get("sharding") == "zero3_offload":
            need = res[1].estimate.cpu_offload_gib * min(count, 8)
            out.append({"kind": "host-memory", "facts": {"hardware.host_memory_gb": round(need)},
                        "verdict": res[1].label(), "memory_gb": round(res[1].estimate.total_gib, 2),
                        "text": f"with {need:.0f} GiB of host RAM per node (hardware.host_memory_gb; ZeRO-3 CPU "
                                f"offload): {res[1].label()}"})
    training = facts.get("training") or {}
    if "seq_len" not in training:  # the data's own length bounds the sequence; a set training.seq_len is the user's
        seq = int(facts["data"].get("seq_len") or _default_seq_len(evaluator))
        lengths = []
        while seq // 2 >= MIN_SUGGESTED_SEQ_LEN:
            seq //= 2
            lengths.append(seq)
        # the shortest first: when even it does not fit, the longer ones are not tried one by one
        if lengths and _fits(_outcome(evaluator, _with(facts, "data.seq_len", lengths[-1]), origin)):
            for length in lengths:
                res = _outcome(evaluator, _with(facts, "data.seq_len", length), origin)
                if res and res[1] is not None:
                    out.append({"kind": "shorter-sequences", "facts": {"data.seq_len": length},
                                "verdict": res[1].label(), "memory_gb": round(res[1].estimate.total_gib, 2),
                                "text": f"if the data's sequences are at most {length} tokens (data.seq_len): "
                                        f"{res[1].label()}"})
                    break
    lo, hi = 1e8, float(facts["model"].get("params") or 0)
    if hi > lo and (res := _outcome(evaluator, _with(facts, "model.params", lo), origin)) and res[1] is not None:
        while hi / lo > 1.01:  # within 1% of the boundary (lo always fits, so the suggestion holds)
            mid = (lo * hi) ** 0.5
            r = _outcome(evaluator, _with(facts, "model.params", mid), origin)
            if r and r[1] is not None:
                lo = mid
            else:
                hi = mid
        res = _outcome(evaluator, _with(facts, "model.params", lo), origin)
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
    points: list[float] = []
    for rule in policy.select_rules:
        for cmp in comparisons(rule.when):
            if cmp.fact == fact and isinstance(cmp.value, (int, float)) and not isinstance(cmp.value, bool):
                v = float(cmp.value)
                points.extend([v, v * (1 + 1e-9) + 1e-9, v * (1 - 1e-9) - 1e-9])
    return points


def counterfactuals(evaluator: Evaluator, facts: dict, ev: Evaluation, origin: str = "") -> list[dict]:
    """Return, per numeric fact and direction, the smallest single change that changes the verdict.

    Each is found by scanning the policy's own thresholds and a geometric grid, then bisecting to
    the boundary; every reported value is a real evaluation of the policy (plain evaluator).
    """
    current_sig = ev.signature()
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
            found = _search(evaluator, facts, origin, fact, v0, direction, integer, current_sig)
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


def _search(evaluator: Evaluator, facts: dict, origin: str, fact: str, v0: float, direction: int, integer: bool,
            sig0: tuple) -> tuple[float, Candidate | None] | None:
    if integer:
        grid = [v0 + direction * k for k in range(1, 8)] + [v0 * 2**(direction * k) for k in range(1, 7)]
    else:
        grid = [v0 * 1.25 ** (direction * k) for k in range(1, 20)]
    grid += [p for p in _threshold_points(evaluator.policy, fact) if (p - v0) * direction > 0]
    grid = sorted({round(g) if integer else g for g in grid if g > 0 and (not integer or g >= 1)},
                  key=lambda g: abs(g - v0))
    grid = [g for g in grid if (g - v0) * direction > 0]
    prev = v0
    for g in grid:
        res = _outcome(evaluator, _with(facts, fact, int(g) if integer else g), origin)
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
                r = _outcome(evaluator, _with(facts, fact, int(mid) if integer else mid), origin)
                if r is not None and r[0] != sig0:
                    hi, _cand = mid, r[1]
                else:
                    lo = mid
            final = _outcome(evaluator, _with(facts, fact, int(hi) if integer else hi), origin)
            if final is None:
                return None
            return (int(hi) if integer else hi), final[1]
        prev = g
    return None
