"""A generated, valid policy of any size: select and advise rules with overlapping conditions over the
fact vocabulary, thresholds with units, a use-case table, and test cases.

Used by tests/ruleengine/authoring/test_large_policy.py (a 1,000-rule policy through `decide validate`,
`test` and `check`) and bench/bench_check.py (the timings). Every select rule has its own verdict
(a distinct alpha), so no rule is an exact copy of another; conditions are conjunctions over
different facts, so none contradicts itself; the last two rules catch everything.

    python bench/policy_gen.py OUT_DIR [--rules 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import yaml

USE_CASES = {
    "chat": {"label": "Chat", "method": "lora", "rank": 16, "target_modules": "all-linear", "shift": "style_format"},
    "qa": {"label": "Q&A", "method": "lora", "rank": 16, "target_modules": "all-linear", "shift": "domain_adaptation"},
    "code": {"label": "Code", "method": "lora", "rank": 32, "target_modules": "all-linear",
             "shift": "domain_adaptation"},
    "math": {"label": "Math", "method": "lora", "rank": 64, "target_modules": "all-linear",
             "shift": "domain_adaptation"},
    "style": {"label": "Style", "method": "lora", "rank": 4, "target_modules": "attention", "shift": "style_format"},
    "budget": {"label": "Budget", "method": "qlora", "rank": 16, "target_modules": "all-linear",
               "shift": "style_format"},
}
GPUS = {
    "a100-80gb": {"memory_gb": 80, "bf16": True, "tflops": 312, "price_per_hour": 2.45},
    "h100-80gb": {"memory_gb": 79.65, "bf16": True, "tflops": 989, "price_per_hour": 2.99},
    "l40s-48gb": {"memory_gb": 44.99, "bf16": True, "tflops": 362, "price_per_hour": 1.40},
    "l4-24gb": {"memory_gb": 22.49, "bf16": True, "tflops": 121, "price_per_hour": 0.78},
}
THRESHOLDS = {
    "few_examples": {"value": "1k", "unit": "examples"},
    "medium_examples": {"value": "100k", "unit": "examples"},
    "large_examples": {"value": "1M", "unit": "examples"},
    "big_model": {"value": "13B", "unit": "params"},
    "many_requests": {"value": "1M", "unit": "requests/day"},
    "tenants": {"value": 2, "unit": "count"},
    "long_sequences": {"value": 4096, "unit": "tokens"},
}
SHIFTS = ["style_format", "domain_adaptation", "new_knowledge", "continual_pretraining"]
QUALITIES = ["research_best", "production", "prototype"]
METHODS = ["lora", "qlora", "dora", "adalora"]
RANKS = [4, 8, 16, 32, 64]


def _comparisons(rng: random.Random) -> list:
    """Return a pool of comparisons, one per fact (so a conjunction of them never contradicts itself)."""
    return [
        ("data.examples", lambda: {"fact": "data.examples", "op": rng.choice([">=", "<"]),
                                   "value": {"threshold": rng.choice(["few_examples", "medium_examples",
                                                                      "large_examples"])}}),
        ("task.shift", lambda: {"fact": "task.shift", "op": "in", "value": rng.sample(SHIFTS, rng.randint(1, 3))}),
        ("task.quality", lambda: {"fact": "task.quality", "op": rng.choice(["==", "!="]),
                                  "value": rng.choice(QUALITIES)}),
        ("task.use_case", lambda: {"fact": "task.use_case", "op": "in",
                                   "value": rng.sample(sorted(USE_CASES), rng.randint(1, 4))}),
        ("model.params", lambda: {"fact": "model.params", "op": rng.choice([">=", "<"]),
                                  "value": {"threshold": "big_model"}}),
        ("serving.adapters", lambda: {"fact": "serving.adapters", "op": rng.choice([">=", "<"]),
                                      "value": {"threshold": "tenants"}}),
        ("serving.latency_sensitive", lambda: {"fact": "serving.latency_sensitive", "op": "==",
                                               "value": rng.choice([True, False])}),
        ("serving.requests_per_day", lambda: {"fact": "serving.requests_per_day", "op": rng.choice([">=", "<"]),
                                              "value": {"threshold": "many_requests"}}),
        ("hardware.gpu_count", lambda: {"fact": "hardware.gpu_count", "op": rng.choice([">=", "<="]),
                                        "value": rng.choice([1, 2, 4, 8])}),
        ("data.seq_len", lambda: {"fact": "data.seq_len", "op": rng.choice([">=", "<"]),
                                  "value": {"threshold": "long_sequences"}}),
    ]


def _condition(rng: random.Random, pool: list, most: int) -> list:
    return [make() for _, make in rng.sample(pool, rng.randint(1, most))]


def generate(rules: int = 1000, seed: int = 0, cases: int = 0) -> dict:
    """Return the policy document with ``rules`` rules (60% select, 40% advise, two catch-alls among them)."""
    rng = random.Random(seed)
    pool = _comparisons(rng)
    n_select = max(2, int(rules * 0.6))
    out: list[dict] = []
    for k in range(n_select - 2):
        method = rng.choice(METHODS)
        out.append({"id": f"select-{k:04d}", "priority": 10 + k, "when": _condition(rng, pool, 3),
                    "then": {"method": method, "rank": rng.choice(RANKS), "alpha": float(k + 1)},
                    "rationale": f"generated select rule {k}"})
    out.append({"id": "table", "priority": 100000, "when": [], "then": {"use_case": True},
                "rationale": "the use-case table"})
    out.append({"id": "last-resort-qlora", "priority": 100001, "when": [],
                "then": {"method": "qlora", "rank": 8, "target_modules": "all-linear"}, "rationale": "the fallback"})
    for k in range(rules - n_select):
        when = _condition(rng, pool, 3)
        if k % 3 == 0:
            when.append({"fact": "verdict.feasible", "op": "==", "value": True})
        out.append({"id": f"advise-{k:04d}", "kind": "advise", "priority": 10 + k, "when": when,
                    "note": [{"code": f"note-{k:04d}", "message": f"generated advice {k}"}],
                    "rationale": f"generated advise rule {k}"})
    return {"language": "finetune-policy/v1", "name": f"generated-{rules}", "version": "1.0.0",
            "gpus": GPUS, "thresholds": THRESHOLDS,
            "defaults": {"facts": {"hardware": {"gpu": "a100-80gb"}, "task": {"use_case": "chat"}}},
            "use_cases": USE_CASES, "rules": out}


def random_facts(rng: random.Random) -> dict:
    """Return one valid given-facts document for the generated policies."""
    facts = {"model": {"params": rng.choice(["1B", "3B", "7B", "13B", "34B"])},
             "hardware": {"gpu": rng.choice(sorted(GPUS)), "gpu_count": rng.choice([1, 2, 4, 8])},
             "data": {"examples": rng.choice([500, 5000, 50000, 200000, 2000000]),
                      "seq_len": rng.choice([1024, 2048, 8192])},
             "task": {"use_case": rng.choice(sorted(USE_CASES)), "shift": rng.choice(SHIFTS),
                      "quality": rng.choice(QUALITIES)},
             "serving": {"adapters": rng.choice([1, 3]), "latency_sensitive": rng.choice([True, False]),
                         "requests_per_day": rng.choice([0, 5_000_000])}}
    return facts


def write(folder: Path, rules: int = 1000, seed: int = 0, expectations: dict | None = None) -> Path:
    """Write the policy (and, given ``expectations`` {case note: (facts, expect)}, its case file) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.yaml").write_text(yaml.safe_dump(generate(rules, seed), sort_keys=False, width=120),
                                        encoding="utf-8")
    if expectations:
        (folder / "tests").mkdir(exist_ok=True)
        cases = [{"note": note, "facts": facts, "expect": expect} for note, (facts, expect) in expectations.items()]
        (folder / "tests" / "cases.yaml").write_text(yaml.safe_dump({"cases": cases}, sort_keys=False),
                                                     encoding="utf-8")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Write a generated policy to OUT_DIR."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write(Path(args.out), args.rules, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
