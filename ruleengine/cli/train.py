"""``decide plan``, ``train``, ``eval``, ``merge``, ``combine`` and ``make-tiny-model`` (registered on ``decide``).

Thin wrappers: the work is in executors.plan / runner / evaluate / merge / combine. Importing this
module imports click and the rule engine's CLI helpers only: torch, transformers, peft, datasets
and trl are imported after the decision is made, inside the commands.

\b
  decide plan --facts job.yaml --model ./base-model --data train.jsonl -o plan.json [--method M]
  decide train --plan plan.json --output runs/doc-style
  decide train --facts job.yaml --model meta-llama/Llama-3.2-1B --data org/dataset --output runs/x
  decide train --output runs/doc-style --resume
  decide eval runs/doc-style
  decide merge runs/doc-style
  decide combine runs/a runs/b --method ties --output combined
  decide make-tiny-model ./tiny-model
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click

from executors.errors import Diagnostic, Location, PlanError

from ..exitcodes import ExitCode
from ..vocabulary import METHODS
from .common import EXIT_CODES_HELP, build_facts, error_format_option, fact_options, facts_given_by_flags

__all__ = ["combine_command", "eval_command", "merge_command", "plan_command", "tiny_model_command", "train_command"]


def plan_options(func: Callable) -> Callable:
    """Add the plan flags (model, data, method override, run settings) to a command."""
    options = [
        click.option("--model", "model_path", type=str, default=None,
                     help="base model: a directory (config.json, weights, tokenizer) or a Hub id (org/name[@rev]) "
                          "resolved from the local Hugging Face cache"),
        click.option("--data", "data_files", type=str, multiple=True,
                     help="training data: JSONL/JSON/CSV/TSV/Parquet/Arrow file, dataset folder, or Hub dataset id "
                          "from the local cache; repeat for several tasks (each source is a task)"),
        click.option("--data-format", type=click.Choice(["auto", "alpaca", "chat", "messages", "sharegpt",
                                                         "prompt_completion", "text"]), default="auto",
                     help="record format (default: detected per record; messages = chat)"),
        click.option("--data-split", default=None, help="split of a dataset folder or Hub dataset (default: train)"),
        click.option("--chat-template", default="auto", show_default=True,
                     help="how conversations are rendered: auto (the model's template, else a built-in one), model, "
                          "chat, alpaca, or a .jinja file; saved with the adapter"),
        click.option("--padding-free/--padded", "padding_free", default=None,
                     help="flatten each micro-batch into one row (no padding tokens; default on, except prompt/prefix "
                          "tuning)"),
        click.option("--method", type=click.Choice(list(METHODS)), default=None,
                     help="override the policy's method (recorded as `override` in the plan)"),
        click.option("--eval-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
                     help="held-out fraction of each task for the eval loss"),
        click.option("--max-steps", type=click.IntRange(min=1), default=None,
                     help="optimizer steps (default: from the verdict's epochs and the data)"),
        click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="override the verdict's learning rate (recorded in the plan)"),
        click.option("--packing/--no-packing", default=False,
                     help="pack examples into sequences of seq_len (best-fit, never split, no attention across them)"),
        click.option("--weight-decay", type=click.FloatRange(min=0), default=None,
                     help="AdamW weight decay (default: the verdict's, else 0)"),
        click.option("--max-grad-norm", type=click.FloatRange(min=0), default=None,
                     help="gradient clipping norm (default: the verdict's, else 1.0; 0 turns clipping off)"),
        click.option("--eval-strategy", type=click.Choice(["no", "steps", "epoch"]), default=None,
                     help="evaluate during training (default: steps, at each checkpoint, when there is held-out data)"),
        click.option("--eval-steps", type=click.IntRange(min=1), default=None, help="evaluate every N steps"),
        click.option("--report-to", type=click.Choice(["none", "tensorboard", "wandb", "mlflow"]), multiple=True,
                     help="experiment tracker(s) for the loss curves (repeatable; default none)"),
        click.option("--merge", is_flag=True, help="also write the adapter merged into the base (merged/)"),
        click.option("--load-in-4bit", is_flag=True, help="load the base in 4-bit NF4 (bitsandbytes) for a PEFT method"),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="where the run will train (not where it is planned): auto = CUDA here if present, CUDA "
                          "elsewhere for a multi-GPU verdict, else this CPU; cpu = CPU processes (one per planned GPU)"),
        click.option("--seed", type=int, default=0, show_default=True, help="seed for init, split, mixing, order"),
        click.option("--save-steps", type=click.IntRange(min=1), default=None,
                     help="checkpoint every N steps (default: 5 checkpoints per run)"),
        click.option("--save-total-limit", type=click.IntRange(min=1), default=2, show_default=True,
                     help="checkpoints kept"),
        click.option("--logging-steps", type=click.IntRange(min=1), default=1, show_default=True,
                     help="log the loss every N steps"),
        click.option("--mix-cap", type=click.IntRange(min=1), default=None,
                     help="cap N_i before temperature mixing of tasks (default: the verdict's)"),
        click.option("--no-audit", is_flag=True, help="do not record the decision in the audit store"),
        click.option("--audit-db", type=click.Path(dir_okay=False), default=None, help="audit store path"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def make_plan(kwargs: dict) -> dict:
    """Return the plan for the command-line ``kwargs``: validate data, decide, then build the plan.

    Raises DataError / PlanError / FactsError (exit 2), PolicyError (3), InfeasibleDecision (1).
    """
    from executors.data import scan_files
    from executors.decision_bridge import run_decision
    from executors.formats import canonical_format
    from executors.hub import resolve_model
    from executors.plan import PlanOptions, build_plan

    if not kwargs.get("model_path"):
        raise PlanError([Diagnostic("plan-no-model", "--model is required", Location("--model"),
                                    "give the base model directory or Hub id; for a demo: decide make-tiny-model "
                                    "./tiny-model")])
    data_format = canonical_format(kwargs.get("data_format"))
    data_files = list(kwargs.get("data_files") or [])
    # bad data fails before anything else
    scans = scan_files(data_files, data_format, kwargs.get("data_split")) if data_files else None
    model_path = resolve_model(kwargs["model_path"]).path
    given = build_facts(kwargs)
    facts_file = kwargs.get("facts_file")
    origin = os.path.dirname(os.path.abspath(facts_file)) if facts_file else os.getcwd()
    outcome = run_decision(given, policy_path=kwargs.get("policy_path"), model_path=model_path, scans=scans,
                           method=kwargs.get("method"), origin=origin, no_audit=kwargs.get("no_audit", False),
                           audit_db=kwargs.get("audit_db"))
    options = PlanOptions(eval_fraction=kwargs.get("eval_fraction", 0.1), max_steps=kwargs.get("max_steps"),
                          packing=kwargs.get("packing", False), merge=kwargs.get("merge", False),
                          load_in_4bit=kwargs.get("load_in_4bit", False), device=kwargs.get("device", "auto"),
                          seed=kwargs.get("seed", 0), save_steps=kwargs.get("save_steps"),
                          save_total_limit=kwargs.get("save_total_limit", 2),
                          logging_steps=kwargs.get("logging_steps", 1), data_format=data_format,
                          mix_cap=kwargs.get("mix_cap"), learning_rate=kwargs.get("learning_rate"),
                          chat_template=kwargs.get("chat_template"), data_split=kwargs.get("data_split"),
                          padding_free=kwargs.get("padding_free"),
                          report_to=tuple(r for r in kwargs.get("report_to") or () if r != "none"),
                          weight_decay=kwargs.get("weight_decay"), max_grad_norm=kwargs.get("max_grad_norm"),
                          eval_strategy=kwargs.get("eval_strategy"), eval_steps=kwargs.get("eval_steps"))
    return build_plan(outcome.verdict, model_path=kwargs["model_path"], data_files=data_files, options=options,
                      decision=outcome.summary, override=outcome.override, scans=scans)


@click.command("plan", epilog=EXIT_CODES_HELP)
@fact_options
@plan_options
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False), default=None,
              help="write the plan to this file (default: print it)")
def plan_command(output_path: str | None, **kwargs: Any) -> ExitCode:
    """Decide, then write the exact training plan: method, peft and bitsandbytes configs, training
    arguments for this device, data files with sha256, trainable parameters. Needs no GPU.

    \b
    Examples:
      decide plan --facts examples/job.yaml --model ./tiny-model --data examples/data/alpaca.jsonl -o plan.json
      decide plan --facts job.yaml --model ./tiny-model --data a.jsonl --data b.jsonl --method adalora
    """
    from executors.plan import summarize, write_plan

    plan = make_plan(kwargs)
    if output_path:
        write_plan(plan, output_path)
        click.echo(summarize(plan), err=True)
        click.echo(f"plan written to {output_path}", err=True)
    else:
        click.echo(json.dumps(plan, indent=2, ensure_ascii=False))
    return ExitCode.OK


def _fmt(value: Any, spec: str = ".4f") -> str:
    """Return ``value`` formatted with ``spec``, or ``n/a`` for None."""
    return "n/a" if value is None else format(value, spec)


def run_summary(result: Any) -> str:
    """Return the end-of-run summary: losses, time per step, measured peak memory vs the estimate."""
    m, man = result.metrics, result.manifest
    tps = man.get("time_per_step", {})
    mem = man.get("memory", {})
    peak = mem.get("measured_peak") or {}
    lines = [
        f"run complete: {result.output_dir}",
        f"method {result.plan['method']}: eval loss {_fmt(m.get('eval_loss_before'))} -> {_fmt(m.get('eval_loss_after'))}"
        f"  (train loss {_fmt(m.get('train_loss_first'))} -> {_fmt(m.get('train_loss_last'))}, {m.get('global_step')} steps)",
        f"time per step: {_fmt(tps.get('median_s'), '.3f')} s median  wall {_fmt(man.get('wall_time_s'), '.1f')} s",
        f"peak memory: {_fmt(peak.get('gib'), '.3f')} GiB ({peak.get('kind')})  decision estimate: "
        f"{_fmt(mem.get('decision_estimate_gib'), '.3f')} GiB",
    ]
    batches = m.get("batches") or {}
    if batches.get("tokens"):
        lines.append(f"batches: {batches['tokens']:,} tokens, padding {batches['padding_fraction']:.1%}"
                     + (" (padding-free; padded batches would have been "
                        f"{batches['padding_fraction_if_padded']:.1%})" if batches.get("padding_free") else ""))
    if man.get("processes", 1) > 1:
        lines.append(f"processes: {man['processes']} (wall time and steps summed over all of them)")
    pictures = [man.get("artifacts", {}).get(k) for k in ("loss_curve", "memory")]
    if any(pictures):
        lines.append("pictures: " + ", ".join(p for p in pictures if p))
    return "\n".join(lines)


@click.command("train", epilog=EXIT_CODES_HELP)
@fact_options
@plan_options
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), default=None, help="a plan from `decide plan`")
@click.option("--output", "output_dir", type=click.Path(file_okay=False), required=True,
              help="run directory (trained in <output>.partial, renamed when complete)")
@click.option("--resume", is_flag=True, help="continue an interrupted run from its last checkpoint")
@click.option("--overwrite", is_flag=True,
              help="replace a previous run in --output (finished or interrupted); anything else is refused")
@click.option("--progress/--no-progress", default=True, help="progress bars on the terminal")
def train_command(plan_path: str | None, output_dir: str, resume: bool, overwrite: bool, progress: bool,
                  **kwargs: Any) -> ExitCode:
    """Train: from a plan (--plan), from facts (decides and plans first), or resume (--resume).

    \b
    Examples:
      decide train --plan plan.json --output runs/doc-style
      decide train --facts examples/job.yaml --model ./tiny-model --data examples/data/alpaca.jsonl --output runs/x
      decide train --output runs/doc-style --resume
    """
    from executors.plan import load_plan
    from executors.runner import run_training

    planning = bool(kwargs.get("model_path") or kwargs.get("data_files") or facts_given_by_flags(kwargs))
    if plan_path and planning:
        raise PlanError([Diagnostic("train-plan-and-facts", "give either --plan or --facts/--model/--data, not both",
                                    Location("--plan"))])
    if resume and overwrite:
        raise PlanError([Diagnostic("train-resume-overwrite", "--resume and --overwrite exclude each other",
                                    Location("--resume"))])
    if plan_path:
        plan = load_plan(plan_path)
    elif planning:
        plan = make_plan(kwargs)
    elif resume:
        plan = None
    else:
        raise PlanError([Diagnostic("train-nothing", "nothing to train", Location("--plan"),
                                    "give --plan, or --facts/--model/--data, or --resume")])

    def log(msg: str) -> None:
        """Print a progress message on stderr."""
        click.echo(msg, err=True)

    for warning in (plan or {}).get("warnings", []):
        log(f"warning[{warning['code']}]: {warning['message']}")
    for note in (plan or {}).get("notes", []):
        log(f"note: {note}")

    result = run_training(plan, output_dir, resume=resume, overwrite=overwrite, log=log, progress=progress)
    if result.launch_command:
        click.echo(result.launch_command)
    elif result.already_complete:
        click.echo(f"{result.output_dir} is complete")
    else:
        click.echo(run_summary(result))
    return ExitCode.OK


@click.command("make-tiny-model")
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="JSONL files to train the tokenizer on (default: the bundled examples/data)")
@click.option("--vocab-size", type=click.IntRange(min=260), default=512, show_default=True)
@click.option("--hidden-size", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--kv-heads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--intermediate-size", type=click.IntRange(min=8), default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def tiny_model_command(output_dir: str, corpus: tuple[str, ...], vocab_size: int, hidden_size: int, layers: int,
                       heads: int, kv_heads: int, intermediate_size: int, seed: int) -> None:
    """Build a tiny random Llama model and a BPE tokenizer trained locally, for demos and tests.

    \b
    Example:
      decide make-tiny-model ./tiny-model
    """
    from executors.tiny import build_tiny_model

    from ..paths import BundledDataMissing

    try:
        path = build_tiny_model(output_dir, list(corpus) or None, vocab_size=vocab_size, hidden_size=hidden_size,
                                num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                                intermediate_size=intermediate_size, seed=seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except BundledDataMissing as exc:  # a broken install: an internal error (exit 4) that says what to do
        raise BundledDataMissing(f"{exc} (or give --corpus)") from None
    click.echo(path)


@click.command("merge", epilog=EXIT_CODES_HELP)
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False), default=None,
              help="where to write the merged model (default: RUN/merged)")
@click.option("--base", type=click.Choice(["dequantized", "original"]), default="dequantized", show_default=True,
              help="for an adapter trained on a 4-bit base: merge into the dequantized 4-bit weights it was trained "
                   "on (reproduces the trained model), or into the original full-precision weights")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="dtype of the saved model (auto: the run's base / compute dtype)")
@click.option("--tolerance", type=click.FloatRange(min=0), default=None,
              help="largest acceptable max |logit difference| against the trained model (default by dtype)")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="held-out examples the equivalence check runs on")
@click.option("--overwrite", is_flag=True, help="replace a previous merge in --output")
@error_format_option
def merge_command(run_dir: str, output_dir: str | None, base: str, dtype: str, tolerance: float | None, samples: int,
                  overwrite: bool, error_format: str) -> ExitCode:
    """Merge a run's adapter (LoRA, DoRA, IA3, AdaLoRA) into its base model, check that the merged model
    reproduces the trained one (max logit difference on held-out inputs), and save it in
    save_pretrained layout. Exit 5 (nothing kept) when the check fails.

    \b
    Examples:
      decide merge runs/qlora                     # into the dequantized 4-bit base it was trained on
      decide merge runs/qlora --base original -o merged-original
    """
    from executors.merge import merge_run_dir

    report = merge_run_dir(run_dir, output_dir, base=base, dtype=dtype, tolerance=tolerance, samples=samples,
                           overwrite=overwrite, log=lambda m: click.echo(m, err=True))
    click.echo(f"merged model written to {report['output']} (max |logit difference| "
               f"{report['check']['max_abs_logit_diff']:.3g})")
    return ExitCode.OK


@click.command("eval", epilog=EXIT_CODES_HELP)
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--data", "data_files", multiple=True,
              help="held-out data to measure task perplexity on (default: the run's own held-out split)")
@click.option("--general", type=click.Path(dir_okay=False, exists=True), default=None,
              help="general text for the forgetting check (JSONL with `text`, or plain paragraphs; default: a bundled "
                   "English sample)")
@click.option("--policy", "policy_path", type=click.Path(exists=True), default=None,
              help="policy whose forgetting_ppl_increase threshold flags forgetting (default: the bundled policy)")
@click.option("--max-examples", type=click.IntRange(min=1), default=200, show_default=True,
              help="examples per perplexity measurement")
@click.option("--generate", type=click.IntRange(min=0), default=8, show_default=True,
              help="held-out conversations the model answers for the format check (0: none)")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", help="output format")
@error_format_option
def eval_command(run_dir: str, data_files: tuple[str, ...], general: str | None, policy_path: str | None,
                 max_examples: int, generate: int, max_new_tokens: int, fmt: str, error_format: str) -> ExitCode:
    """Evaluate a finished run: task perplexity before/after, a forgetting check on general text
    (flagged above the policy's forgetting threshold: a result, exit 0), and format adherence of
    generated answers (stop token, no run-on, valid JSON / tool calls where expected). Writes
    RUN/eval.json and the run manifest's `evaluation`.

    \b
    Examples:
      decide eval runs/demo
      decide eval runs/demo --data held-out.jsonl --general wiki-sample.jsonl
    """
    from executors.evaluate import evaluate_run, summarize_eval

    report = evaluate_run(run_dir, data_files=list(data_files) or None, general=general, policy_path=policy_path,
                          max_examples=max_examples, generate=generate, max_new_tokens=max_new_tokens,
                          log=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(report, indent=2) if fmt == "json" else summarize_eval(report))
    return ExitCode.OK


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("a comma-separated list of numbers, e.g. 0.7,0.3") from None


@click.command("combine", epilog=EXIT_CODES_HELP)
@click.argument("runs", metavar="RUN...", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False), required=True,
              help="folder of the combined adapter")
@click.option("--method", type=click.Choice(["weighted", "ties", "dare", "dare_ties"]), default="weighted",
              show_default=True, help="weighted sum (exact), TIES, DARE, or DARE with TIES' sign election")
@click.option("--weights", callback=_floats, default=None,
              help="one weight per run, comma-separated (default: 1/n for weighted, 1 for the others)")
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="fraction of each update kept by TIES/DARE (default 0.5)")
@click.option("--rank", type=click.IntRange(min=1), default=None,
              help="rank of the combined adapter for ties/dare (default: the sum of the input ranks)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of DARE's random drops")
@click.option("--overwrite", is_flag=True, help="replace a previous combination in --output")
@error_format_option
def combine_command(runs: tuple[str, ...], output_dir: str, method: str, weights: list[float] | None,
                    density: float | None, rank: int | None, seed: int, overwrite: bool, error_format: str) -> ExitCode:
    """Combine the LoRA adapters of several runs on the same base into one adapter (peft
    add_weighted_adapter): weighted sum, TIES or DARE. Incompatible runs are refused (exit 2).

    \b
    Examples:
      decide combine runs/sounds runs/numbers -o combined --weights 0.6,0.4
      decide combine runs/a runs/b runs/c -o merged-ties --method ties --density 0.3
    """
    from executors.combine import combine_runs

    report = combine_runs(list(runs), output_dir, method=method, weights=weights, density=density, rank=rank,
                          seed=seed, overwrite=overwrite, log=lambda m: click.echo(m, err=True))
    click.echo(f"combined adapter ({method}, rank {report['rank']}) written to {report['output']}")
    for item in report["distance_from_inputs"]:
        click.echo(f"  relative distance from {item['run']}: {item['relative_distance']:.3f}")
    return ExitCode.OK

