"""Hand-built decision dicts shaped like Decision.to_dict(), shared by conftest.py and _writer.py."""

from __future__ import annotations

import itertools

from ruleengine.audit import snapshot_hash
from ruleengine.decision import new_decision_id

SNAPSHOT = {"root": "policy.yaml", "files": {"policy.yaml": "language: finetune-policy/v1\nname: test\n"
                                                            "version: 1.2.0\ninclude: [rules.yaml]\n",
                                             "rules.yaml": "rules: []\n"}}
_clock = itertools.count(1_700_000_000_000, 7)


def make_decision(method: str | None = "lora", rank: int | None = 16, *, use_case: str = "domain_qa",
                  policy_sha: str | None = None, policy_name: str = "test", warnings: list | None = None,
                  decision_id: str | None = None) -> dict:
    """Return a decision dict shaped like Decision.to_dict(); ``method=None`` makes an infeasible one."""
    sha = policy_sha or snapshot_hash(SNAPSHOT)
    verdict = None if method is None else {
        "method": method, "rank": rank, "alpha": (2 * rank if rank else None), "dropout": 0.05,
        "target_modules": "all-linear", "use_dora": False, "num_virtual_tokens": None, "adapter_size": None,
        "quantization": None, "training": {"precision": "bf16_mixed", "epochs": 3, "gpu_count": 1},
        "multitask": None}
    given = {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 1},
             "data": {"examples": "50k"}, "task": {"use_case": use_case}}
    return {
        "schema_version": "1",
        "decision_id": decision_id or new_decision_id(next(_clock)),
        "created_at": "2025-01-02T03:04:05.678Z",
        "policy": {"name": policy_name, "version": "1.2.0", "sha256": sha},
        "facts": {"given": given, "normalized": {**given, "model": {"params": 7e9}}},
        "derived": {"model.params": 7e9, "hardware.usable_gb": 72.5},
        "architecture": {"num_layers": 32},
        "feasible": method is not None,
        "verdict": verdict,
        "chosen_rule": f"{use_case}-{method}" if method else None,
        "rationale": "because the table says so" if method else "",
        "source": "reference table",
        "matched_rules": [f"{use_case}-{method}"] if method else [],
        "advice_rules": [],
        "rejected": [{"method": "full_ft", "code": "memory", "reason": "needs 112.0 GiB > 72.5 usable",
                      "condition": None, "margin_gb": -39.5, "rule": None},
                     {"method": "qlora", "code": "conditions", "rule": "limited-budget-qlora",
                      "condition": {"fact": "hardware.gpu_memory_gb", "op": "<=", "actual": 80, "expected": 24,
                                    "margin": 56}, "reason": "rule `limited-budget-qlora` does not apply",
                      "margin_gb": 60.1}],
        "warnings": warnings if warnings is not None else [{"code": "overfit", "message": "watch for overfitting",
                                                            "rule": f"{use_case}-{method}"}],
        "notes": [],
        "estimates": {"lora": {"memory": {"total_gib": 17.2}, "fits": True}},
        "suggestions": [],
        "trace": [{"kind": "select", "rule": f"{use_case}-{method}", "matched": True}],
        "metrics": {"normalize_ms": 0.5, "evaluate_ms": 3.25, "total_ms": 4.0, "engine": "durable_rules"},
    }


PLAN = [("lora", 16, "domain_qa"), ("qlora", 16, "limited_budget"), ("full_ft", None, "domain_pretraining"),
        ("lora", 32, "code_generation"), (None, None, "style_tone"), ("lora", 4, "personalization"),
        ("lora", 16, "chat"), ("lora", 64, "math_reasoning")]
