"""Trainable-parameter counts per method: formulas, published counts, and equality with peft itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ruleengine.architecture import from_hf_config, load_hf_config
from ruleengine.methods import trainable_params
from ruleengine.trainable import resolve_targets

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
PEFT_MODELS = ("llama-2-7b", "llama-3-8b", "mistral-7b-v0.1")
TARGET_SETS = {"qv": ["q_proj", "v_proj"], "all-linear": "all-linear", "attention": "attention"}


def arch_of(name: str, **override):
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    return from_hf_config({**cfg, **override}, name)


# --- published counts and formulas ---------------------------------------------------------

def test_published_lora_counts():
    # anchors.md "LoRA parameter count": 32 * 2 * 8 * (4096 + 4096) and the 13B equivalent
    assert trainable_params(arch_of("llama-2-7b"), "lora", rank=8, target_modules=["q_proj", "v_proj"]) == 4_194_304
    assert trainable_params(arch_of("llama-2-13b"), "lora", rank=8, target_modules=["q_proj", "v_proj"]) == 6_553_600
    # litgpt resource tables: the same counts for Llama 2 7B / 13B LoRA (r=8, q and v)
    assert trainable_params(arch_of("llama-2-7b"), "qlora", rank=8, target_modules=None) == 4_194_304


def test_lora_counts_follow_gqa_widths():
    arch = arch_of("llama-3-8b")
    per_layer = 16 * ((4096 + 4096) + (4096 + 1024) * 2 + (4096 + 4096) + 2 * (4096 + 14336) + (14336 + 4096))
    assert trainable_params(arch, "lora", rank=16) == 32 * per_layer


def test_dora_adds_one_magnitude_per_output_feature():
    arch = arch_of("mistral-7b-v0.1")
    lora = trainable_params(arch, "lora", rank=16, target_modules="attention")
    outputs = 32 * (4096 + 1024 + 1024 + 4096)
    assert trainable_params(arch, "dora", rank=16, target_modules="attention") == lora + outputs
    assert trainable_params(arch, "lora", rank=16, target_modules="attention", use_dora=True) == lora + outputs


def test_ia3_scales_outputs_and_feedforward_inputs():
    arch = arch_of("llama-2-7b")
    # peft default for llama: k_proj, v_proj (output vectors) and down_proj (feed-forward: input vector)
    assert trainable_params(arch, "ia3", target_modules=None) == 32 * (4096 + 4096 + 11008)
    assert resolve_targets(arch, "ia3", None) == ("k_proj", "v_proj", "down_proj")


def test_prompt_prefix_and_adapter_formulas():
    arch = arch_of("llama-3-8b")
    assert trainable_params(arch, "prompt_tuning", num_virtual_tokens=20) == 20 * 4096
    # peft sets token_dim = num_key_value_heads * head_dim for GQA models (peft#1901)
    assert trainable_params(arch, "prefix_tuning", num_virtual_tokens=20) == 20 * 32 * 2 * 1024
    # Houlsby: two bottleneck adapters per layer, each h->m and m->h with biases
    assert trainable_params(arch, "adapter", adapter_size=64) == 32 * 2 * (2 * 64 * 4096 + 64 + 4096)
    assert trainable_params(arch, "full_ft") == arch.params


def test_target_presets_and_errors():
    arch = arch_of("llama-2-7b")
    assert resolve_targets(arch, "lora", "mlp") == ("gate_proj", "up_proj", "down_proj")
    assert resolve_targets(arch, "lora", ["v_proj", "q_proj"]) == ("q_proj", "v_proj")  # forward order
    with pytest.raises(ValueError, match="valid names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"):
        resolve_targets(arch, "lora", ["q_proj", "c_attn"])
    with pytest.raises(ValueError, match="unknown target_modules preset"):
        resolve_targets(arch, "lora", "everything")
    with pytest.raises(ValueError, match="empty"):
        resolve_targets(arch, "lora", [])
    with pytest.raises(ValueError, match="rank"):
        trainable_params(arch, "lora")
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        trainable_params(arch, "prefix_tuning", num_virtual_tokens=0)
    with pytest.raises(ValueError, match="unknown method"):
        trainable_params(arch, "bitfit")
    opt = load_hf_config(str(CONFIGS / "opt-1.3b.json"))
    with pytest.raises(ValueError, match="out_proj"):
        resolve_targets(opt, "lora", ["o_proj"])


# --- against peft ---------------------------------------------------------------------------
# Each model is built on the meta device from the fixture config (accelerate.init_empty_weights).
# Counts are per decoder layer times num_layers, so the grid of ranks x target sets runs on a
# 2-layer copy of each config (identical widths); the full-depth model is checked for q,v r=8 and
# the cheap prompt-learning/IA3 methods.

def _peft():
    pytest.importorskip("torch")
    return pytest.importorskip("peft"), pytest.importorskip("transformers"), pytest.importorskip("accelerate")


def _build(cfg: dict):
    peft, transformers, accelerate = _peft()
    hf_config = transformers.AutoConfig.for_model(**cfg)
    with accelerate.init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    model.tie_weights()
    return model


def _peft_trainable(cfg: dict, peft_config) -> int:
    peft, _, _ = _peft()
    model = peft.get_peft_model(_build(cfg), peft_config)
    trainable, _ = model.get_nb_trainable_parameters()
    # Under init_empty_weights peft re-registers AdaLoRA's frozen `ranknum` scalar without its
    # requires_grad=False; on a real device it is frozen (test_adalora_ranknum_is_frozen_on_a_real_model).
    ranknum = sum(p.numel() for n, p in model.named_parameters() if "ranknum" in n and p.requires_grad)
    return trainable - ranknum


@pytest.fixture(scope="module", params=PEFT_MODELS)
def model_cfg(request):
    return request.param, json.loads((CONFIGS / f"{request.param}.json").read_text())


@pytest.mark.train
def test_full_depth_counts_equal_peft(model_cfg):
    peft, _, _ = _peft()
    name, cfg = model_cfg
    arch = from_hf_config(cfg, name)
    cases = [
        (peft.LoraConfig(task_type="CAUSAL_LM", r=8, target_modules=["q_proj", "v_proj"]),
         trainable_params(arch, "lora", rank=8, target_modules=["q_proj", "v_proj"])),
        (peft.IA3Config(task_type="CAUSAL_LM"), trainable_params(arch, "ia3", target_modules=None)),
        (peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20),
         trainable_params(arch, "prompt_tuning", num_virtual_tokens=20)),
        (peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=30),
         trainable_params(arch, "prefix_tuning", num_virtual_tokens=30)),
    ]
    for peft_config, ours in cases:
        assert _peft_trainable(cfg, peft_config) == ours, type(peft_config).__name__


@pytest.mark.train
@pytest.mark.parametrize("rank", [8, 16, 64])
@pytest.mark.parametrize("targets", sorted(TARGET_SETS))
def test_lora_grid_equals_peft(model_cfg, rank, targets):
    peft, _, _ = _peft()
    name, cfg = model_cfg
    small = {**cfg, "num_hidden_layers": 2}
    target_modules = TARGET_SETS[targets]
    peft_targets = ["q_proj", "k_proj", "v_proj", "o_proj"] if target_modules == "attention" else target_modules
    ours = trainable_params(from_hf_config(small, name), "lora", rank=rank, target_modules=target_modules)
    assert _peft_trainable(small, peft.LoraConfig(task_type="CAUSAL_LM", r=rank, target_modules=peft_targets)) == ours
    full = trainable_params(from_hf_config(cfg, name), "lora", rank=rank, target_modules=target_modules)
    assert full == ours * cfg["num_hidden_layers"] // 2


@pytest.mark.train
def test_other_methods_equal_peft(model_cfg):
    peft, _, _ = _peft()
    name, cfg = model_cfg
    small = {**cfg, "num_hidden_layers": 2}
    arch = from_hf_config(small, name)
    cases = [
        (peft.LoraConfig(task_type="CAUSAL_LM", r=16, target_modules="all-linear", use_dora=True),
         trainable_params(arch, "dora", rank=16, target_modules="all-linear")),
        (peft.LoraConfig(task_type="CAUSAL_LM", r=8, target_modules=["q_proj", "v_proj"], use_dora=True),
         trainable_params(arch, "lora", rank=8, target_modules=["q_proj", "v_proj"], use_dora=True)),
        (peft.IA3Config(task_type="CAUSAL_LM", target_modules="all-linear"),
         trainable_params(arch, "ia3", target_modules="all-linear")),
        (peft.AdaLoraConfig(task_type="CAUSAL_LM", init_r=12, target_r=8, total_step=100, target_modules="all-linear"),
         trainable_params(arch, "adalora", rank=12, target_modules="all-linear")),
    ]
    default_adalora = peft.AdaLoraConfig(task_type="CAUSAL_LM", init_r=12, target_r=8, total_step=100)
    if cfg["model_type"] == "mistral":  # peft has no AdaLoRA default targets for mistral: both refuse
        with pytest.raises(ValueError, match="target_modules"):
            trainable_params(arch, "adalora", rank=12, target_modules=None)
        with pytest.raises(ValueError, match="target_modules"):
            _peft_trainable(small, default_adalora)
    else:
        cases.append((default_adalora, trainable_params(arch, "adalora", rank=12, target_modules=None)))
    for peft_config, ours in cases:
        assert _peft_trainable(small, peft_config) == ours, peft_config


@pytest.mark.train
def test_adalora_ranknum_is_frozen_on_a_real_model():
    peft, transformers, _ = _peft()
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))  # real CPU tensors
    wrapped = peft.get_peft_model(model, peft.AdaLoraConfig(task_type="CAUSAL_LM", init_r=6, target_r=4, total_step=10,
                                                            target_modules="all-linear"))
    assert wrapped.get_nb_trainable_parameters()[0] == trainable_params(from_hf_config(cfg), "adalora", rank=6)


# --- mixture of experts and other families against peft ------------------------------------
# peft gets our module names (valid peft targets: GPT-2's `attn.c_proj` selects only the attention
# projection); for qwen3_moe/deepseek peft rewrites gate_proj/up_proj/down_proj into the fused
# experts (transformers 5) and drops the dense/shared MLP modules of those names.

MOE_CASES = [("deepseek-v3-small", {}), ("qwen2-moe-mixed-small", {}), ("mixtral-8x7b", {"num_hidden_layers": 2}),
             ("qwen3-30b-a3b", {"num_hidden_layers": 3, "mlp_only_layers": [0]}),
             ("deepseek-v2-lite", {"num_hidden_layers": 3}), ("gpt2", {"n_layer": 2}),
             ("falcon-7b", {"num_hidden_layers": 2}), ("phi-3-mini", {"num_hidden_layers": 2})]


@pytest.mark.train
@pytest.mark.parametrize("name,override", MOE_CASES, ids=[c[0] for c in MOE_CASES])
def test_moe_and_fused_families_equal_peft(name, override):
    peft, _, _ = _peft()
    cfg = {**json.loads((CONFIGS / f"{name}.json").read_text()), **override}
    arch = from_hf_config(cfg, name)
    for targets in ("all-linear", "attention", "mlp", ["down_proj"], ["c_proj"]):
        try:
            ours = trainable_params(arch, "lora", rank=8, target_modules=targets)
        except ValueError:
            continue  # a name or preset this family does not have
        names = list(resolve_targets(arch, "lora", targets))
        assert _peft_trainable(cfg, peft.LoraConfig(task_type="CAUSAL_LM", r=8, target_modules=names)) == ours, targets
    if arch.is_moe:  # routed experts named directly: peft's target_parameters, one LoRA pair per expert
        experts = ["experts.gate_up_proj", "experts.down_proj"]
        ours = trainable_params(arch, "lora", rank=4, target_modules=experts)
        assert _peft_trainable(cfg, peft.LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=[],
                                                    target_parameters=experts)) == ours


def test_moe_targets_and_errors():
    arch = arch_of("qwen3-30b-a3b")
    assert resolve_targets(arch, "lora", "all-linear") == ("q_proj", "k_proj", "v_proj", "o_proj")  # experts are no nn.Linear
    with pytest.raises(ValueError, match="gate_up_proj"):
        trainable_params(arch, "lora", rank=8, target_modules=["gate_proj"])  # half of a fused pair, as peft refuses
    with pytest.raises(ValueError, match="DoRA"):
        trainable_params(arch, "dora", rank=8, target_modules=["experts.down_proj"])
    mixtral = arch_of("mixtral-8x7b")
    with pytest.raises(ValueError, match="router"):
        resolve_targets(mixtral, "lora", ["gate"])
    with pytest.raises(ValueError, match="selects no nn.Linear"):
        resolve_targets(mixtral, "lora", "mlp")
    per_expert = 32 * 8 * 16 * ((4096 + 2 * 14336) + (14336 + 4096))
    assert trainable_params(mixtral, "lora", rank=16, target_modules=["experts.gate_up_proj", "experts.down_proj"]) \
        == per_expert
    gpt2 = arch_of("gpt2")
    assert resolve_targets(gpt2, "lora", ["c_proj"]) == ("attn.c_proj", "mlp.c_proj")  # peft's suffix match
    assert trainable_params(gpt2, "ia3", target_modules=None) == 12 * (3 * 768 + 3072)  # c_attn out, mlp.c_proj in
