"""Fixtures for the executor tests: the tiny Llama model (built once per session) and verdicts.

Tests that need torch/transformers/peft are marked ``@pytest.mark.train``; the ``tiny_model``
fixture skips when the training extra is not installed.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "data"

BASE_VERDICT = {
    "method": "lora", "rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear", "use_dora": False,
    "num_virtual_tokens": None, "adapter_size": None, "init_rank": None, "quantization": None,
    "training": {"precision": "bf16_mixed", "optimizer": "adamw", "learning_rate": 1e-2, "lr_scheduler": "constant",
                 "warmup_ratio": 0.0, "epochs": 3, "micro_batch_size": 8, "gradient_accumulation_steps": 1,
                 "gradient_checkpointing": True, "seq_len": 128, "sharding": "none", "gpu_count": 1,
                 "layerwise_lr_decay": None},
    "multitask": None,
}

#: learning rates that make the loss fall within ~20 steps on the random tiny model
FAST_LR = {"full_ft": 3e-3, "lora": 1e-2, "qlora": 1e-2, "dora": 1e-2, "adalora": 1e-2, "ia3": 5e-2,
           "prompt_tuning": 1e-1, "prefix_tuning": 1e-1}


def make_verdict(method: str = "lora", **changes) -> dict:
    """Return a verdict dict (DESIGN.md shape) for ``method``; ``training`` changes merge into its training."""
    verdict = copy.deepcopy(BASE_VERDICT)
    verdict["method"] = method
    verdict["use_dora"] = method == "dora"
    verdict["training"]["learning_rate"] = FAST_LR.get(method, 1e-2)
    if method in ("prompt_tuning", "prefix_tuning"):
        verdict.update(rank=None, alpha=None, target_modules=None, num_virtual_tokens=8)
    if method in ("full_ft", "ia3"):
        verdict.update(rank=None, alpha=None)
    if method == "full_ft":
        verdict["target_modules"] = None
    if method == "adalora":
        verdict["init_rank"] = 12
    if method == "qlora":
        verdict["quantization"] = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    training = changes.pop("training", None)
    verdict.update(changes)
    if training:
        verdict["training"].update(training)
    return verdict


@pytest.fixture(scope="session")
def verdict():
    """Return the ``make_verdict`` helper."""
    return make_verdict


def training_available() -> bool:
    """Return True when torch, transformers and peft are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "peft"))


@pytest.fixture(scope="session", autouse=True)
def _private_caches(tmp_path_factory):
    """Keep the tokenization cache and the datasets cache of the tests out of the user's home (one per session)."""
    import os

    root = tmp_path_factory.mktemp("caches")
    saved = {k: os.environ.get(k) for k in ("FINETUNE_POLICY_CACHE", "HF_DATASETS_CACHE")}
    os.environ["FINETUNE_POLICY_CACHE"] = str(root / "finetune-policy")
    os.environ["HF_DATASETS_CACHE"] = str(root / "datasets")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Return the path of a tiny random Llama (hidden 64, 2 layers, 4 heads, 2 kv heads) and its tokenizer."""
    if not training_available():
        pytest.skip("the training extra (torch, transformers, peft) is not installed")
    from executors.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def engine() -> None:
    """Make sure the decision engine and the bundled default policy work (the plan tests decide first)."""
    from ruleengine.api import decide
    from ruleengine.policy import load_policy

    decision = decide(load_policy(None), {"model": {"params": "1B"}, "hardware": {"gpu": "a100-80gb"},
                                         "data": {"examples": 1000}})
    assert decision.feasible


@pytest.fixture(scope="session")
def examples() -> Path:
    """Return the bundled example data directory (examples/data)."""
    return EXAMPLES


CPU_DEVICE = {"type": "cpu", "count": 1, "name": "x86_64", "bf16": False, "fp16": False}


@pytest.fixture(scope="session")
def trained():
    """Return ``train_run(verdict, model, data, out, **plan_options)``: plan and train, returning the RunResult."""
    return train_run


def train_run(verdict: dict, model: str, data: list[str], out, **options):
    """Plan ``verdict`` on ``model`` with ``data`` (PlanOptions ``options``) and train it into ``out``; returns the RunResult."""
    from executors.plan import PlanOptions, build_plan
    from executors.runner import run_training

    opts = {"max_steps": 6, "eval_fraction": 0.1, "eval_strategy": "no", **options}
    plan = build_plan(verdict, model_path=model, data_files=data, options=PlanOptions(**opts), device=CPU_DEVICE)
    return run_training(plan, str(out), progress=False, log=lambda m: None)
