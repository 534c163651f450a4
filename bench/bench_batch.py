"""`decide batch` throughput on 2 cores, as a ratio against deciding the same facts one by one in-process.

Writes JSONL inputs (bench/facts_gen.py), runs `decide batch --no-audit` in a subprocess with 1 and 2
workers and prints decisions per second. Two inputs: "varied" (every line different: 1B-405B models,
every GPU, data sizes drawn log-uniformly) and "fleet" (what a platform team re-decides: 2,000
distinct job configurations, each appearing many times). The baseline is the in-process
``PolicyEngine.decide`` loop (one core, memo off) on the same varied facts. Goal (issue 8): >= 20,000
decisions/s on 2 cores.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facts_gen import varied  # noqa: E402

from ruleengine import api  # noqa: E402


def run_batch(path: str, workers: int, detail: str = "summary") -> tuple[float, int]:
    """Return (seconds, lines written) of `decide batch` on ``path`` in a fresh process."""
    out = path + ".out"
    cmd = [sys.executable, "-m", "ruleengine.cli", "batch", path, "-o", out, "--no-audit", "--workers", str(workers),
           "--detail", detail]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"decide batch failed ({done.returncode}): {done.stderr[-2000:]}")
    with open(out, encoding="utf-8") as fh:
        lines = sum(1 for _ in fh)
    return seconds, lines


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40_000
    engine = api.PolicyEngine(api.open_policy(None).policy, memo_size=0)
    policy = engine.policy
    with tempfile.TemporaryDirectory() as tmp:
        unique = varied(policy, n, seed=5)
        rng = random.Random(6)
        jobs = varied(policy, 2000, seed=7)
        fleet = [rng.choice(jobs) for _ in range(n)]
        paths = {}
        for name, rows in (("varied", unique), ("fleet", fleet)):
            paths[name] = os.path.join(tmp, f"{name}.jsonl")
            with open(paths[name], "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
        sample = unique[:3000]
        t = time.perf_counter()
        for facts in sample:
            engine.decide(facts)
        base = len(sample) / (time.perf_counter() - t)
        print(f"{n} inputs per run; baseline: in-process decide() loop, 1 core, memo off: {base:,.0f} decisions/s")
        print(f"{'input':<10}{'workers':>8}{'detail':>9}{'seconds':>9}{'decisions/s':>13}{'x baseline':>12}")
        for name in ("varied", "fleet"):
            for workers in (1, 2):
                seconds, lines = run_batch(paths[name], workers)
                assert lines == n, f"{lines} lines for {n} inputs"
                print(f"{name:<10}{workers:>8}{'summary':>9}{seconds:>9.1f}{n / seconds:>13,.0f}{n / seconds / base:>12.1f}")
        seconds, _ = run_batch(paths["varied"], 2, "full")
        print(f"{'varied':<10}{2:>8}{'full':>9}{seconds:>9.1f}{n / seconds:>13,.0f}{n / seconds / base:>12.1f}")


if __name__ == "__main__":
    main()
