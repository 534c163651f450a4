"""The memory model against published measured peak-memory runs (tests/fixtures/published_runs.yaml).

Prints one row per run (measured GiB per GPU, the estimate, the error) and the median and worst
absolute error overall and per group (method, model size, GPU count, sharding). Accuracy is a
property measured here, not asserted: tests/ruleengine/test_memory.py keeps its own ±15% band.

    PYTHONPATH=. python bench/bench_published_runs.py [--csv]
"""

from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ruleengine.architecture import load_hf_config  # noqa: E402
from ruleengine.memory import MemoryConstants, MethodConfig, TrainingSetup, estimate  # noqa: E402

RUNS = ROOT / "tests" / "fixtures" / "published_runs.yaml"
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
# what torch.cuda.max_memory_allocated leaves out: the CUDA context and the allocator's cache
ALLOCATED = {"overhead": {"cuda_context_gib": 0.0, "allocator_fraction": 0.0}}


def _merge(*dicts: dict) -> dict:
    out: dict = {}
    for d in dicts:
        for key, value in d.items():
            out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else copy.deepcopy(value)
    return out


def load_runs(path: Path = RUNS) -> list[dict]:
    """Return the runs of the data file."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))["runs"]


def estimate_run(run: dict) -> float:
    """Return the memory model's estimate (GiB per GPU) for one run, with the run's pipeline constants."""
    arch = load_hf_config(str(CONFIGS / f"{run['model']}.json"))
    method = MethodConfig(run["method"], rank=run.get("rank"),
                          target_modules=run.get("target_modules") or "all-linear", dropout=run.get("dropout"),
                          double_quant=run.get("double_quant"))
    setup = TrainingSetup(run["precision"], run["optimizer"], run["micro_batch_size"], run["seq_len"],
                          run["gradient_checkpointing"], run["sharding"], run["gpus"], run.get("attention", "sdpa"))
    constants = MemoryConstants.from_policy(
        _merge(ALLOCATED if run["measured"] == "allocated" else {}, run.get("overrides") or {}))
    return estimate(arch, method, setup, constants).total_gib


def size_band(params: float) -> str:
    """Return the model-size group of a parameter count."""
    for limit, label in ((3e9, "<3B"), (10e9, "3-10B"), (40e9, "10-40B"), (100e9, "40-100B")):
        if params < limit:
            return label
    return ">=100B"


def main(argv: list[str]) -> int:
    """Print the table and the summaries; returns the process exit code (0)."""
    rows = []
    for run in load_runs():
        est = estimate_run(run)
        measured = float(run["measured_gib"])
        params = load_hf_config(str(CONFIGS / f"{run['model']}.json")).params
        rows.append((run, measured, est, (est - measured) / measured, params))
    if "--csv" in argv:
        print("id,method,model,gpus,sharding,checkpointing,measured_gib,estimate_gib,error_pct")
        for run, measured, est, err, _ in rows:
            print(f"{run['id']},{run['method']},{run['model']},{run['gpus']},{run['sharding']},"
                  f"{run['gradient_checkpointing']},{measured:.2f},{est:.2f},{100 * err:+.1f}")
        return 0
    print(f"{'run':48s} {'measured':>9s} {'estimate':>9s} {'error':>8s}")
    for run, measured, est, err, _ in rows:
        print(f"{run['id']:48s} {measured:9.2f} {est:9.2f} {100 * err:+7.1f}%")
    errors = [abs(r[3]) for r in rows]
    print(f"\n{len(rows)} runs: median |error| {100 * statistics.median(errors):.1f}%, "
          f"worst {100 * max(errors):.1f}% ({max(rows, key=lambda r: abs(r[3]))[0]['id']})")
    groups = {
        "method": lambda r: r[0]["method"],
        "size": lambda r: size_band(r[4]),
        "gpus": lambda r: str(r[0]["gpus"]),
        "sharding": lambda r: r[0]["sharding"],
        "checkpointing": lambda r: "on" if r[0]["gradient_checkpointing"] else "off",
        "measured": lambda r: r[0]["measured"],
    }
    for name, key in groups.items():
        parts = {}
        for row in rows:
            parts.setdefault(key(row), []).append(abs(row[3]))
        cells = ", ".join(f"{k}: n={len(v)} median {100 * statistics.median(v):.0f}% worst {100 * max(v):.0f}%"
                          for k, v in sorted(parts.items()))
        print(f"by {name:13s} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
