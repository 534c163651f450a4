"""Realistic, varied decision facts for the benchmarks (seeded): 1B-405B models, the catalog's GPUs, 1-8 GPUs.

``varied(n)`` draws models from published sizes (what users give), data sizes log-uniformly, every use
case, shift and quality, serving facts and sometimes training settings. ``cold(n)`` makes every model
size unique, so no derivation can be reused between decisions. ``infeasible(n)`` are fact sets no
method fits (large models on one small GPU).
"""

from __future__ import annotations

import random
from typing import Any

SIZES = ("1B", "1.1B", "1.5B", "2B", "3B", "7B", "8B", "9B", "13B", "14B", "27B", "32B", "34B", "70B", "72B",
         "123B", "405B")
COUNTS = (1, 1, 1, 2, 4, 8, 8)
SHIFTS = ("style_format", "domain_adaptation", "new_knowledge", "continual_pretraining")
QUALITIES = ("research_best", "production", "prototype")


def _examples(rng: random.Random) -> int:
    value = 10 ** rng.uniform(2.3, 6.7)
    digits = len(str(int(value))) - 2
    return int(round(value, -max(digits, 0)))


def one(rng: random.Random, gpus: list[str], use_cases: list[str], params: Any = None) -> dict:
    """Return one realistic facts document."""
    facts: dict[str, Any] = {
        "model": {"params": params if params is not None else rng.choice(SIZES)},
        "hardware": {"gpu": rng.choice(gpus), "gpu_count": rng.choice(COUNTS)},
        "data": {"examples": _examples(rng), "avg_tokens": rng.choice((256, 512, 1024))},
        "task": {"use_case": rng.choice(use_cases), "quality": rng.choice(QUALITIES)},
        "serving": {"latency_sensitive": rng.random() < 0.4},
    }
    if rng.random() < 0.4:
        facts["task"]["shift"] = rng.choice(SHIFTS)
    if rng.random() < 0.3:
        facts["serving"]["requests_per_day"] = rng.choice(("100k", "1M", "10M"))
    if rng.random() < 0.2:
        facts["serving"]["adapters"] = rng.choice((2, 5, 20, 100))
    if rng.random() < 0.15:
        facts["data"]["seq_len"] = rng.choice((1024, 4096, 8192))
    if rng.random() < 0.1:
        facts["training"] = {"precision": rng.choice(("bf16_mixed", "bf16_pure")),
                             "optimizer": rng.choice(("adamw", "adamw_8bit"))}
    return facts


def varied(policy: Any, n: int, seed: int = 0) -> list[dict]:
    """Return ``n`` varied facts documents valid under ``policy`` (its GPUs and use cases)."""
    rng = random.Random(seed)
    gpus, use_cases = sorted(policy.gpus), sorted(policy.use_cases)
    return [one(rng, gpus, use_cases) for _ in range(n)]


def cold(policy: Any, n: int, seed: int = 1) -> list[dict]:
    """Return ``n`` facts whose model sizes are all different (log-uniform 1B-405B)."""
    rng = random.Random(seed)
    gpus, use_cases = sorted(policy.gpus), sorted(policy.use_cases)
    return [one(rng, gpus, use_cases, params=int(10 ** rng.uniform(9, 11.6))) for _ in range(n)]


def infeasible(policy: Any, n: int, seed: int = 2) -> list[dict]:
    """Return ``n`` facts no method fits: 70B-405B models on one GPU of at most 24 GiB."""
    rng = random.Random(seed)
    small = sorted(g for g, spec in policy.gpus.items() if spec["memory_gb"] <= 24)
    use_cases = sorted(policy.use_cases)
    out = []
    for _ in range(n):
        facts = one(rng, small, use_cases, params=rng.choice(("70B", "123B", "405B")))
        facts["hardware"]["gpu_count"] = 1
        facts.pop("training", None)
        out.append(facts)
    return out
