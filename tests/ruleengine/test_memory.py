"""The memory model: published peak-memory measurements (±15%), mechanisms, and properties.

Each published case states the source, the settings the source used, what its number measures
(``allocated`` = torch.cuda.max_memory_allocated, which excludes the CUDA context and allocator
caching; ``device`` = nvidia-smi or the GPU's capacity) and, where the source's pipeline differs
from ours, the memory constants that describe that pipeline with the reason. docs/memory-model.md
has the same table with the estimates.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ruleengine.architecture import infer_from_params, load_hf_config
from ruleengine.memory import (
    GIB,
    MemoryConstants,
    MethodConfig,
    TrainingSetup,
    bytes_per_param,
    estimate,
    usable_gib,
)
from ruleengine.vocabulary import METHODS

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
TOLERANCE = 0.15


def arch(name: str):
    return load_hf_config(str(CONFIGS / f"{name}.json"))


def merge(*dicts: dict) -> dict:
    out: dict = {}
    for d in dicts:
        for key, value in d.items():
            out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else copy.deepcopy(value)
    return out


DEFAULT = MemoryConstants.from_policy(None)

# --- what each source's pipeline does differently (memory constants + why) -------------------
ALLOCATED = {"overhead": {"cuda_context_gib": 0.0, "allocator_fraction": 0.0}}
LITGPT = {"adapter": {"weight_bytes": 2, "grad_bytes": 2, "state_bytes": 2}}  # bf16-true: adapters in bf16 too
LITGPT_NF4 = merge(LITGPT, {"quantization": {
    "saves_input": True,          # bitsandbytes 0.41.1 MatMul4Bit: ctx.tensors = (A, B)
    "unquantized_bytes": 2,       # litgpt does not call prepare_model_for_kbit_training
    "residual_stream_bytes": 2}})
QWEN_V1_LOSS = {"logits": {"copies_16bit": 5, "copies_fp32": 0}}  # modeling_qwen.py: CE on 16-bit shift_logits
QWEN_GPTQ = merge(QWEN_V1_LOSS, {"quantization": {
    "double_quant": False, "block_size": 128, "absmax_bytes": 2.5,  # GPTQ int4 g128: fp16 scale + 4-bit zero
    "unquantized_bytes": 2, "residual_stream_bytes": 2}})         # peft skips the fp32 upcast for GPTQ
DEEPSPEED_OPT = {"optimizer": {"adamw": {"step_temp_states": 0}}}  # DeepSpeed's fused Adam: no foreach temporaries
SHARDED_QLORA = {"quantization": {"unquantized_bytes": 2, "residual_stream_bytes": 2}}  # quant_storage bf16: no upcast
FSDP_FP32_SHARDS = {"precision": {"bf16_mixed": {"weight_bytes": 4}}}  # examples/sft/utils.py loads float32

LITGPT_URL = "https://github.com/Lightning-AI/litgpt/blob/main/tutorials/resource-tables.md"
QWEN_URL = "https://github.com/QwenLM/Qwen/blob/main/README.md#profiling-of-memory-and-speed"
PEFT_DS_URL = "https://huggingface.co/docs/peft/accelerate/deepspeed (docs/source/accelerate/deepspeed.md)"
PEFT_FSDP_URL = "https://huggingface.co/docs/peft/accelerate/fsdp (docs/source/accelerate/fsdp.md)"
UNSLOTH_URL = "https://github.com/unslothai/unsloth README: context length table, 'Hugging Face + FA2' column"


@dataclass(frozen=True)
class Case:
    id: str
    source: str
    model: str
    method: MethodConfig
    setup: TrainingSetup
    published: float
    unit: str  # "GB" (1e9 bytes) or "GiB"
    measured: str  # "allocated" | "device"
    overrides: dict = field(default_factory=dict)
    xfail: str = ""

    def published_gib(self) -> float:
        return self.published * (1e9 / GIB if self.unit == "GB" else 1.0)

    def constants(self) -> MemoryConstants:
        return MemoryConstants.from_policy(merge(ALLOCATED if self.measured == "allocated" else {}, self.overrides))

    def estimate(self):
        return estimate(arch(self.model), self.method, self.setup, self.constants())


def _cases() -> list[Case]:
    cases: list[Case] = []
    # LitGPT resource tables (A100 40GB, bf16-true, AdamW, LoRA r=8 on q and v, dropout 0.05, no activation
    # checkpointing; Alpaca's longest Llama-2 example is 1304 tokens, where the peak occurs).
    qv8 = {"rank": 8, "target_modules": ["q_proj", "v_proj"], "dropout": 0.05}
    for model, mb, gb in (("llama-2-7b", 1, 21.30), ("llama-2-7b", 2, 29.07), ("llama-2-13b", 1, 38.12)):
        cases.append(Case(f"litgpt-lora-{model}-mb{mb}", LITGPT_URL, model, MethodConfig("lora", **qv8),
                          TrainingSetup("bf16_pure", "adamw", mb, 1304, False), gb, "GB", "allocated", LITGPT))
    for model, dq, gb in (("llama-2-7b", False, 14.14), ("llama-2-7b", True, 13.84),
                          ("llama-2-13b", False, 23.14), ("llama-2-13b", True, 22.55)):
        cases.append(Case(f"litgpt-qlora-{model}-{'nf4-dq' if dq else 'nf4'}", LITGPT_URL, model,
                          MethodConfig("qlora", double_quant=dq, **qv8),
                          TrainingSetup("bf16_pure", "adamw", 1, 1304, False), gb, "GB", "allocated", LITGPT_NF4))
    # Qwen (v1) README: one A100-80G, batch 1, gradient checkpointing, flash attention 2, LoRA r=64 on every
    # linear layer (c_attn, c_proj, w1, w2), dropout 0.05, bf16, HF Trainer AdamW.
    lora64 = {"rank": 64, "target_modules": "all-linear", "dropout": 0.05}
    seqs = (256, 512, 1024, 2048, 4096, 8192)
    rows = {"qwen-1.8b-v1-shape": (6.7, 7.4, 8.4, 11.0, 16.2, 21.8),
            "qwen-7b-v1-shape": (20.1, 20.4, 21.5, 23.8, 29.7, 36.6),
            "qwen-14b-v1-shape": (34.6, 35.1, 35.3, 37.4, 42.5, 55.2)}
    for model, values in rows.items():
        for s, gb in zip(seqs, values, strict=True):
            xfail = ""
            if model == "qwen-1.8b-v1-shape" and s == 4096:
                xfail = ("reserved-memory step: this row grows 2.5 MB/token from 2048 to 4096 tokens but 1.4 MB/token "
                         "from 4096 to 8192; no per-token tensor does both, the 4096 figure includes allocator cache")
            cases.append(Case(f"qwen-lora-{model}-s{s}", QWEN_URL, model, MethodConfig("lora", **lora64),
                              TrainingSetup("bf16_mixed", "adamw", 1, s, True), gb, "GB", "device", QWEN_V1_LOSS,
                              xfail))
    gptq_xfail = ("GPTQ-int4 Q-LoRA (auto-gptq kernels), not bitsandbytes NF4: from 256 to 8192 tokens the Q-LoRA rows "
                  "grow 1.51 (7B) and 1.80 (72B) MB/token, less than the LoRA rows of the same table (2.08, 2.32) and, "
                  "for 7B, less than its own 16-bit logits and loss (1.52 MB/token); the NF4 mechanism cannot produce it")
    for model, values in (("qwen-7b-v1-shape", (11.5, 11.5, 12.3, 13.9, 16.9, 23.5)),
                          ("qwen-72b-v1-shape", (61.4, 61.4, 62.9, 64.1, 68.0, 75.6))):
        for s, gb in zip(seqs, values, strict=True):
            cases.append(Case(f"qwen-qlora-gptq-{model}-s{s}", QWEN_URL, model,
                              MethodConfig("qlora", double_quant=False, **lora64),
                              TrainingSetup("bf16_mixed", "adamw", 1, s, True), gb, "GB", "device", QWEN_GPTQ,
                              gptq_xfail if s == 8192 else ""))
    for s, gb in zip(seqs, (215.4, 217.7, 222.6, 228.8, 249.0, 289.2), strict=True):  # total over 4 GPUs
        cases.append(Case(f"qwen-lora-zero3-72b-s{s}", QWEN_URL, "qwen-72b-v1-shape", MethodConfig("lora", **lora64),
                          TrainingSetup("bf16_mixed", "adamw", 1, s, True, "zero3", 4), gb / 4, "GB", "device",
                          merge(QWEN_V1_LOSS, DEEPSPEED_OPT)))
    for s, gb in zip(seqs[:3], (139.2, 148.0, 162.0), strict=True):  # full-parameter, 2 GPUs, DeepSpeed ZeRO-2
        cases.append(Case(f"qwen-full-zero2-7b-s{s}", QWEN_URL, "qwen-7b-v1-shape", MethodConfig("full_ft"),
                          TrainingSetup("bf16_mixed", "adamw", 1, s, True, "zero2", 2), gb / 2, "GB", "device",
                          merge(QWEN_V1_LOSS, DEEPSPEED_OPT)))
    for s, gb in zip(seqs, (43.5, 43.5, 43.5, 43.5, 47.1, 48.3), strict=True):  # full-parameter, 1 GPU
        cases.append(Case(f"qwen-full-1.8b-s{s}", QWEN_URL, "qwen-1.8b-v1-shape", MethodConfig("full_ft"),
                          TrainingSetup("bf16_mixed", "adamw", 1, s, True), gb, "GB", "device", QWEN_V1_LOSS))
    # PEFT docs: Llama-2-70B, seq 2048 packed, gradient checkpointing, flash attention, LoRA r=8 all-linear, dropout 0.1
    r8 = {"rank": 8, "target_modules": "all-linear", "dropout": 0.1}
    cases.append(Case("peft-deepspeed-zero3-lora-70b-8gpu", PEFT_DS_URL, "llama-2-70b", MethodConfig("lora", **r8),
                      TrainingSetup("bf16_mixed", "adamw", 8, 2048, True, "zero3", 8), 64, "GiB", "device",
                      DEEPSPEED_OPT))
    cases.append(Case("peft-deepspeed-zero3-qlora-70b-2gpu", PEFT_DS_URL, "llama-2-70b", MethodConfig("qlora", **r8),
                      TrainingSetup("bf16_mixed", "adamw", 2, 2048, True, "zero3", 2), 36.6, "GiB", "device",
                      SHARDED_QLORA))
    cases.append(Case("peft-fsdp-qlora-70b-2gpu", PEFT_FSDP_URL, "llama-2-70b", MethodConfig("qlora", **r8),
                      TrainingSetup("bf16_mixed", "adamw", 2, 2048, True, "fsdp", 2), 35.6, "GiB", "device",
                      SHARDED_QLORA))
    cases.append(Case("peft-fsdp-lora-70b-8gpu", PEFT_FSDP_URL, "llama-2-70b", MethodConfig("lora", **r8),
                      TrainingSetup("bf16_mixed", "adamw", 8, 2048, True, "fsdp", 8), 72, "GiB", "device",
                      FSDP_FP32_SHARDS))
    # Unsloth README: the longest context 'Hugging Face + FA2' fits, QLoRA r=32 on all linear layers, batch 1,
    # gradient checkpointing; the peak then equals the GPU's memory.
    r32 = {"rank": 32, "target_modules": "all-linear", "dropout": 0.0}
    for gib, tokens in ((12, 932), (16, 2551), (24, 5789), (40, 12264), (48, 15502), (80, 28454)):
        cases.append(Case(f"unsloth-hf-qlora-llama3-8b-{gib}gb", UNSLOTH_URL, "llama-3-8b", MethodConfig("qlora", **r32),
                          TrainingSetup("bf16_mixed", "adamw_8bit", 1, tokens, True), gib, "GiB", "device"))
    cases.append(Case("unsloth-hf-qlora-llama3.3-70b-80gb", UNSLOTH_URL, "llama-3.1-70b", MethodConfig("qlora", **r32),
                      TrainingSetup("bf16_mixed", "adamw_8bit", 1, 6916, True), 80, "GiB", "device"))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=pytest.mark.xfail(reason=c.xfail, strict=True))
                                  if c.xfail else pytest.param(c, id=c.id) for c in CASES])
def test_published_peak_memory_within_15_percent(case):
    est = case.estimate()
    published = case.published_gib()
    error = (est.total_gib - published) / published
    assert abs(error) <= TOLERANCE, f"{case.id}: estimate {est.total_gib:.2f} GiB vs {published:.2f} ({error:+.1%})"


def test_qlora_paper_4bit_base_model_of_7b():
    """QLoRA §2 / Fig. 6: the 4-bit LLaMA-7B base model takes 5,048 MB (MB read as 10^6 bytes)."""
    e = estimate(arch("llama-2-7b"), MethodConfig("qlora", rank=64), TrainingSetup(), DEFAULT)
    adapters = e.trainable_params * DEFAULT.get("adapter", "weight_bytes") / GIB
    base_gib = e.weights_gib - adapters + e.quant_constants_gib
    assert abs(base_gib / (5048e6 / GIB) - 1) <= TOLERANCE


@pytest.mark.xfail(strict=True, reason=(
    "anchors.md: torchtune Llama-3.2-3B full fine-tune at bs 2 x 4096 saved 18.0 GiB with activation checkpointing. "
    "The tensors an eager decoder layer keeps (22h + 4kv + 8I bytes per token) give a 27 GiB saving (+50%). The "
    "torchtune table itself is not in the corpora, so its settings (torch.compile, which recomputes pointwise ops "
    "and keeps fewer tensors, would explain the gap) could not be checked: unresolved, see docs/memory-model.md"))
def test_torchtune_activation_checkpointing_saving():
    a, c = arch("llama-3.2-3b"), MemoryConstants.from_policy(ALLOCATED)
    off = estimate(a, MethodConfig("full_ft"), TrainingSetup("bf16_pure", "adamw", 2, 4096, False), c)
    on = estimate(a, MethodConfig("full_ft"), TrainingSetup("bf16_pure", "adamw", 2, 4096, True), c)
    assert abs((off.total_gib - on.total_gib) / 18.0 - 1) <= TOLERANCE


# --- mechanisms -----------------------------------------------------------------------------

def test_bytes_per_parameter_of_full_fine_tuning():
    assert bytes_per_param(TrainingSetup("bf16_mixed", "adamw"), DEFAULT) == 16  # 2 + 2 + 4 master + 8 (ZeRO's 16Ψ)
    assert bytes_per_param(TrainingSetup("fp32", "adamw"), DEFAULT) == 16  # 4 + 4 + 8
    assert bytes_per_param(TrainingSetup("bf16_pure", "adamw"), DEFAULT) == 8  # 2 + 2 + 4
    assert bytes_per_param(TrainingSetup("bf16_mixed", "adamw_8bit"), DEFAULT) == pytest.approx(10 + 2 * 4 / 256)
    assert bytes_per_param(TrainingSetup("bf16_mixed", "sgd"), DEFAULT) == 12


def test_nf4_bytes_per_parameter():
    payload, dq = DEFAULT.nf4_bytes_per_param(True)
    assert payload + dq == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256))  # 4.127 bits = 0.516 B
    payload, plain = DEFAULT.nf4_bytes_per_param(False)
    assert payload + plain == pytest.approx(0.5625)
    # litgpt measured the double-quantization saving on Llama-2-7B as 0.30 GB (14.14 -> 13.84)
    linear = arch("llama-2-7b").param_breakdown()["linear"]
    assert linear * (plain - dq) / 1e9 == pytest.approx(0.30, abs=0.02)


def test_qlora_quantizes_only_the_linear_layers():
    a = arch("llama-3-8b")
    e = estimate(a, MethodConfig("qlora", rank=8, target_modules=["q_proj"]), TrainingSetup(), DEFAULT)
    parts = a.param_breakdown()
    adapters = e.trainable_params * 4
    unquantized = (parts["embedding"] + parts["other"]) * DEFAULT.get("quantization", "unquantized_bytes")
    assert e.weights_gib * GIB == pytest.approx(parts["linear"] * 0.5 + unquantized + adapters)
    assert e.quant_constants_gib * GIB == pytest.approx(parts["linear"] * DEFAULT.nf4_bytes_per_param()[1])


def test_zero2_matches_the_anchor_formula():
    """anchors.md: ZeRO-2 keeps 2 + (2 + 12)/N bytes per parameter (Qwen-7B on 2 GPUs: 9 B/param)."""
    a = arch("qwen-7b-v1-shape")
    e = estimate(a, MethodConfig("full_ft"), TrainingSetup(sharding="zero2", gpu_count=2), DEFAULT)
    assert (e.weights_gib + e.gradients_gib + e.optimizer_gib) * GIB == pytest.approx(9 * a.params)


def test_zero3_offload_moves_optimizer_and_master_weights_to_the_cpu():
    a = arch("llama-2-13b")
    e = estimate(a, MethodConfig("full_ft"), TrainingSetup(sharding="zero3_offload", gpu_count=4), DEFAULT)
    assert e.optimizer_gib == 0
    assert e.cpu_offload_gib * GIB == pytest.approx(a.params * (4 + 8 + 4) / 4)
    z3 = estimate(a, MethodConfig("full_ft"), TrainingSetup(sharding="zero3", gpu_count=4), DEFAULT)
    assert e.total_gib < z3.total_gib and z3.cpu_offload_gib == 0


def test_ddp_duplicates_gradients_in_buckets():
    a = arch("tinyllama-1.1b")
    one = estimate(a, MethodConfig("full_ft"), TrainingSetup(), DEFAULT)
    two = estimate(a, MethodConfig("full_ft"), TrainingSetup(gpu_count=2), DEFAULT)
    assert two.gradients_gib == pytest.approx(2 * one.gradients_gib)


def test_frozen_base_still_keeps_activations_for_backward():
    a, s = arch("llama-2-7b"), TrainingSetup(micro_batch_size=4, seq_len=2048, gradient_checkpointing=False)
    full = estimate(a, MethodConfig("full_ft"), s, DEFAULT).activations_gib
    prompt = estimate(a, MethodConfig("prompt_tuning", num_virtual_tokens=1), s, DEFAULT).activations_gib
    assert 0.5 * full < prompt < full  # no weight-gradient inputs, but everything backprop goes through


def test_checkpointing_keeps_one_input_per_layer_plus_one_layer():
    a, c = arch("llama-2-7b"), DEFAULT
    s = TrainingSetup(micro_batch_size=2, seq_len=4096, gradient_checkpointing=True)
    e = estimate(a, MethodConfig("lora", rank=8, dropout=0.0, target_modules=["q_proj", "v_proj"]), s, c)
    tokens = 2 * 4096
    per_layer = 2 * 4096 * 4 + (4096 * 2 + 4096 * 4 + 4096 * 2) + 11008 * 6 + 4096 * 2  # norms, SDPA, MLP, q/v input
    expected = tokens * (32 * 4096 * 2 + per_layer) + tokens * 4096 * 4  # + final norm input
    assert e.activations_gib * GIB == pytest.approx(expected)


def test_flash_attention_drops_the_score_term():
    a = arch("llama-2-7b")
    sdpa = estimate(a, MethodConfig("full_ft"), TrainingSetup(gradient_checkpointing=False), DEFAULT)
    eager = estimate(a, MethodConfig("full_ft"), TrainingSetup(gradient_checkpointing=False, attention="eager"), DEFAULT)
    scores = 32 * 2048 * 2048 * 32 * 6  # layers x tokens x keys x heads x bytes
    assert (eager.activations_gib - sdpa.activations_gib) * GIB == pytest.approx(scores)


def test_logits_term():
    a = arch("llama-3-8b")
    e = estimate(a, MethodConfig("lora", rank=8), TrainingSetup(micro_batch_size=2, seq_len=1024), DEFAULT)
    assert e.logits_gib * GIB == pytest.approx(2 * 1024 * 128256 * (2 + 3 * 4))


def test_prompt_tuning_lengthens_the_sequence_and_prefix_tuning_drops_checkpointing():
    a, s = arch("mistral-7b-v0.1"), TrainingSetup(seq_len=1024)
    base = estimate(a, MethodConfig("prompt_tuning", num_virtual_tokens=1), s, DEFAULT)
    longer = estimate(a, MethodConfig("prompt_tuning", num_virtual_tokens=100), s, DEFAULT)
    assert longer.logits_gib == pytest.approx(base.logits_gib * 1124 / 1025)
    prefix = estimate(a, MethodConfig("prefix_tuning", num_virtual_tokens=20), s, DEFAULT)
    assert any("gradient checkpointing" in n for n in prefix.notes)
    assert prefix.activations_gib > 5 * base.activations_gib


def test_dora_and_adalora_cost_more_than_lora():
    a, s = arch("llama-3-8b"), TrainingSetup(gradient_checkpointing=False)
    lora = estimate(a, MethodConfig("lora", rank=16), s, DEFAULT)
    dora = estimate(a, MethodConfig("dora", rank=16), s, DEFAULT)
    assert dora.activations_gib > lora.activations_gib and dora.overhead_gib > lora.overhead_gib
    ada = estimate(a, MethodConfig("adalora", rank=16), s, DEFAULT)
    assert lora.optimizer_gib * GIB == pytest.approx(lora.trainable_params * 8)  # fp32 Adam states of the adapters
    assert ada.optimizer_gib * GIB == pytest.approx(ada.trainable_params * (8 + 12))  # + RankAllocator's 3 fp32 copies


def test_estimate_dict_and_methods():
    assert METHODS == ("full_ft", "lora", "qlora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "adapter",
                       "adalora")
    e = estimate(infer_from_params(7e9), MethodConfig("lora", rank=16), TrainingSetup(), DEFAULT)
    d = e.to_dict()
    parts = ("weights_gib", "gradients_gib", "optimizer_gib", "activations_gib", "logits_gib", "quant_constants_gib",
             "overhead_gib")
    assert d["total_gib"] == pytest.approx(sum(d[k] for k in parts), abs=1e-3)
    assert d["total_params"] == 7_000_000_000 and d["trainable_params"] == e.trainable_params
    assert any("inferred" in n for n in d["notes"])


def test_usable_memory_and_policy_overrides():
    assert usable_gib(80, DEFAULT) == pytest.approx(80 * 0.95 - 0.5)
    custom = MemoryConstants.from_policy({"usable": {"safety_margin": 0.9}})
    assert usable_gib(80, custom) == pytest.approx(80 * 0.9 - 0.5)  # reserved_gib kept from the default
    with pytest.raises(ValueError, match="safety_margin"):
        MemoryConstants.from_policy({"usable": {"safety_margin": "high"}})


@pytest.mark.parametrize("field_name,value", [("precision", "fp8"), ("optimizer", "lion"), ("sharding", "zero1"),
                                              ("micro_batch_size", 0), ("seq_len", 1.5), ("attention", "flex")])
def test_bad_settings_are_rejected(field_name, value):
    setup = TrainingSetup(**{field_name: value})
    with pytest.raises(ValueError, match=field_name):
        estimate(arch("llama-2-7b"), MethodConfig("lora", rank=8), setup, DEFAULT)


def test_bad_methods_are_rejected():
    a = arch("llama-2-7b")
    with pytest.raises(ValueError, match="unknown method"):
        estimate(a, MethodConfig("bitfit"), TrainingSetup(), DEFAULT)
    with pytest.raises(ValueError, match="rank"):
        estimate(a, MethodConfig("lora"), TrainingSetup(), DEFAULT)
    with pytest.raises(ValueError, match="valid names"):
        estimate(a, MethodConfig("lora", rank=8, target_modules=["query"]), TrainingSetup(), DEFAULT)


# --- properties -----------------------------------------------------------------------------

def _cfg(method: str) -> MethodConfig:
    return MethodConfig(method, rank=16, num_virtual_tokens=20, adapter_size=64)


methods = st.sampled_from(METHODS)
setups = st.builds(TrainingSetup, precision=st.sampled_from(["bf16_mixed", "bf16_pure", "fp32"]),
                   optimizer=st.sampled_from(["adamw", "adamw_8bit", "sgd"]),
                   micro_batch_size=st.integers(1, 16), seq_len=st.integers(64, 16384),
                   gradient_checkpointing=st.booleans(), attention=st.sampled_from(["sdpa", "eager"]))


@settings(max_examples=80, deadline=None)
@given(methods, setups, st.floats(1e8, 5e11), st.floats(1.0, 4.0))
def test_a_larger_model_never_needs_less(method, setup, n, factor):
    small = estimate(infer_from_params(n), _cfg(method), setup, DEFAULT)
    large = estimate(infer_from_params(n * factor), _cfg(method), setup, DEFAULT)
    assert large.total_gib >= small.total_gib - 1e-9


@settings(max_examples=80, deadline=None)
@given(methods, setups, st.integers(1, 8192), st.integers(1, 8))
def test_longer_sequences_and_larger_batches_never_need_less(method, setup, more_seq, more_batch):
    a = arch("llama-3-8b")
    base = estimate(a, _cfg(method), setup, DEFAULT)
    longer = TrainingSetup(**{**setup.__dict__, "seq_len": setup.seq_len + more_seq})
    larger = TrainingSetup(**{**setup.__dict__, "micro_batch_size": setup.micro_batch_size + more_batch})
    assert estimate(a, _cfg(method), longer, DEFAULT).total_gib >= base.total_gib
    assert estimate(a, _cfg(method), larger, DEFAULT).total_gib >= base.total_gib


@settings(max_examples=80, deadline=None)
@given(methods, setups, st.sampled_from(["zero2", "zero3", "fsdp", "zero3_offload"]), st.integers(1, 63),
       st.integers(1, 64))
def test_more_gpus_with_sharding_never_need_more_per_gpu(method, setup, sharding, gpus, more):
    a = arch("llama-2-13b")
    few = TrainingSetup(**{**setup.__dict__, "sharding": sharding, "gpu_count": gpus})
    many = TrainingSetup(**{**setup.__dict__, "sharding": sharding, "gpu_count": gpus + more})
    assert estimate(a, _cfg(method), many, DEFAULT).total_gib <= estimate(a, _cfg(method), few, DEFAULT).total_gib + 1e-9


BIG_ENOUGH = ["tinyllama-1.1b", "llama-3.2-3b", "llama-2-7b", "llama-3-8b", "mistral-7b-v0.1", "qwen2-7b",
              "llama-2-13b", "llama-2-70b"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(BIG_ENOUGH), st.sampled_from(["bf16_mixed", "bf16_pure"]), st.sampled_from(["adamw", "sgd"]),
       st.integers(1, 8), st.sampled_from([256, 512, 1024, 2048, 4096, 8192]), st.booleans(), st.integers(4, 64))
def test_qlora_below_lora_below_full_fine_tuning(model, precision, optimizer, batch, seq, ckpt, rank):
    """For models from 1B and micro-batches up to 8192 tokens (docs/memory-model.md: beyond that a small
    model's fp32 residual stream under prepare_model_for_kbit_training can outweigh QLoRA's saving)."""
    if batch * seq > 8192:
        batch = max(1, 8192 // seq)
    a = arch(model)
    s = TrainingSetup(precision, optimizer, batch, seq, ckpt)
    q = estimate(a, MethodConfig("qlora", rank=rank), s, DEFAULT).total_gib
    lo = estimate(a, MethodConfig("lora", rank=rank), s, DEFAULT).total_gib
    full = estimate(a, MethodConfig("full_ft"), s, DEFAULT).total_gib
    assert q < lo < full
