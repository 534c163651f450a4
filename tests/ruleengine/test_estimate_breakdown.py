"""`decide estimate --breakdown`: the estimate term by term, for a config of every family of the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ruleengine.architecture import FAMILIES, SUPPORTED_MODEL_TYPES, load_hf_config
from ruleengine.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
# one fixture config per model_type of the family table (and the unknown-type fallback)
FAMILY_CONFIGS = {
    "cohere": "cohere-small-qknorm", "deepseek_v2": "deepseek-v2-lite", "deepseek_v3": "deepseek-v3-small",
    "falcon": "falcon-40b", "gemma": "gemma-2b", "gemma2": "gemma-2-9b", "gemma3": "gemma-3-4b",
    "gemma3_text": "gemma-3-1b", "gpt2": "gpt2", "gpt_neox": "pythia-160m", "llama": "llama-2-13b",
    "mistral": "mistral-7b-v0.1", "mixtral": "mixtral-8x7b", "olmo": "olmo-1b", "olmo2": "olmo-2-7b",
    "opt": "opt-1.3b", "phi": "phi-1.5", "phi3": "phi-3-mini", "qwen": "qwen-7b", "qwen2": "qwen2-7b",
    "qwen2_moe": "qwen1.5-moe-a2.7b", "qwen3": "qwen3-8b", "qwen3_moe": "qwen3-30b-a3b", "stablelm": "stablelm-2-1.6b",
    "starcoder2": "starcoder2-3b", "unknown": "unknown-llama-like",
}
COMPONENTS = {"weights", "gradients", "optimizer", "quant_constants", "activations", "logits", "overhead"}


def test_every_family_has_a_fixture():
    assert set(SUPPORTED_MODEL_TYPES) | {"unknown"} == set(FAMILY_CONFIGS)
    assert set(FAMILIES) <= set(FAMILY_CONFIGS)


def _estimate(config: str, *extra: str) -> dict:
    result = CliRunner().invoke(main, ["estimate", "--model-config", str(CONFIGS / f"{config}.json"), "--gpu",
                                       "h100-80gb", "--breakdown", "all", "--format", "json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_breakdown_of_every_method_sums_to_its_estimate(family):
    config = FAMILY_CONFIGS[family]
    data = _estimate(config)
    arch = load_hf_config(str(CONFIGS / f"{config}.json"))
    assert data["architecture_summary"]["family"] == (arch.family or arch.model_type)
    for method, entry in data["breakdown"].items():
        estimate = data["estimates"][method]
        if entry.get("inapplicable"):  # e.g. DoRA where peft would adapt a MoE model's routed experts
            assert estimate["inapplicable"] == entry["inapplicable"] and not estimate["fits"]
            continue
        rows = entry["rows"]
        assert {r["component"] for r in rows} <= COMPONENTS and all(r["detail"] for r in rows)
        assert sum(r["gib"] for r in rows) == pytest.approx(entry["total_gib"], abs=2e-3)
        assert entry["total_gib"] == pytest.approx(estimate["memory"]["total_gib"], abs=1e-3)
        for component in ("weights", "optimizer", "logits", "quant_constants"):
            shown = estimate["memory"][f"{component}_gib"]
            assert sum(r["gib"] for r in rows if r["component"] == component) == pytest.approx(shown, abs=2e-3)
        assert entry["settings"]["micro_batch_size"] == estimate["micro_batch_size"]
    if arch.is_moe:  # the activations say how many experts a token passes through
        details = " ".join(r["detail"] for r in data["breakdown"]["lora"]["rows"])
        assert f"top-{arch.num_experts_per_tok} of {arch.num_experts} routed experts" in details


def test_the_text_breakdown_shows_each_term_and_the_total():
    result = CliRunner().invoke(main, ["estimate", "--model-config", str(CONFIGS / "mixtral-8x7b.json"), "--gpu",
                                       "h100-80gb", "--gpus", "4", "--breakdown", "qlora", "--breakdown", "full_ft"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "MoE: 8 routed experts per MoE layer, 2 per token" in out
    assert "4-bit NF4 linear weights" in out and "routed experts) x 4 B" in out  # experts stay unquantized
    assert "NF4 absmax scales" in out and "logits and cross-entropy" in out and "CUDA context" in out
    assert "layers gathered for compute" in out or "/ 4 GPUs" in out
    assert sum(1 for line in out.splitlines() if line.startswith("  total ")) == 2


def test_an_unknown_breakdown_method_is_a_usage_error():
    result = CliRunner().invoke(main, ["estimate", "--model-params", "7B", "--gpu", "h100-80gb", "--breakdown", "lorra"])
    assert result.exit_code == 2 and "lorra" in result.output
