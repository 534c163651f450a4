"""``decide merge RUN``: fold a trained adapter into its base model and prove the result is the trained model.

LoRA, DoRA, IA3 and AdaLoRA adapters are merged with peft's ``merge_and_unload``. For an adapter
trained on a 4-bit base (QLoRA, or any method with ``--load-in-4bit``), the model that was trained
is *NF4 weights + adapter*, not the original full-precision weights + adapter: by default the base
is loaded in 4-bit exactly as in training and dequantized (transformers' ``model.dequantize()``)
before the merge, so the merged model reproduces the trained one; ``base="original"`` merges into
the original weights instead (what most tools do; it differs by the quantization error).

The merged model is written in ``save_pretrained`` layout (safetensors, config, generation config,
tokenizer with the run's chat template) into a staging folder, reloaded from disk and compared with
the trained model (base as trained + adapter) on sample inputs: the maximum absolute logit
difference is printed and recorded. When it exceeds the tolerance (and the base was not the
original weights of a 4-bit run, where a difference is expected), nothing is kept and the command
exits 5. The report goes to ``merge.json`` in the merged folder and into the run's manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any

from . import get_executor
from .errors import Diagnostic, DiagnosticError, Location, PlanError
from .plan import load_plan, write_json_atomic

BASES = ("dequantized", "original")
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: default tolerance of the equivalence check by the merged model's dtype (max |logit difference|)
TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 1e-1}
MARKER = "merge.json"
PROBE_PROMPTS = ["What sound does a cow make?", "Write the number 12 in words.", "Give the opposite of the word hot.",
                 "Say hello."]


class MergeCheckFailed(DiagnosticError):
    """The merged model does not reproduce the trained model within the tolerance (exit 5, nothing kept)."""

    exit_code = 5


def _log(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def load_run_plan(run_dir: str, where: str = "RUN") -> dict:
    """Return the plan of the run folder ``run_dir``; raises PlanError when it is not a (finished) run."""
    from .rundir import PLAN_FILE, is_complete, is_run_dir

    if not is_run_dir(run_dir):
        raise PlanError([Diagnostic("run-not-found", f"{run_dir} is not a run folder (no plan.json and run-state.json)",
                                    Location(where), "give the --output folder of a finished `decide train`")])
    if not is_complete(run_dir) and not run_dir.endswith(".partial"):
        raise PlanError([Diagnostic("run-not-complete", f"{run_dir} has not finished training", Location(where),
                                    "finish it first: decide train --output ... --resume")])
    return load_plan(os.path.join(run_dir, PLAN_FILE))


def probe_inputs(plan: dict, tokenizer: Any, n: int = 4, max_len: int = 128) -> list[list[int]]:
    """Return up to ``n`` token sequences to compare models on: held-out examples of the run's data.

    When the run's data cannot be read any more, fixed prompts rendered with the run's chat template
    are used instead.
    """
    from .tokenized import build_run_data

    try:
        data = build_run_data(plan["data"], tokenizer, plan["model"]["path"])
        table = data.eval if data.eval is not None and len(data.eval) else data.train
        return [list(ids[:max_len]) for ids in table.select(range(min(n, len(table))))["input_ids"]]
    except (DiagnosticError, OSError, KeyError, TypeError):
        messages = [[{"role": "user", "content": p}] for p in PROBE_PROMPTS[:n]]
        texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
        return [list(tokenizer(t, add_special_tokens=False)["input_ids"][:max_len]) for t in texts]


def max_logit_difference(a: Any, b: Any, inputs: list[list[int]]) -> float:
    """Return the largest absolute difference between the logits of models ``a`` and ``b`` on ``inputs``."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for ids in inputs:
            x = torch.tensor([ids], dtype=torch.long)
            la = a(input_ids=x.to(_device(a))).logits.float().cpu()
            lb = b(input_ids=x.to(_device(b))).logits.float().cpu()
            worst = max(worst, float((la - lb).abs().max()))
    return worst


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _dtype_of(plan: dict, requested: str) -> str:
    if requested != "auto":
        return requested
    quant = plan.get("quantization")
    if quant:
        return str(quant["bitsandbytes"]["bnb_4bit_compute_dtype"])
    return str(plan["model"]["dtype"])


def merged_model(run_dir: str, plan: dict, base: str = "dequantized", dtype: str = "auto") -> Any:
    """Return the adapter of ``run_dir`` merged into its base (dequantized 4-bit base or original weights).

    Raises PlanError for a method that cannot be merged.
    """
    import torch
    from peft import PeftModel

    from .modeling import load_base_model

    executor = get_executor(plan["method"])
    path = os.path.join(run_dir, executor.artifact_dir)
    quantized = plan.get("quantization") is not None
    if quantized and base == "dequantized":
        model = load_base_model(plan)  # exactly as trained: the same NF4 weights
        model = model.dequantize()
        model.is_loaded_in_4bit = False  # transformers leaves the flag set, and peft refuses to merge IA3 on it
    else:
        model = load_base_model(plan, quantize=False)
    target = getattr(torch, _dtype_of(plan, dtype))
    model = model.to(target)
    merged = PeftModel.from_pretrained(model, path).merge_and_unload(safe_merge=True)
    return merged.to(target).eval()


def check_mergeable(plan: dict, where: str = "RUN") -> None:
    """Raise PlanError when the run's method has nothing to merge (full fine-tuning, prompt/prefix tuning)."""
    method = plan["method"]
    if method == "full_ft":
        raise PlanError([Diagnostic("merge-nothing", "a fully fine-tuned run has no adapter: its model/ folder is "
                                    "already the whole model", Location(where), "use RUN/model directly")])
    if not get_executor(method).can_merge:
        raise PlanError([Diagnostic("merge-unsupported", f"{method} cannot be merged into the model weights: its "
                                    "virtual tokens are not a weight update", Location(where),
                                    "load it with PeftModel.from_pretrained(base, RUN/adapter)")])


def merge_run_dir(run_dir: str, destination: str | None = None, *, base: str = "dequantized", dtype: str = "auto",
                  tolerance: float | None = None, samples: int = 4, overwrite: bool = False,
                  log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Merge the adapter of the run ``run_dir`` into its base, check it against the trained model, save it.

    ``destination`` defaults to ``RUN/merged``. Returns the report (also written to
    ``destination/merge.json`` and, for a finished run, into its manifest). Raises PlanError (exit
    2) for a run that cannot be merged or an occupied destination, MergeCheckFailed (exit 5) when
    the merged model differs from the trained one beyond ``tolerance`` (nothing is kept).
    """
    from transformers import AutoModelForCausalLM

    from .modeling import load_tokenizer, torch_dtype

    run_dir = os.path.abspath(run_dir)
    plan = load_run_plan(run_dir)
    check_mergeable(plan)
    if base not in BASES:
        raise PlanError([Diagnostic("merge-bad-base", f"unknown base `{base}`", Location("--base"),
                                    "dequantized or original")])
    executor = get_executor(plan["method"])
    destination = os.path.abspath(destination or os.path.join(run_dir, "merged"))
    if os.path.exists(destination) and not (overwrite and os.path.isfile(os.path.join(destination, MARKER))):
        raise PlanError([Diagnostic("merge-output-exists", f"{destination} exists", Location("--output"),
                                    "choose another --output, or --overwrite to replace a previous merge")])
    quantized = plan.get("quantization") is not None
    used_base = base if quantized else "original"
    out_dtype = _dtype_of(plan, dtype)
    tolerance = TOLERANCE.get(out_dtype, 1e-3) if tolerance is None else tolerance
    log(f"merging {plan['method']} from {run_dir} into the "
        + ("dequantized 4-bit base (the weights it was trained on)" if used_base == "dequantized"
           else "original base weights") + f", {out_dtype}")
    merged = merged_model(run_dir, plan, base, dtype)
    staging = f"{destination}.tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer = load_tokenizer(os.path.join(run_dir, executor.artifact_dir))
        tokenizer.save_pretrained(staging)
        del merged
        reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=torch_dtype(out_dtype)).eval()
        reference = executor.load_trained(run_dir, plan)
        inputs = probe_inputs(plan, tokenizer, samples)
        diff = max_logit_difference(reference, reloaded, inputs)
        expected_gap = quantized and used_base == "original"
        passed = None if expected_gap else diff <= tolerance
        report = {"run": run_dir, "output": destination, "method": plan["method"], "base": used_base,
                  "quantized_base": quantized, "dtype": out_dtype, "check": {
                      "max_abs_logit_diff": diff, "samples": len(inputs), "tokens": sum(len(i) for i in inputs),
                      "tolerance": tolerance, "passed": passed, "reference": "base as trained + adapter"
                      + (" (4-bit)" if quantized else "")}}
        log(f"equivalence check: max |logit difference| = {diff:.3g} over {len(inputs)} sample(s) "
            + (f"(tolerance {tolerance:g}): {'ok' if passed else 'FAILED'}" if passed is not None else
               "(merged into the original weights of a 4-bit run: the quantization error is expected here)"))
        if passed is False:
            raise MergeCheckFailed([Diagnostic(
                "merge-check-failed", f"the merged model differs from the trained model by {diff:.3g} in the logits "
                f"(tolerance {tolerance:g}); nothing was kept", Location(run_dir),
                "merge in float32 (--dtype float32), or raise --tolerance if the difference is acceptable")])
        write_json_atomic(os.path.join(staging, MARKER), report)
        if os.path.exists(destination):
            shutil.rmtree(destination)
        os.replace(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _record_in_manifest(run_dir, report)
    return report


def _record_in_manifest(run_dir: str, report: dict) -> None:
    path = os.path.join(run_dir, "run-manifest.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as fh:
        manifest = json.load(fh)
    manifest.setdefault("merges", []).append(report)
    rel = os.path.relpath(report["output"], run_dir)
    if not rel.startswith(".."):
        manifest.setdefault("artifacts", {})["merged"] = rel
    write_json_atomic(path, manifest)
