"""Benchmark: memory estimates per second, relative to a baseline measured in the same process.

Prints the throughput of ``ruleengine.memory.estimate`` (every method, a few setups) and of
``estimate_cost``, each as a ratio to a trivial arithmetic loop timed right before, so numbers are
comparable across machines. No assertions: this is for watching trends (``make bench``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ruleengine.architecture import infer_from_params, load_hf_config  # noqa: E402
from ruleengine.cost import CostConstants, estimate_cost  # noqa: E402
from ruleengine.memory import MemoryConstants, MethodConfig, TrainingSetup, estimate  # noqa: E402
from ruleengine.vocabulary import METHODS  # noqa: E402

CONFIG = ROOT / "tests" / "fixtures" / "configs" / "llama-3-8b.json"


def _rate(fn, min_seconds: float = 0.5) -> float:
    """Return calls per second of ``fn`` over at least ``min_seconds`` (best of 3 rounds)."""
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds / 3:
                break
        best = max(best, n / elapsed)
    return best


def _baseline() -> None:
    """A trivial arithmetic loop of about the size of one estimate's Python work (1000 multiply-adds)."""
    acc = 0.0
    for i in range(1000):
        acc += i * 1.0001
    return None


def main() -> None:
    """Print estimates/second and the ratio to the baseline for config-based and inferred architectures."""
    constants = MemoryConstants.from_policy(None)
    cost_constants = CostConstants.from_policy(None)
    archs = {"config (Llama-3-8B)": load_hf_config(str(CONFIG)), "inferred (13B)": infer_from_params(13e9)}
    setups = [TrainingSetup(), TrainingSetup(micro_batch_size=8, seq_len=4096, gradient_checkpointing=False),
              TrainingSetup(sharding="zero3", gpu_count=8)]
    cfgs = [MethodConfig(m, rank=16, num_virtual_tokens=20, adapter_size=64) for m in METHODS]
    base = _rate(_baseline)
    print(f"baseline: {base:,.0f} loops/s (1000 multiply-adds each)")
    for label, arch in archs.items():
        def all_estimates(arch=arch) -> None:
            for setup in setups:
                for cfg in cfgs:
                    estimate(arch, cfg, setup, constants)

        per_call = len(setups) * len(cfgs)
        rate = _rate(all_estimates) * per_call
        print(f"estimate, {label}: {rate:,.0f} estimates/s = {rate / base:.2f} x baseline")
    arch = archs["config (Llama-3-8B)"]

    def costs() -> None:
        for cfg in cfgs:
            estimate_cost(arch, cfg, setups[0], tokens_total=1e8, epochs=3, gpu_tflops=312, price_per_hour=4.1,
                          constants=cost_constants)

    rate = _rate(costs) * len(cfgs)
    print(f"estimate_cost: {rate:,.0f} estimates/s = {rate / base:.2f} x baseline")


if __name__ == "__main__":
    main()
