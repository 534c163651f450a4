"""Time per optimizer step of LoRA vs full fine-tuning on the tiny Llama, in one process.

    .venv/bin/python bench/bench_train_step.py [--steps 30] [--hidden-size 64] [--layers 2] [--methods lora,full_ft]

Both runs use the same model, data (examples/data/alpaca.jsonl), batch and precision (fp32 on the
CPU), through the real recipe (executors.runner). The median step time excludes the first step.
Prints one line per method and the ratio to full fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VERDICT = {
    "method": "lora", "rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear", "use_dora": False,
    "num_virtual_tokens": 20, "adapter_size": None, "init_rank": 24, "quantization": None,
    "training": {"precision": "bf16_mixed", "optimizer": "adamw", "learning_rate": 1e-3, "lr_scheduler": "constant",
                 "warmup_ratio": 0.0, "epochs": 1, "micro_batch_size": 8, "gradient_accumulation_steps": 1,
                 "gradient_checkpointing": False, "seq_len": 128, "sharding": "none", "gpu_count": 1,
                 "layerwise_lr_decay": None},
    "multitask": None,
}


def main() -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--methods", default="lora,full_ft", help="comma list; full_ft is the reference")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds over the methods (alternating order); the best median of each is kept, "
                             "which filters out other load on the machine")
    args = parser.parse_args()

    from executors.plan import PlanOptions, build_plan
    from executors.runner import run_training
    from executors.tiny import build_tiny_model
    from ruleengine.paths import example

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "full_ft" not in methods:
        methods.append("full_ft")
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(os.path.join(tmp, "model"), hidden_size=args.hidden_size, num_layers=args.layers,
                                 intermediate_size=2 * args.hidden_size)
        data = [str(example("data/alpaca.jsonl"))]
        rounds = [methods if i % 2 == 0 else methods[::-1] for i in range(max(1, args.repeats))]
        for i, method in ((i, m) for i, order in enumerate(rounds) for m in order):
            verdict = copy.deepcopy(VERDICT)
            verdict["method"] = method
            verdict["use_dora"] = method == "dora"
            verdict["training"]["gradient_checkpointing"] = args.gradient_checkpointing
            plan = build_plan(verdict, model_path=model, data_files=data,
                              options=PlanOptions(max_steps=args.steps, save_steps=10_000, eval_fraction=0.0,
                                                  device="cpu"))
            result = run_training(plan, os.path.join(tmp, f"{method}-{i}"), progress=False, log=lambda m: None)
            tps = result.manifest["time_per_step"]
            times[method] = min(times.get(method, float("inf")), tps["median_s"])
            print(f"round {i + 1}: {method:14s} median {tps['median_s'] * 1e3:8.2f} ms/step  p90 {tps['p90_s'] * 1e3:8.2f} ms  "
                  f"trainable {plan['trainable_params']['peft']:>10,}  peak RSS "
                  f"{result.manifest['memory']['measured_peak']['gib']:.2f} GiB", flush=True)
    ref = times["full_ft"]
    for method, t in times.items():
        print(f"best {method:14s} {t * 1e3:8.2f} ms/step")
    for method, t in times.items():
        if method != "full_ft":
            print(f"ratio {method} / full_ft = {t / ref:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
