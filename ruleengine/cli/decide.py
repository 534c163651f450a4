"""The decision commands: `decide` itself, `decide explain`, `decide estimate` and `decide batch`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

import click

from ..exitcodes import ExitCode
from ..methods import method_names
from .common import (
    EXIT_CODES_HELP,
    build_facts,
    dump,
    error_format_option,
    exit_for,
    fact_options,
    facts_origin,
)


def _engine(kwargs: dict) -> Any:
    from .. import api

    return api.open_policy(kwargs.get("policy_path"))


def _record(decision: Any, engine: Any, no_audit: bool, audit_db: str | None) -> None:
    if no_audit:
        return
    from .. import api

    api.record(decision, engine, audit_db=audit_db)


def decide_and_show(kwargs: dict, *, fmt: str, explain: bool, no_audit: bool, audit_db: str | None) -> ExitCode:
    """Decide for the command-line facts, record, print; return the exit code (the root command's body)."""
    from ..render import render_decision_text, render_explanation

    engine = _engine(kwargs)
    decision = engine.decide(build_facts(kwargs), origin=facts_origin(kwargs), explain=explain)
    _record(decision, engine, no_audit, audit_db)
    data = decision.to_dict()
    if fmt == "table":
        click.echo(render_decision_text(data))
        if explain:
            click.echo("")
            click.echo(render_explanation(data))
    else:
        click.echo(dump(data, fmt))
    return exit_for(decision.feasible)


@click.command("explain", epilog=EXIT_CODES_HELP)
@fact_options
@click.option("--format", "fmt", type=click.Choice(["text", "json", "yaml"]), default="text", help="output format")
@click.option("--no-audit", is_flag=True, help="do not record this decision in the audit store")
@click.option("--audit-db", type=click.Path(dir_okay=False), default=None, help="audit store path")
def explain_command(fmt: str, no_audit: bool, audit_db: str | None, **kwargs: Any) -> ExitCode:
    """Why this method, why not each other one, and the smallest change of one fact that flips it.

    Counterfactuals are computed from the policy (GPU memory, GPU count, data size, model size),
    each a real evaluation, never a guess.
    """
    from ..render import render_explanation

    engine = _engine(kwargs)
    decision = engine.decide(build_facts(kwargs), origin=facts_origin(kwargs), explain=True)
    _record(decision, engine, no_audit, audit_db)
    data = decision.to_dict()
    if fmt == "text":
        click.echo(render_explanation(data))
    else:
        keys = ("decision_id", "feasible", "verdict", "chosen_rule", "rationale", "source", "rejected",
                "counterfactuals", "suggestions", "warnings", "trace")
        click.echo(dump({k: data.get(k) for k in keys}, fmt))
    return exit_for(decision.feasible)


@click.command("estimate", epilog=EXIT_CODES_HELP)
@fact_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table", help="output format")
@click.option("--breakdown", "breakdown", multiple=True, type=click.Choice([*method_names(), "all"]),
              help="also show this method's estimate term by term (weights, gradients, optimizer, activations "
                   "per layer x layers, logits, quantization constants, sharding, MoE experts, overhead); "
                   "repeatable, `all` for every method")
def estimate_command(fmt: str, breakdown: tuple[str, ...], **kwargs: Any) -> ExitCode:
    """Memory per GPU, trainable parameters and cost for every method (no rules are applied).

    Training settings given as facts (--precision, --optimizer, --micro-batch-size, --train-seq-len,
    --gradient-checkpointing, --sharding, --lora-rank, --target-modules ...) are used exactly, so
    you can estimate the configuration you have in mind. Data is optional (cost needs it).
    """
    from ..render import render_breakdown, render_estimates_table

    wanted = method_names() if "all" in breakdown else tuple(dict.fromkeys(breakdown))
    data = _engine(kwargs).estimate(build_facts(kwargs), origin=facts_origin(kwargs), breakdown=wanted)
    if fmt == "table":
        a, gpu = data["architecture"], data["gpu"]
        click.echo(f"Model: {a['params'] / 1e9:.2f}B parameters ({a['source']}), {a['num_layers']} layers, hidden "
                   f"{a['hidden_size']}; GPU: {gpu['count']}x {gpu['name'] or 'custom'} "
                   f"{gpu['memory_gb']:g} GiB, {data['usable_gb']:.1f} GiB usable")
        if a.get("num_experts"):
            click.echo(f"MoE: {a['num_experts']} routed experts per MoE layer, {a['num_experts_per_tok']} per token; "
                       f"{data['architecture_summary']['active_params'] / 1e9:.2f}B parameters active per token"
                       if "architecture_summary" in data else
                       f"MoE: {a['num_experts']} routed experts per MoE layer, {a['num_experts_per_tok']} per token")
        click.echo("\n".join(render_estimates_table(data["estimates"])))
        for name, entry in (data.get("breakdown") or {}).items():
            click.echo("")
            click.echo("\n".join(render_breakdown(name, entry)))
    else:
        click.echo(dump(data, fmt))
    return ExitCode.OK


# --- decide batch ------------------------------------------------------------------------------

def _summary(decision: Any) -> dict:
    """Return the compact batch result of a decision: identity, verdict, memory, warnings and notes codes."""
    chosen = decision.candidate
    return {"decision_id": decision.decision_id, "feasible": decision.feasible, "verdict": decision.verdict,
            "chosen_rule": decision.chosen_rule,
            "memory_gb": round(chosen.estimate.total_gib, 3) if chosen is not None else None,
            "warnings": [w["code"] for w in decision.warnings], "notes": [n["code"] for n in decision.notes],
            "suggestions": [s["text"] for s in decision.suggestions]}


_WORKER_ENGINE: Any = None


def _batch_worker_init(policy_path: str | None) -> None:
    global _WORKER_ENGINE
    from .. import api

    _WORKER_ENGINE = api.open_policy(policy_path)


def _batch_chunk(args: tuple[list[tuple[int, Any]], str, str, bool]) -> list[tuple[str, str, dict | None]]:
    """Decide one chunk of parsed batch inputs in a worker process (see ``_decide_one``)."""
    items, detail, origin, keep = args
    return [_decide_one(_WORKER_ENGINE, number, item, detail, origin, keep) for number, item in items]


def _decide_one(engine: Any, number: int, item: Any, detail: str, origin: str,
                keep: bool) -> tuple[str, str, dict | None]:
    """Return (JSON line, outcome, decision dict when ``keep``) for one batch input.

    The outcome is ``decided``, ``infeasible`` or ``error`` (the input is not valid facts).
    """
    from ..diagnostics import DiagnosticError

    error: DiagnosticError
    if isinstance(item, DiagnosticError):
        error = item
    else:
        try:
            decision = engine.decide(item, origin=origin)
        except DiagnosticError as exc:
            error = exc
        else:
            full = decision.to_dict() if detail == "full" or keep else None
            result = {"line": number, "ok": True, **({"decision": full} if detail == "full" else _summary(decision))}
            line = json.dumps(result, ensure_ascii=False, allow_nan=False)
            return line, ("decided" if decision.feasible else "infeasible"), full
    diags = error.diagnostics
    result = {"line": number, "ok": False, "exit_code": int(error.exit_code),
              "diagnostics": [d.to_dict() for d in diags[:50]]}
    if len(diags) > 50:
        result["more_diagnostics"] = len(diags) - 50
    return json.dumps(result, ensure_ascii=False), "error", None


def _results(engine: Any, input_path: str, policy_path: str | None, detail: str, workers: int,
             keep: bool) -> Iterator[tuple[str, str, dict | None]]:
    """Yield the result of every batch input in input order, deciding in ``workers`` processes."""
    from ..batchio import read_batch

    origin = os.path.dirname(os.path.abspath(input_path)) if input_path != "-" else os.getcwd()
    if workers <= 1:
        for number, item in read_batch(input_path):
            yield _decide_one(engine, number, item, detail, origin, keep)
        return
    import multiprocessing

    def chunks() -> Iterator[tuple[list[tuple[int, Any]], str, str, bool]]:
        batch: list[tuple[int, Any]] = []
        for pair in read_batch(input_path):
            batch.append(pair)
            if len(batch) == 256:
                yield batch, detail, origin, keep
                batch = []
        if batch:
            yield batch, detail, origin, keep

    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers, initializer=_batch_worker_init, initargs=(policy_path,)) as pool:
        for chunk in pool.imap(_batch_chunk, chunks()):
            yield from chunk


def _default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


@click.command("batch", epilog=EXIT_CODES_HELP)
@click.argument("input_path", metavar="INPUT", type=click.Path(allow_dash=True, dir_okay=False))
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              show_default=True, help="JSONL results, one line per input in input order")
@click.option("--policy", "policy_path", type=click.Path(), default=None,
              help="policy file or bundle directory (default: the bundled policies/default)")
@click.option("--detail", type=click.Choice(["summary", "full"]), default="summary", show_default=True,
              help="summary: id, verdict, memory, warning codes; full: the whole decision")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="processes deciding in parallel (default: the CPUs available, at most 8)")
@click.option("--no-audit", is_flag=True, help="do not record the decisions in the audit store")
@click.option("--audit-db", type=click.Path(dir_okay=False), default=None, help="audit store path")
@error_format_option
def batch_command(input_path: str, output_path: str, policy_path: str | None, detail: str, workers: int | None,
                  no_audit: bool, audit_db: str | None, error_format: str) -> ExitCode:
    """Decide many fact sets: INPUT is JSONL (one facts object per line) or a YAML list; `-` is stdin.

    Writes one JSON line per input, in input order: `{"line": N, "ok": true, ...}` with the decision
    (summary or full), or `{"line": N, "ok": false, "diagnostics": [...]}` for an input that is not
    valid facts; a bad input never stops the batch. A file given with -o is written completely or
    not at all. A summary goes to stderr. Exit 0 when every input was decided (feasible or not),
    2 when any input was bad, 3 for an invalid policy, 7 when the audit store cannot be written.
    """
    from .. import api

    engine = api.open_policy(policy_path)  # a bad policy fails here, before any input is read
    counts = {"decided": 0, "infeasible": 0, "error": 0}
    keep = not no_audit
    partial = output_path + ".partial" if output_path != "-" else None
    out: IO[str] = open(partial, "w", encoding="utf-8") if partial else sys.stdout  # noqa: SIM115
    try:
        for line, outcome, full in _results(engine, input_path, policy_path, detail,
                                            workers if workers is not None else _default_workers(), keep):
            counts[outcome] += 1
            if keep and full is not None:
                api.record(full, engine, audit_db=audit_db)
            out.write(line + "\n")
    except BaseException:
        if partial:
            out.close()
            os.unlink(partial)
        raise
    if partial:
        out.close()
        os.replace(partial, output_path)
    total = sum(counts.values())
    click.echo(f"batch: {total} inputs, {counts['decided']} decided, {counts['infeasible']} infeasible, "
               f"{counts['error']} bad", err=True)
    return ExitCode.BAD_INPUT if counts["error"] else ExitCode.OK
