"""bench/bench_gpu_memory.py: it skips cleanly without CUDA, its estimate side is `decide estimate`'s, and its
training step runs (on the CPU, with a tiny config, for the train extra)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ruleengine import api

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_memory", ROOT / "bench" / "bench_gpu_memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


BENCH = _bench()


def test_rows_span_1b_to_8b_and_three_methods():
    assert {r.method for r in BENCH.ROWS} == {"full_ft", "lora", "qlora"}
    assert {r.model for r in BENCH.ROWS} >= {"tinyllama-1.1b", "llama-3.2-3b", "llama-3-8b"}
    assert {r.checkpointing for r in BENCH.ROWS} == {True, False}
    assert len({r.id for r in BENCH.ROWS}) == len(BENCH.ROWS)


def test_without_cuda_it_says_why_and_exits_0():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the bench would measure")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu_memory.py")], capture_output=True,
                            text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "skipped: no CUDA device" in result.stdout


def test_the_estimate_side_is_decide_estimate():
    engine = api.open_policy(None)
    for row in BENCH.ROWS:
        est = BENCH.estimate_row(engine, row, 139.8)
        table = engine.estimate(BENCH.facts_of(row, 139.8))["estimates"][row.method]
        assert est["total"] == table["memory"]["total_gib"]
        assert table["micro_batch_size"] == row.micro_batch  # the settings are used exactly
        assert est["allocated"] < est["reserved"] < est["total"]  # what each measurement leaves out
        assert est["accumulate"] == 1.0  # the bench runs two micro-batches per optimizer step
    assert BENCH.main(["--estimates-only", "--rows", "small"]) == 0


@pytest.mark.train
@pytest.mark.parametrize("method", ["full_ft", "lora", "qlora"])
def test_the_training_step_runs_on_a_tiny_model_on_the_cpu(method, tmp_path):
    pytest.importorskip("peft")
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128,
              "tie_word_embeddings": False}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    row = BENCH.Row(str(path), method, 2, 32, checkpointing=True, rank=4)
    model = BENCH.build_model(row, device="cpu")
    dtypes = {str(p.dtype) for n, p in model.named_parameters() if "lora_" not in n}
    # as the executors load it: full fine-tuning in fp32 (bf16 autocast), a frozen base in bf16, a 4-bit base
    # with its other parameters upcast to fp32 by peft's k-bit preparation
    assert dtypes == {"full_ft": {"torch.float32"}, "lora": {"torch.bfloat16"},
                      "qlora": {"torch.uint8", "torch.float32"}}[method]
    if method != "full_ft":
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
    if method == "qlora":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    optimizer = BENCH.make_optimizer(BENCH.Row(str(path), "lora" if method == "qlora" else method, 2, 32), model)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    BENCH.train_steps(row, model, optimizer, device="cpu", steps=1)
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not (a == b).all() for a, b in zip(after, before, strict=True))  # the step trained something
