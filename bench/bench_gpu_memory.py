"""Close the loop on a CUDA machine: measured peak memory of real architectures next to `decide estimate`.

For a few real architectures (fixture configs from 1.1B to 8B parameters, random weights built on the
GPU: nothing is downloaded) and full fine-tuning, LoRA and QLoRA at a few batch/sequence settings,
this runs the training step the executors run (the model in the plan's dtype, non-reentrant
activation checkpointing, peft's k-bit preparation and LoRA on all linear layers, bf16 autocast,
the HF causal-LM loss, two micro-batches per optimizer step, AdamW / paged 8-bit AdamW) and measures
``torch.cuda.max_memory_reserved`` and ``max_memory_allocated``. Next to them it prints what
`decide estimate` says for the same settings (``decide estimate`` total, and the memory model's
view of each measurement: MemoryProfile.measured_gib) and the error per row, then the median and
worst |error|.

    PYTHONPATH=. python bench/bench_gpu_memory.py [--rows small] [--csv]

Without CUDA (or without the train extra) it prints why it skipped and exits 0. ``--estimates-only``
prints the estimate side without a GPU. On one H200 the full set takes a few minutes.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ruleengine import api  # noqa: E402
from ruleengine.memory import GIB, profile  # noqa: E402

CONFIGS = ROOT / "tests" / "fixtures" / "configs"
MICRO_BATCHES_PER_STEP = 2  # gradient accumulation: the gradients of the first micro-batch live through the second
STEPS = 2


@dataclass(frozen=True)
class Row:
    """One measurement: a fixture config, a method and the training settings that change memory."""

    model: str
    method: str  # full_ft | lora | qlora
    micro_batch: int
    seq_len: int
    checkpointing: bool = True
    rank: int = 16

    @property
    def id(self) -> str:
        return (f"{self.model}-{self.method}-mb{self.micro_batch}x{self.seq_len}"
                f"{'' if self.checkpointing else '-nockpt'}")


ROWS = (
    Row("tinyllama-1.1b", "full_ft", 4, 1024),
    Row("tinyllama-1.1b", "full_ft", 2, 1024, checkpointing=False),
    Row("tinyllama-1.1b", "lora", 4, 2048),
    Row("tinyllama-1.1b", "qlora", 4, 2048),
    Row("llama-3.2-3b", "full_ft", 2, 2048),
    Row("llama-3.2-3b", "lora", 4, 2048, checkpointing=False),
    Row("llama-3.2-3b", "qlora", 4, 4096),
    Row("llama-3-8b", "lora", 2, 2048),
    Row("llama-3-8b", "qlora", 4, 2048),
    Row("llama-3-8b", "qlora", 2, 4096, checkpointing=False),
)
SMALL = ROWS[:4]  # --rows small: TinyLlama only, about a minute


def optimizer_of(method: str) -> str:
    """Return the optimizer the default policy trains ``method`` with (QLoRA: paged 8-bit AdamW)."""
    return "paged_adamw_8bit" if method == "qlora" else "adamw"


def facts_of(row: Row, gpu_memory_gb: float) -> dict:
    """Return the `decide estimate` facts of a row: the fixture config and every setting given exactly."""
    training: dict[str, Any] = {"precision": "bf16_mixed", "optimizer": optimizer_of(row.method),
                                "micro_batch_size": row.micro_batch, "seq_len": row.seq_len,
                                "gradient_checkpointing": row.checkpointing, "sharding": "none"}
    if row.method != "full_ft":
        training.update({"lora_rank": row.rank, "target_modules": "all-linear"})
    return {"model": {"config": str(CONFIGS / f"{row.model}.json")},
            "hardware": {"gpu_memory_gb": gpu_memory_gb, "gpu_count": 1}, "training": training}


def estimate_row(engine: Any, row: Row, gpu_memory_gb: float) -> dict[str, float]:
    """Return what `decide estimate` says for a row: its total, and the model's view of each measurement (GiB).

    Uses the derivation `decide estimate` prints from (the method's candidate at these settings), so the
    ``total`` equals the table's; ``reserved``/``allocated`` are MemoryProfile.measured_gib of that setup.
    """
    facts = facts_of(row, gpu_memory_gb)
    table = engine.estimate(facts)
    from ruleengine.pipeline import normalized_facts

    derived = engine.evaluator.derive(normalized_facts(engine.evaluator, facts, require=("model", "hardware")))
    cand = derived.defaults[row.method]
    setup = cand.training_setup(1)
    prof = profile(derived.arch, cand.method_config(), setup, derived.constants)
    return {"total": float(table["estimates"][row.method]["memory"]["total_gib"]),
            "reserved": prof.measured_gib(setup.micro_batch_size, "reserved"),
            "allocated": prof.measured_gib(setup.micro_batch_size, "allocated"),
            "accumulate": float(setup.gradient_accumulation)}


# --- the measurement (CUDA) -----------------------------------------------------------------


def _quantize_linears(model: Any, torch: Any) -> None:
    """Replace the decoder layers' nn.Linear with bitsandbytes NF4 Linear4bit (double quantization), in place.

    The same modules `from_pretrained(quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...))`
    builds, without writing random weights to disk first; lm_head and embeddings stay unquantized.
    Params4bit quantizes when moved to a device (bitsandbytes quantizes on GPU, and on CPU since 0.44).
    """
    import bitsandbytes as bnb

    out_emb = model.get_output_embeddings()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear) or child is out_emb:
                continue
            device = child.weight.device
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                                  device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                         compress_statistics=True).to(device)
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, child_name, q)
    model.is_loaded_in_4bit = True  # what peft's prepare_model_for_kbit_training looks for


def config_path(model: str) -> Path:
    """Return a fixture config by name, or ``model`` itself when it is a path to a config.json."""
    path = Path(model)
    return path if path.suffix == ".json" else CONFIGS / f"{model}.json"


def build_model(row: Row, device: str = "cuda") -> Any:
    """Return the row's model with random weights on ``device``, prepared as the executors prepare it."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM

    from executors.base import enable_activation_checkpointing

    raw = json.loads(config_path(row.model).read_text(encoding="utf-8"))
    config = AutoConfig.for_model(**{k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")})
    # the executors load full fine-tuning in fp32 under bf16 mixed precision, a frozen base in bf16
    dtype = torch.float32 if row.method == "full_ft" else torch.bfloat16
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    if row.method == "qlora":
        _quantize_linears(model, torch)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=row.checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif row.checkpointing:
        enable_activation_checkpointing(model)
    if row.method != "full_ft":
        lora = LoraConfig(task_type="CAUSAL_LM", r=row.rank, lora_alpha=2 * row.rank, lora_dropout=0.05,
                          target_modules="all-linear")
        model = get_peft_model(model, lora)
    model.train()
    return model


def make_optimizer(row: Row, model: Any) -> Any:
    """Return the optimizer the executors map the row's optimizer to (adamw_torch, paged_adamw_8bit)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer_of(row.method) == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=1e-4)
    return torch.optim.AdamW(params, lr=1e-4)


def train_steps(row: Row, model: Any, optimizer: Any, device: str = "cuda", steps: int = STEPS) -> None:
    """Run ``steps`` optimizer steps of MICRO_BATCHES_PER_STEP micro-batches (bf16 autocast, HF loss)."""
    import torch

    vocab = model.config.vocab_size
    for _ in range(steps):
        for _ in range(MICRO_BATCHES_PER_STEP):
            ids = torch.randint(0, vocab, (row.micro_batch, row.seq_len), device=device)
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss / MICRO_BATCHES_PER_STEP
            loss.backward()
            del loss, ids
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure_row(row: Row) -> dict[str, float]:
    """Return the measured peaks of one row on the current CUDA device (GiB), freeing everything after."""
    import torch

    torch.cuda.empty_cache()
    model = build_model(row)
    optimizer = make_optimizer(row, model)
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # what building and quantizing freed is not part of training's peak
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train_steps(row, model, optimizer)
    torch.cuda.synchronize()
    out = {"reserved": torch.cuda.max_memory_reserved() / GIB, "allocated": torch.cuda.max_memory_allocated() / GIB,
           "seconds": time.perf_counter() - start}
    del model, optimizer
    gc.collect()
    torch.cuda.empty_cache()
    return out


def _skip_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed (the train extra); nothing to measure"
    if not torch.cuda.is_available():
        return "no CUDA device; the GPU memory check needs one (its estimate side: --estimates-only)"
    return None


def main(argv: list[str]) -> int:
    """Measure and compare every row (or print why not); returns the exit code (0)."""
    rows = SMALL if "--rows" in argv and argv[argv.index("--rows") + 1] == "small" else ROWS
    engine = api.open_policy(None)
    if "--estimates-only" in argv:
        print(f"{'row':42s} {'decide estimate':>15s} {'reserved view':>14s} {'allocated view':>15s}")
        for row in rows:
            e = estimate_row(engine, row, 139.8)
            print(f"{row.id:42s} {e['total']:15.2f} {e['reserved']:14.2f} {e['allocated']:15.2f}")
        return 0
    why = _skip_reason()
    if why:
        print(f"bench_gpu_memory: skipped: {why}")
        return 0
    import torch

    gpu_gib = torch.cuda.get_device_properties(0).total_memory / GIB
    print(f"device: {torch.cuda.get_device_name(0)}, {gpu_gib:.1f} GiB; torch {torch.__version__}")
    csv = "--csv" in argv
    if csv:
        print("id,estimate_total,estimate_reserved,measured_reserved,error_reserved_pct,estimate_allocated,"
              "measured_allocated,error_allocated_pct,seconds")
    else:
        print(f"{'row':42s} {'estimate':>8s} | {'reserved':>8s} {'est.':>6s} {'error':>7s} | {'allocated':>9s} "
              f"{'est.':>6s} {'error':>7s} | {'s':>5s}")
    errors: list[float] = []
    for row in rows:
        est = estimate_row(engine, row, gpu_gib)
        try:
            got = measure_row(row)
        except torch.OutOfMemoryError:
            print(f"{row.id:42s} out of memory (estimate {est['total']:.2f} GiB)")
            gc.collect()
            torch.cuda.empty_cache()
            continue
        err_r = (est["reserved"] - got["reserved"]) / got["reserved"]
        err_a = (est["allocated"] - got["allocated"]) / got["allocated"]
        errors.append(abs(err_r))
        if csv:
            print(f"{row.id},{est['total']:.3f},{est['reserved']:.3f},{got['reserved']:.3f},{100 * err_r:+.1f},"
                  f"{est['allocated']:.3f},{got['allocated']:.3f},{100 * err_a:+.1f},{got['seconds']:.1f}")
        else:
            print(f"{row.id:42s} {est['total']:8.2f} | {got['reserved']:8.2f} {est['reserved']:6.2f} "
                  f"{100 * err_r:+6.1f}% | {got['allocated']:9.2f} {est['allocated']:6.2f} {100 * err_a:+6.1f}% | "
                  f"{got['seconds']:5.1f}", flush=True)
    if errors and not csv:
        print(f"\n{len(errors)} rows: median |error| (reserved) {100 * statistics.median(errors):.1f}%, "
              f"worst {100 * max(errors):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
