"""The closed-form memory profile: the largest micro-batch that fits is solved, and equals a search."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ruleengine.architecture import infer_from_params
from ruleengine.derive import AUTO_BATCHES
from ruleengine.memory import MemoryConstants, MethodConfig, TrainingSetup, estimate, profile
from ruleengine.vocabulary import METHODS

CONSTS = MemoryConstants.from_policy(None)


def _cfg(method: str) -> MethodConfig:
    return MethodConfig(method, rank=16 if method in ("lora", "qlora", "dora", "adalora") else None,
                        num_virtual_tokens=20 if method.endswith("_tuning") else None,
                        adapter_size=64 if method == "adapter" else None)


@settings(max_examples=150, deadline=None)
@given(method=st.sampled_from(METHODS), params=st.sampled_from([1e9, 7e9, 13e9, 70e9]),
       seq=st.sampled_from([512, 2048, 8192]), gpus=st.sampled_from([1, 2, 8]),
       sharding=st.sampled_from(["none", "zero2", "zero3", "fsdp", "zero3_offload"]),
       optimizer=st.sampled_from(["adamw", "adamw_8bit", "sgd"]), limit=st.floats(4.0, 200.0))
def test_largest_batch_equals_the_search(method, params, seq, gpus, sharding, optimizer, limit):
    arch = infer_from_params(params)
    setup = TrainingSetup(optimizer=optimizer, micro_batch_size=1, seq_len=seq, sharding=sharding, gpu_count=gpus)
    prof = profile(arch, _cfg(method), setup, CONSTS)
    searched = next((b for b in AUTO_BATCHES
                     if estimate(arch, _cfg(method), TrainingSetup(optimizer=optimizer, micro_batch_size=b, seq_len=seq,
                                                                  sharding=sharding, gpu_count=gpus),
                                 CONSTS).total_gib <= limit), None)
    assert prof.largest_batch(limit, AUTO_BATCHES) == searched


def test_total_is_monotone_in_the_micro_batch():
    arch = infer_from_params(13e9)
    prof = profile(arch, _cfg("full_ft"), TrainingSetup(seq_len=2048, sharding="zero3", gpu_count=8), CONSTS)
    totals = [prof.total_gib(b) for b in range(1, 65)]
    assert totals == sorted(totals)
