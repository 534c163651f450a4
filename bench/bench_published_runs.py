"""The memory model against published measured peak-memory runs (tests/fixtures/published_runs.yaml).

Prints one row per run (measured GiB per GPU, the estimate of what that measurement sees, the error)
and the median and worst absolute error overall and per group (method, model size, GPU count,
sharding, checkpointing, measurement). Excluded runs are listed with their reason and not counted.
tests/ruleengine/test_memory.py asserts the goal on the same data (median |error| <= 10%, worst <= 25%).

    PYTHONPATH=. python bench/bench_published_runs.py [--csv] [--markdown]
"""

from __future__ import annotations

import copy
import statistics
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ruleengine.architecture import Architecture, load_hf_config  # noqa: E402
from ruleengine.memory import MemoryConstants, MethodConfig, TrainingSetup, profile  # noqa: E402

RUNS = ROOT / "tests" / "fixtures" / "published_runs.yaml"
CONFIGS = ROOT / "tests" / "fixtures" / "configs"


def _merge(*dicts: dict) -> dict:
    out: dict = {}
    for d in dicts:
        for key, value in d.items():
            out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else copy.deepcopy(value)
    return out


@cache
def _data(path: Path = RUNS) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_runs(path: Path = RUNS) -> list[dict]:
    """Return the runs of the data file."""
    return list(_data(path)["runs"])


def pipelines(path: Path = RUNS) -> dict[str, dict]:
    """Return the named pipelines (reason and memory-constant overrides) of the data file."""
    return dict(_data(path)["pipelines"])


@cache
def architecture(model: str) -> Architecture:
    """Return the architecture of a fixture config by name."""
    return load_hf_config(str(CONFIGS / f"{model}.json"))


def run_inputs(run: dict) -> tuple[Architecture, MethodConfig, TrainingSetup, MemoryConstants]:
    """Return what the memory model needs for one run: architecture, method, setup and the pipeline's constants.

    Raises KeyError for a pipeline name the file does not define.
    """
    named = pipelines()
    overrides = _merge(*[named[name]["overrides"] for name in run.get("pipeline") or []], run.get("overrides") or {})
    method = MethodConfig(run["method"], rank=run.get("rank"),
                          target_modules=run.get("target_modules") or "all-linear", dropout=run.get("dropout"),
                          double_quant=run.get("double_quant"), num_virtual_tokens=run.get("num_virtual_tokens"))
    setup = TrainingSetup(run["precision"], run["optimizer"], run["micro_batch_size"], run["seq_len"],
                          run["gradient_checkpointing"], run["sharding"], run["gpus"], run.get("attention", "sdpa"),
                          bool(run.get("gradient_accumulation", True)))
    return architecture(run["model"]), method, setup, MemoryConstants.from_policy(overrides)


def estimate_run(run: dict) -> float:
    """Return the memory model's estimate (GiB per GPU) of what the run's measurement shows."""
    arch, method, setup, constants = run_inputs(run)
    return profile(arch, method, setup, constants).measured_gib(setup.micro_batch_size, run["measured"])


def size_band(params: float) -> str:
    """Return the model-size group of a parameter count."""
    for limit, label in ((3e9, "<3B"), (10e9, "3-10B"), (40e9, "10-40B"), (100e9, "40-100B")):
        if params < limit:
            return label
    return ">=100B"


def results() -> tuple[list[tuple[dict, float, float, float]], list[dict]]:
    """Return ((run, measured GiB, estimate GiB, relative error) for every counted run, the excluded runs)."""
    rows, excluded = [], []
    for run in load_runs():
        if run.get("excluded"):
            excluded.append(run)
            continue
        est = estimate_run(run)
        measured = float(run["measured_gib"])
        rows.append((run, measured, est, (est - measured) / measured))
    return rows, excluded


def summary(rows: list[tuple[dict, float, float, float]]) -> dict[str, Any]:
    """Return the median and worst |error| overall and per group."""
    errors = [abs(r[3]) for r in rows]
    groups = {
        "method": lambda r: r[0]["method"],
        "size": lambda r: size_band(architecture(r[0]["model"]).params),
        "gpus": lambda r: str(r[0]["gpus"]),
        "sharding": lambda r: r[0]["sharding"],
        "checkpointing": lambda r: "on" if r[0]["gradient_checkpointing"] else "off",
        "measured": lambda r: r[0]["measured"],
    }
    out: dict[str, Any] = {"runs": len(rows), "median": statistics.median(errors), "worst": max(errors),
                           "worst_id": max(rows, key=lambda r: abs(r[3]))[0]["id"], "groups": {}}
    for name, key in groups.items():
        parts: dict[str, list[float]] = {}
        for row in rows:
            parts.setdefault(key(row), []).append(abs(row[3]))
        out["groups"][name] = {k: (len(v), statistics.median(v), max(v)) for k, v in sorted(parts.items())}
    return out


def main(argv: list[str]) -> int:
    """Print the table and the summaries; returns the process exit code (0)."""
    rows, excluded = results()
    if "--csv" in argv:
        print("id,method,model,gpus,sharding,checkpointing,measured,measured_gib,estimate_gib,error_pct")
        for run, measured, est, err in rows:
            print(f"{run['id']},{run['method']},{run['model']},{run['gpus']},{run['sharding']},"
                  f"{run['gradient_checkpointing']},{run['measured']},{measured:.2f},{est:.2f},{100 * err:+.1f}")
        return 0
    if "--markdown" in argv:
        print("| run | method | measured | published (GiB) | estimate | error |")
        print("|---|---|---|---|---|---|")
        for run, measured, est, err in rows:
            print(f"| {run['id']} | {run['method']} | {run['measured']} | {measured:.2f} | {est:.2f} | {100 * err:+.1f}% |")
        return 0
    print(f"{'run':46s} {'kind':9s} {'measured':>9s} {'estimate':>9s} {'error':>8s}")
    for run, measured, est, err in rows:
        print(f"{run['id']:46s} {run['measured']:9s} {measured:9.2f} {est:9.2f} {100 * err:+7.1f}%")
    s = summary(rows)
    print(f"\n{s['runs']} runs: median |error| {100 * s['median']:.1f}%, worst {100 * s['worst']:.1f}% ({s['worst_id']})")
    for name, parts in s["groups"].items():
        cells = ", ".join(f"{k}: n={n} median {100 * med:.0f}% worst {100 * worst:.0f}%"
                          for k, (n, med, worst) in parts.items())
        print(f"by {name:13s} {cells}")
    if excluded:
        print(f"\n{len(excluded)} runs excluded:")
        for run in excluded:
            print(f"  {run['id']}: {run['excluded']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
