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
    FAMILIES,
    ArchitectureError,
    exact_architecture,
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
    "qwen-7b": 7_721_324_544,  # the same model under its own (remote-code) model_type
    "gpt2": 124_439_808,
    "pythia-160m": 162_322_944,
    "phi-2": 2_779_683_840,
    "phi-3-mini": 3_821_079_552,
    "gemma-2b": 2_506_172_416,
    "gemma-2-9b": 9_241_705_984,
    "gemma-3-1b": 999_885_952,
    "gemma-3-4b": 4_300_079_472,  # vision tower and projector included, as Gemma3ForConditionalGeneration
    "falcon-7b": 6_921_720_704,
    "starcoder2-3b": 3_030_371_328,
    "olmo-1b": 1_176_764_416,
    "mixtral-8x7b": 46_702_792_704,
    "qwen1.5-moe-a2.7b": 14_315_784_192,
    "qwen3-30b-a3b": 30_532_122_624,
    "deepseek-v2-lite": 15_706_484_224,
}
# Configs transformers cannot build: remote code (Qwen v1) and a model_type nobody knows.
NOT_IN_TRANSFORMERS = {"qwen-7b", "unknown-llama-like"}


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


def test_unknown_model_type_with_the_common_fields_is_estimated_with_a_warning():
    arch = load_hf_config(str(CONFIGS / "unknown-llama-like.json"))
    llama = from_hf_config({**config("unknown-llama-like"), "model_type": "llama"})
    assert arch.params == llama.params and arch.linear_modules() == llama.linear_modules()
    assert len(arch.warnings) == 1
    warning = arch.warnings[0]
    for assumed in ("my_new_decoder", "Llama-style", "q/k/v/o", "SwiGLU", "RMSNorm", "rotary"):
        assert assumed in warning
    moe = from_hf_config({**config("unknown-llama-like"), "num_local_experts": 4, "num_experts_per_tok": 2})
    assert moe.is_moe and "routed experts" in moe.warnings[0] and moe.num_experts == 4
    assert not load_hf_config(str(CONFIGS / "llama-3-8b.json")).warnings


def test_unknown_model_type_without_the_common_fields_names_the_missing_one():
    cfg = {k: v for k, v in config("unknown-llama-like").items() if k != "intermediate_size"}
    with pytest.raises(ArchitectureError) as exc:
        from_hf_config(cfg, "cfg.json")
    assert exc.value.field == "intermediate_size"
    assert "my_new_decoder" in str(exc.value) and "falcon" in str(exc.value)  # lists the known types
    with pytest.raises(ArchitectureError) as exc:
        from_hf_config({"hidden_size": 8})
    assert exc.value.field == "model_type"


@pytest.mark.parametrize("name,missing", [("mixtral-8x7b", "num_local_experts"), ("deepseek-v3", "kv_lora_rank"),
                                          ("gpt2", "n_embd"), ("falcon-7b", "num_attention_heads"),
                                          ("qwen1.5-moe-a2.7b", "moe_intermediate_size")])
def test_family_specific_missing_key_names_the_field(name, missing):
    cfg = {k: v for k, v in config(name).items() if k != missing}
    family = FAMILIES[cfg["model_type"]]
    if missing in family.defaults:  # a default exists: the closed form uses it, as transformers does
        assert from_hf_config(cfg).params > 0
        return
    with pytest.raises(ArchitectureError) as exc:
        from_hf_config(cfg, "cfg.json")
    assert missing in str(exc.value) and "cfg.json" in str(exc.value)
    assert exc.value.field == ("hidden_size" if missing == "n_embd" else missing)  # the first name it is read by


def test_moe_structure_mixtral():
    arch = load_hf_config(str(CONFIGS / "mixtral-8x7b.json"))
    assert arch.is_moe and (arch.num_experts, arch.num_experts_per_tok) == (8, 2)
    assert (arch.num_moe_layers, arch.num_dense_layers) == (32, 0)
    linears = arch.linears()
    assert linears["experts.gate_up_proj"].kind == "expert" and linears["experts.gate_up_proj"].copies == 8
    assert arch.linear_modules()["experts.gate_up_proj"] == (4096, 2 * 14336)
    assert arch.linear_modules()["experts.down_proj"] == (14336, 4096)
    assert linears["gate"].kind == "router" and arch.linear_modules()["gate"] == (4096, 8)
    assert arch.module_counts()["experts.down_proj"] == 32 * 8
    assert arch.active_module_counts()["experts.down_proj"] == 32 * 2
    assert arch.expert_params() == 32 * 8 * 3 * 4096 * 14336
    assert arch.active_params == 12_879_925_248  # Mixtral's "12.9B active parameters"
    assert arch.mlp_modules()[-1] == "experts.down_proj"  # the memory model reads the last one as a down projection


def test_moe_structure_deepseek_mla_and_dense_layers():
    v3 = load_hf_config(str(CONFIGS / "deepseek-v3.json"))
    assert v3.attention == "mla" and (v3.num_dense_layers, v3.num_moe_layers) == (3, 58)
    assert (v3.num_experts, v3.num_experts_per_tok, v3.num_shared_experts) == (256, 8, 1)
    mods = v3.linear_modules()
    assert mods["q_a_proj"] == (7168, 1536) and mods["q_b_proj"] == (1536, 128 * 192)
    assert mods["kv_a_proj_with_mqa"] == (7168, 512 + 64) and mods["kv_b_proj"] == (512, 128 * (128 + 128))
    assert mods["o_proj"] == (128 * 128, 7168)
    assert mods["mlp.down_proj"] == (18432, 7168) and mods["shared_experts.down_proj"] == (2048, 7168)
    counts = v3.module_counts()
    assert counts["mlp.down_proj"] == 3 and counts["shared_experts.down_proj"] == 58
    assert counts["experts.gate_up_proj"] == 58 * 256
    assert v3.head_dim == 192 and v3.v_head_dim == 128 and v3.q_dim == 128 * 192
    assert abs(v3.active_params / 37.5e9 - 1) < 0.02  # "37B activated" (+ the dense lm_head/embeddings)
    lite = load_hf_config(str(CONFIGS / "deepseek-v2-lite.json"))
    assert lite.q_lora_rank == 0 and "q_proj" in lite.linear_modules()  # q_lora_rank null: q projected directly
    groups = {g.kind: g for g in lite.layer_groups}
    assert groups["dense"].layers == (0,) and groups["moe"].layers == tuple(range(1, 27))
    assert lite.layer_params() == groups["moe"].params()  # the largest layer is what FSDP gathers


def test_qwen2_moe_sparse_step_and_mlp_only_layers():
    arch = load_hf_config(str(CONFIGS / "qwen2-moe-mixed-small.json"))
    groups = {g.kind: g.layers for g in arch.layer_groups}
    assert groups == {"dense": (0, 2, 3), "moe": (1,)}  # (i + 1) % 2 == 0, but layer 3 is listed in mlp_only_layers
    assert arch.linear_modules()["shared_expert_gate"] == (128, 1)
    assert arch.shared_expert_intermediate_size == 96 and arch.num_shared_experts == 1


@pytest.mark.parametrize("name,names", [
    ("gpt2", ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]),
    ("qwen-7b", ["c_attn", "attn.c_proj", "w1", "w2", "mlp.c_proj"]),
    ("pythia-160m", ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]),
    ("falcon-7b", ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]),
    ("phi-2", ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]),
    ("phi-3-mini", ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    ("starcoder2-3b", ["q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"]),
])
def test_module_names_are_peft_target_names(name, names):
    assert list(load_hf_config(str(CONFIGS / f"{name}.json")).linear_modules()) == names


def test_family_metadata():
    assert load_hf_config(str(CONFIGS / "falcon-7b.json")).num_kv_heads == 1  # multi-query
    assert load_hf_config(str(CONFIGS / "falcon-7b.json")).parallel_attention
    assert load_hf_config(str(CONFIGS / "falcon-40b.json")).num_kv_heads == 8  # new decoder architecture
    assert load_hf_config(str(CONFIGS / "pythia-160m.json")).partial_rotary_factor == 0.25
    assert load_hf_config(str(CONFIGS / "phi-2.json")).partial_rotary_factor == 0.4
    gpt2 = load_hf_config(str(CONFIGS / "gpt2.json"))
    assert gpt2.positions == "learned" and gpt2.position_embeddings == 1024 and gpt2.tie_word_embeddings
    gemma2 = load_hf_config(str(CONFIGS / "gemma-2-9b.json"))
    assert (gemma2.sliding_window, gemma2.sliding_window_layers) == (4096, 21)
    gemma3 = load_hf_config(str(CONFIGS / "gemma-3-1b.json"))
    assert (gemma3.sliding_window, gemma3.sliding_window_layers) == (512, 22)  # 5 of every 6 layers
    vision = load_hf_config(str(CONFIGS / "gemma-3-4b.json"))
    assert vision.model_type == "gemma3" and vision.vision_params > 4e8 and vision.warnings
    assert load_hf_config(str(CONFIGS / "olmo-1b.json")).norm == "none"  # non-parametric LayerNorm
    assert load_hf_config(str(CONFIGS / "mistral-7b-v0.1.json")).sliding_window == 4096


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

def _linear_set(arch):
    return sorted((g.kind, g.layers, m.name, m.d_in, m.d_out, m.bias, m.kind, m.copies)
                  for g in arch.layer_groups for m in g.linears)


@pytest.mark.train
@pytest.mark.parametrize("name", [f for f in FIXTURES if f not in NOT_IN_TRANSFORMERS])
def test_closed_form_equals_the_meta_model(name):
    """Parameter count, every linear layer's shape/bias/kind and the per-layer norms equal transformers'."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    cfg = config(name)
    closed, exact = from_hf_config(cfg, name), exact_architecture(cfg, name)
    assert closed.params == exact.params
    assert _linear_set(closed) == _linear_set(exact)
    assert [(g.layers, g.other_params) for g in closed.layer_groups] == [
        (g.layers, g.other_params) for g in exact.layer_groups]
    assert closed.top_params == exact.top_params and exact.source == "exact"


MINIMAL = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 32, "intermediate_size": 512,
           "vocab_size": 320}
MINIMAL_EXTRA = {
    "gpt2": {"n_embd": 256, "n_layer": 2, "n_head": 32}, "phi3": {"pad_token_id": 0},
    "opt": {"ffn_dim": 512, "max_position_embeddings": 64},
    "deepseek_v2": {"n_routed_experts": 4, "moe_intermediate_size": 32, "kv_lora_rank": 16, "q_lora_rank": 24,
                    "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16},
    "qwen2_moe": {"num_experts": 4, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48},
    "qwen3_moe": {"num_experts": 4, "moe_intermediate_size": 32},
}
MINIMAL_EXTRA["deepseek_v3"] = {**MINIMAL_EXTRA["deepseek_v2"], "num_key_value_heads": 32}


@pytest.mark.train
@pytest.mark.parametrize("model_type", sorted(set(FAMILIES) - {"qwen"}))
def test_family_defaults_equal_transformers(model_type):
    """A config with only the required keys: every omitted key takes transformers' default in both."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    cfg = {"model_type": model_type, **MINIMAL, **MINIMAL_EXTRA.get(model_type, {})}
    if model_type in ("gpt2", "falcon"):
        cfg.pop("intermediate_size")
    assert from_hf_config(cfg).params == exact_architecture(cfg).params


def test_exact_needs_transformers_or_names_the_problem(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name in ("torch", "transformers"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ArchitectureError, match=r"finetune-policy\[train\]"):
        exact_architecture(config("llama-3-8b"), "cfg.json")


@pytest.mark.train
def test_exact_rejects_remote_code_and_counts_families_outside_the_table():
    pytest.importorskip("transformers")
    with pytest.raises(ArchitectureError) as exc:
        exact_architecture(config("qwen-7b"), "qwen.json")
    assert exc.value.field == "model_type" and "qwen" in str(exc.value)
    granite = {"model_type": "granite", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8,
               "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 320}
    arch = exact_architecture(granite)
    assert arch.source == "exact" and arch.params > 0 and arch.warnings  # not in the table: a warning says so
    assert set(arch.linear_modules()) >= {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"}
