"""The decision commands: `decide` itself, `decide explain`, `decide estimate` and `decide batch`."""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

import click

from ..exitcodes import ExitCode
from ..methods import method_names
from ..pipeline import summary_of
from .common import (
    EXIT_CODES_HELP,
    audit_options,
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


def _record(decision: Any, engine: Any, no_audit: bool, audit_db: str | None, audit_key: str | None) -> None:
    if no_audit:
        return
    from .. import api

    api.record(decision, engine, audit_db=audit_db, key_path=audit_key)


def decide_and_show(kwargs: dict, *, fmt: str, explain: bool, no_audit: bool, audit_db: str | None,
                    audit_key: str | None = None) -> ExitCode:
    """Decide for the command-line facts, record, print; return the exit code (the root command's body)."""
    from ..render import render_decision_text, render_explanation

    engine = _engine(kwargs)
    decision = engine.decide(build_facts(kwargs), origin=facts_origin(kwargs), explain=explain)
    _record(decision, engine, no_audit, audit_db, audit_key)
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
@audit_options
def explain_command(fmt: str, no_audit: bool, audit_db: str | None, audit_key: str | None,
                    **kwargs: Any) -> ExitCode:
    """Why this method, why not each other one, and the smallest change of one fact that flips it.

    Counterfactuals are computed from the policy (GPU memory, GPU count, data size, model size),
    each a real evaluation, never a guess.
    """
    from ..render import render_explanation

    engine = _engine(kwargs)
    decision = engine.decide(build_facts(kwargs), origin=facts_origin(kwargs), explain=True)
    _record(decision, engine, no_audit, audit_db, audit_key)
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

def _bucket_worker(policy_path: str | None, bucket: list[tuple[int, int, Any]], detail: str, origin: str,
                   keep: bool, results: Any) -> None:
    """Decide one worker's share of a batch, sending ``[(position, result), ...]`` chunks, then None."""
    from .. import api

    try:
        engine = api.open_policy(policy_path)
        _for_throughput()
        for start in range(0, len(bucket), 256):
            results.put([(pos, _decide_one(engine, number, item, detail, origin, keep))
                         for pos, number, item in bucket[start:start + 256]])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the batch
        results.put(("failed", f"{type(exc).__name__}: {exc}"))
        return
    results.put(None)


def _route(item: Any) -> int:
    """Return a stable number for an input: equal facts get the same one (and so the same worker)."""
    data = getattr(item, "data", None)
    if data is None:
        return 0
    try:
        return hash(json.dumps(data, sort_keys=True, default=str))
    except (TypeError, ValueError):
        return 0


def _parallel(items: list[tuple[int, Any]], policy_path: str | None, detail: str, origin: str, keep: bool,
              workers: int) -> Iterator[tuple[str, str, Any]]:
    """Yield every input's result in input order, deciding in ``workers`` processes.

    Equal inputs go to the same worker, so each worker's memo answers their repeats. Raises
    RuntimeError when a worker fails (an internal error: nothing is half-written, the caller
    discards the output).
    """
    import multiprocessing
    import queue

    buckets: list[list[tuple[int, int, Any]]] = [[] for _ in range(workers)]
    for pos, (number, item) in enumerate(items):
        buckets[_route(item) % workers].append((pos, number, item))
    ctx: Any = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    results = ctx.Queue(maxsize=4 * workers)
    procs = [ctx.Process(target=_bucket_worker, args=(policy_path, bucket, detail, origin, keep, results), daemon=True)
             for bucket in buckets if bucket]
    for proc in procs:
        proc.start()
    ready: dict[int, tuple[str, str, Any]] = {}
    next_pos, finished = 0, 0
    try:
        while finished < len(procs):
            try:
                message = results.get(timeout=1.0)
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("a batch worker process died") from None
                continue
            if message is None:
                finished += 1
                continue
            if isinstance(message, tuple):
                raise RuntimeError(f"a batch worker failed: {message[1]}")
            for pos, result in message:
                ready[pos] = result
            while next_pos in ready:
                yield ready.pop(next_pos)
                next_pos += 1
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()


def _decide_one(engine: Any, number: int, item: Any, detail: str, origin: str,
                keep: bool) -> tuple[str, str, Any]:
    """Return (JSON line, outcome, the decision prepared for the audit store when ``keep``) for one batch input.

    The outcome is ``decided``, ``infeasible`` or ``error`` (the input is not valid facts).
    """
    from .. import api
    from ..diagnostics import DiagnosticError

    error: DiagnosticError
    if isinstance(item, DiagnosticError):
        error = item
    else:
        try:
            if detail == "summary" and not keep:
                summary = engine.summarize(item, origin=origin)
                line = json.dumps({"line": number, "ok": True, **summary}, ensure_ascii=False, allow_nan=False)
                return line, ("decided" if summary["feasible"] else "infeasible"), None
            decision = engine.decide(item, origin=origin)
        except DiagnosticError as exc:
            error = exc
        else:
            full = decision.to_dict() if detail == "full" or keep else None
            body = {"decision": full} if detail == "full" else summary_of(decision)
            line = json.dumps({"line": number, "ok": True, **body}, ensure_ascii=False, allow_nan=False)
            # prepared here, in the worker that decided: the appending process only chains and commits it
            record = api.prepare_record(full, engine) if keep and full is not None else None
            return line, ("decided" if decision.feasible else "infeasible"), record
    diags = error.diagnostics
    result = {"line": number, "ok": False, "exit_code": int(error.exit_code),
              "diagnostics": [d.to_dict() for d in diags[:50]]}
    if len(diags) > 50:
        result["more_diagnostics"] = len(diags) - 50
    return json.dumps(result, ensure_ascii=False), "error", None


def _results(engine: Any, input_path: str, policy_path: str | None, detail: str, workers: int,
             keep: bool) -> Iterator[tuple[str, str, Any]]:
    """Yield the result of every batch input in input order, deciding in ``workers`` processes."""
    from ..batchio import read_batch

    origin = os.path.dirname(os.path.abspath(input_path)) if input_path != "-" else os.getcwd()
    if workers <= 1:
        for number, item in read_batch(input_path):
            yield _decide_one(engine, number, item, detail, origin, keep)
        return
    yield from _parallel(list(read_batch(input_path)), policy_path, detail, origin, keep, workers)


AUDIT_GROUP = 64  # decisions per audit transaction in `decide batch` (one commit, one signed head)


def _for_throughput() -> None:
    """Collect garbage rarely in a batch process: the decision caches are long-lived, and with Python's
    default thresholds a third of a batch's time went to full collections walking them."""
    gc.set_threshold(100_000, 50, 1000)


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
@audit_options
@error_format_option
def batch_command(input_path: str, output_path: str, policy_path: str | None, detail: str, workers: int | None,
                  no_audit: bool, audit_db: str | None, audit_key: str | None, error_format: str) -> ExitCode:
    """Decide many fact sets: INPUT is JSONL (one facts object per line) or a YAML list; `-` is stdin.

    Writes one JSON line per input, in input order: `{"line": N, "ok": true, ...}` with the decision
    (summary or full), or `{"line": N, "ok": false, "diagnostics": [...]}` for an input that is not
    valid facts; a bad input never stops the batch. Each decision is recorded in the audit store
    before its line is written (64 decisions per transaction). A file given with -o is written
    completely or not at all. A summary goes to stderr. Exit 0 when every input was decided (feasible or not),
    2 when any input was bad, 3 for an invalid policy, 7 when the audit store cannot be written.
    """
    from .. import api

    engine = api.open_policy(policy_path)  # a bad policy fails here, before any input is read
    _for_throughput()
    counts = {"decided": 0, "infeasible": 0, "error": 0}
    keep = not no_audit
    writer = api.audit_writer(audit_db, key_path=audit_key) if keep else None  # one writer: group commits
    partial = output_path + ".partial" if output_path != "-" else None
    out: IO[str] = open(partial, "w", encoding="utf-8") if partial else sys.stdout  # noqa: SIM115
    # a line is written once its decision is committed: records wait in ``group`` (one transaction, one
    # signature per AUDIT_GROUP records), their lines and any later ones in ``held``
    group: list = []
    held: list[str] = []
    try:
        for line, outcome, record in _results(engine, input_path, policy_path, detail,
                                              workers if workers is not None else _default_workers(), keep):
            counts[outcome] += 1
            if writer is not None and record is not None:
                group.append(record)
            if not group:
                out.write(line + "\n")
                continue
            held.append(line)
            if len(group) >= AUDIT_GROUP:
                api.record_many(group, engine, writer=writer)
                out.write("".join(x + "\n" for x in held))
                group, held = [], []
        if group:
            api.record_many(group, engine, writer=writer)
            out.write("".join(x + "\n" for x in held))
    except BaseException:
        if partial:
            out.close()
            os.unlink(partial)
        raise
    finally:
        if writer is not None:
            writer.close()
    if partial:
        out.close()
        os.replace(partial, output_path)
    total = sum(counts.values())
    click.echo(f"batch: {total} inputs, {counts['decided']} decided, {counts['infeasible']} infeasible, "
               f"{counts['error']} bad", err=True)
    return ExitCode.BAD_INPUT if counts["error"] else ExitCode.OK
