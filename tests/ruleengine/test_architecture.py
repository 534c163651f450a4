"""Architecture from a HF config.json (exact parameter counts) or inferred from a parameter count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ruleengine.architecture import (
    SUPPORTED_MODEL_TYPES,
    ArchitectureError,
    from_hf_config,
    infer_from_params,
    load_hf_config,
    shape_params,
)

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
FIXTURES = sorted(p.stem for p in CONFIGS.glob("*.json"))

# Parameter counts as the model cards / print_trainable_parameters report them.
PUBLISHED_PARAMS = {
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "llama-3-8b": 8_030_261_248,
    "llama-3.2-3b": 3_212_749_824,
    "llama-3.1-70b": 70_553_706_496,
    "mistral-7b-v0.1": 7_241_732_096,
    "qwen2-7b": 7_615_616_512,
    "tinyllama-1.1b": 1_100_048_384,
    "qwen-7b-v1-shape": 7_721_324_544,  # Qwen-7B (v1): "7.72B" in its README
}


def config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_equals_the_published_count(name):
    arch = load_hf_config(str(CONFIGS / f"{name}.json"))
    assert arch.params == PUBLISHED_PARAMS[name]
    assert arch.source == "config"


@pytest.mark.parametrize("name", FIXTURES)
def test_breakdown_sums_to_params_and_shape_agrees(name):
    arch = load_hf_config(str(CONFIGS / f"{name}.json"))
    parts = arch.param_breakdown()
    assert sum(parts.values()) == arch.params
    assert min(parts.values()) >= 0
    assert shape_params(arch) == arch.params


def test_linear_modules_use_peft_names_and_gqa_widths():
    arch = load_hf_config(str(CONFIGS / "llama-3-8b.json"))
    assert arch.linear_modules() == {
        "q_proj": (4096, 4096), "k_proj": (4096, 1024), "v_proj": (4096, 1024), "o_proj": (4096, 4096),
        "gate_proj": (4096, 14336), "up_proj": (4096, 14336), "down_proj": (14336, 4096)}
    assert (arch.num_kv_heads, arch.head_dim, arch.mlp) == (8, 128, "gated")
    opt = load_hf_config(str(CONFIGS / "opt-1.3b.json"))
    assert list(opt.linear_modules()) == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert opt.mlp == "plain" and opt.feedforward_modules() == ("fc2",)


def test_family_specific_parameters():
    qwen2 = load_hf_config(str(CONFIGS / "qwen2-7b.json"))
    assert qwen2.attention_bias and not qwen2.output_bias  # q/k/v bias, no o_proj bias
    qwen3 = load_hf_config(str(CONFIGS / "qwen3-8b.json"))
    assert qwen3.qk_norm and qwen3.q_dim == 4096 and qwen3.head_dim == 128
    tied = load_hf_config(str(CONFIGS / "llama-3.2-3b.json"))
    untied = from_hf_config({**config("llama-3.2-3b"), "tie_word_embeddings": False})
    assert untied.params - tied.params == 128256 * 3072
    opt350 = load_hf_config(str(CONFIGS / "opt-350m.json"))
    assert opt350.word_embed_proj_dim == 512 and not opt350.final_norm  # post-norm OPT-350m


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                                 "vocab_size"])
def test_missing_required_key_names_the_field(key):
    cfg = config("llama-2-7b")
    del cfg[key]
    with pytest.raises(ArchitectureError) as exc:
        from_hf_config(cfg, "cfg.json")
    assert exc.value.field == key
    assert key in str(exc.value) and "cfg.json" in str(exc.value)


@pytest.mark.parametrize("key,value", [("hidden_size", "4096"), ("num_hidden_layers", 0), ("vocab_size", 3.5),
                                       ("num_attention_heads", True), ("tie_word_embeddings", "no")])
def test_invalid_value_names_the_field(key, value):
    cfg = {**config("llama-2-7b"), key: value}
    with pytest.raises(ArchitectureError) as exc:
        from_hf_config(cfg)
    assert exc.value.field == key


def test_inconsistent_heads_are_rejected():
    with pytest.raises(ArchitectureError) as exc:
        from_hf_config({**config("llama-2-7b"), "num_attention_heads": 33})
    assert exc.value.field == "num_attention_heads"
    with pytest.raises(ArchitectureError) as exc:
        from_hf_config({**config("llama-2-7b"), "num_key_value_heads": 5})
    assert exc.value.field == "num_key_value_heads"


def test_unsupported_model_type_lists_the_supported_ones():
    with pytest.raises(ArchitectureError) as exc:
        from_hf_config({**config("llama-2-7b"), "model_type": "falcon"})
    assert exc.value.field == "model_type"
    assert "falcon" in str(exc.value)
    for supported in SUPPORTED_MODEL_TYPES:
        assert supported in str(exc.value)
    with pytest.raises(ArchitectureError) as exc:
        from_hf_config({"hidden_size": 8})
    assert exc.value.field == "model_type"


def test_load_errors_for_files(tmp_path):
    with pytest.raises(ArchitectureError, match="no such file"):
        load_hf_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ArchitectureError, match="not valid JSON"):
        load_hf_config(str(tmp_path))  # a model directory works too
    bad.write_text("[1, 2]")
    with pytest.raises(ArchitectureError, match="JSON object"):
        load_hf_config(str(bad))


# --- inferred -------------------------------------------------------------------------------

def test_inferred_architecture_uses_the_given_count():
    arch = infer_from_params(6.74e9)
    assert arch.source == "inferred" and arch.params == 6_740_000_000
    assert (arch.hidden_size, arch.num_layers, arch.intermediate_size) == (4096, 32, 11008)  # Llama-2-7B's shape
    parts = arch.param_breakdown()
    assert sum(parts.values()) == arch.params and parts["linear"] > 0.8 * arch.params


@pytest.mark.parametrize("n", [1.5e8, 3.5e8, 1.1e9, 2e9, 3.2e9, 7e9, 8e9, 13e9, 20e9, 34e9, 70e9, 180e9, 405e9, 1e12])
def test_inferred_shape_is_close_to_the_count(n):
    arch = infer_from_params(n)
    assert abs(shape_params(arch) / n - 1) < 0.20


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=5e7, max_value=2e12), st.floats(min_value=1.0, max_value=3.0))
def test_inferred_dimensions_never_shrink_as_the_model_grows(n, factor):
    small, large = infer_from_params(n), infer_from_params(n * factor)
    for attr in ("hidden_size", "num_layers", "intermediate_size", "num_attention_heads", "vocab_size", "kv_dim"):
        assert getattr(large, attr) >= getattr(small, attr), attr
    assert large.param_breakdown()["embedding"] >= small.param_breakdown()["embedding"]


@pytest.mark.parametrize("bad", [0, 1e6, float("nan"), float("inf"), -5.0])
def test_inference_rejects_impossible_counts(bad):
    with pytest.raises(ArchitectureError) as exc:
        infer_from_params(bad)
    assert exc.value.field == "params"


def test_decision_modules_never_import_the_training_stack():
    code = ("import sys; import ruleengine.architecture, ruleengine.trainable, ruleengine.memory, ruleengine.cost; "
            "bad = [m for m in ('torch', 'transformers', 'peft', 'accelerate', 'bitsandbytes') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- against transformers (meta device) ----------------------------------------------------

@pytest.mark.train
@pytest.mark.parametrize("name", FIXTURES)
def test_parameter_count_equals_the_meta_model(name):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    accelerate = pytest.importorskip("accelerate")
    cfg = config(name)
    hf_config = transformers.AutoConfig.for_model(**cfg)
    with accelerate.init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    model.tie_weights()  # from_pretrained ties; from_config under init_empty_weights leaves them apart
    expected = sum(p.numel() for p in model.parameters())
    assert from_hf_config(cfg, name).params == expected
