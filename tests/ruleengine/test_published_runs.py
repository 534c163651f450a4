"""The published-runs data file: every run names its source, its settings and a model fixture that loads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from ruleengine.architecture import load_hf_config
from ruleengine.memory import MEASUREMENTS, MethodConfig, TrainingSetup

ROOT = Path(__file__).resolve().parents[2]
DATA = yaml.safe_load((ROOT / "tests" / "fixtures" / "published_runs.yaml").read_text(encoding="utf-8"))
RUNS = DATA["runs"]
REQUIRED = ("id", "source", "model", "method", "precision", "optimizer", "micro_batch_size", "seq_len",
            "gradient_checkpointing", "gradient_accumulation", "gpus", "sharding", "measured", "measured_how",
            "published", "published_unit", "measured_gib", "conversion")
UNITS = {"GB": 1e9 / 2**30, "GB total over all GPUs": 1e9 / 2**30, "GiB": 1.0, "bytes": 1 / 2**30}


def test_ids_are_unique_and_there_are_enough_runs():
    ids = [r["id"] for r in RUNS]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


@pytest.mark.parametrize("run", RUNS, ids=[r["id"] for r in RUNS])
def test_every_run_is_complete_and_consistent(run):
    for key in REQUIRED:
        assert run.get(key) is not None, key
    assert run["source"]["url"].startswith("https://") and run["source"]["settings_as_published"]
    assert load_hf_config(str(ROOT / "tests" / "fixtures" / "configs" / f"{run['model']}.json")).params > 0
    TrainingSetup(run["precision"], run["optimizer"], run["micro_batch_size"], run["seq_len"],
                  run["gradient_checkpointing"], run["sharding"], run["gpus"], run.get("attention", "sdpa"),
                  run["gradient_accumulation"]).validate()
    MethodConfig(run["method"], rank=run.get("rank"))
    assert run["measured"] in MEASUREMENTS
    assert set(run.get("pipeline") or []) <= set(DATA["pipelines"])
    per_gpu = run["published"] * UNITS[run["published_unit"]] / (run["gpus"] if "total" in run["published_unit"] else 1)
    assert abs(per_gpu - run["measured_gib"]) < 1e-3  # the stated conversion reproduces the GiB figure


def test_the_bench_script_estimates_every_run():
    spec = importlib.util.spec_from_file_location("bench_published_runs", ROOT / "bench" / "bench_published_runs.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert all(bench.estimate_run(run) > 0 for run in RUNS)
    assert bench.main([]) == 0 and bench.main(["--csv"]) == 0 and bench.main(["--markdown"]) == 0
