"""The `decide` command line. It never imports torch, transformers or peft.

Exit codes (also in `decide --help`):
  0 decided, feasible          1 decided, infeasible (nothing fits)
  2 bad input (facts, flags)   3 invalid policy
  4 internal error             5 policy tests or checks failed
  6 audit verification failed  7 the audit store could not be written
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from .diagnostics import Diagnostic, DiagnosticError, Location, render_json, render_text

EXIT_FEASIBLE, EXIT_INFEASIBLE, EXIT_BAD_INPUT, EXIT_BAD_POLICY = 0, 1, 2, 3
EXIT_INTERNAL, EXIT_TESTS_FAILED, EXIT_TAMPERED, EXIT_AUDIT_WRITE = 4, 5, 6, 7

EXIT_CODES_HELP = """\b
Exit codes:
  0  decided: a method fits          1  decided: infeasible, nothing fits
  2  bad input (facts, flags, files) 3  invalid policy
  4  internal error                  5  policy tests or checks failed
  6  audit verification failed       7  the audit store could not be written
"""

# --- fact flags: every facts field has a flag ------------------------------------------------

FACT_FLAGS: list[tuple[str, tuple, Any, str]] = [
    # (option, facts path, click type, help)
    ("--model-params", ("model", "params"), str, "model size, e.g. 7B, 1.1B, 350M [model.params]"),
    ("--model-config", ("model", "config"), str, "path to a Hugging Face config.json [model.config]"),
    ("--model-name", ("model", "name"), str, "model label, for the record only [model.name]"),
    ("--gpu", ("hardware", "gpu"), str, "GPU catalog name, e.g. a100-80gb [hardware.gpu]"),
    ("--gpu-memory-gb", ("hardware", "gpu_memory_gb"), float, "memory of one GPU in GiB [hardware.gpu_memory_gb]"),
    ("--gpus", ("hardware", "gpu_count"), int, "number of GPUs [hardware.gpu_count]"),
    ("--examples", ("data", "examples"), str, "training examples, e.g. 50k [data.examples]"),
    ("--avg-tokens", ("data", "avg_tokens"), float, "average tokens per example [data.avg_tokens]"),
    ("--seq-len", ("data", "seq_len"), int, "maximum sequence length of the data [data.seq_len]"),
    ("--use-case", ("task", "use_case"), str, "use case, a key of the policy's table [task.use_case]"),
    ("--shift", ("task", "shift"), click.Choice(["style_format", "domain_adaptation", "new_knowledge",
                                                 "continual_pretraining"]), "distribution shift [task.shift]"),
    ("--quality", ("task", "quality"), click.Choice(["research_best", "production", "prototype"]),
     "quality requirement [task.quality]"),
    ("--latency-sensitive/--no-latency-sensitive", ("serving", "latency_sensitive"), None,
     "inference latency matters [serving.latency_sensitive]"),
    ("--requests-per-day", ("serving", "requests_per_day"), str, "inference requests per day, e.g. 1M "
     "[serving.requests_per_day]"),
    ("--avg-latency-ms", ("serving", "avg_latency_ms"), float, "average request latency in ms "
     "[serving.avg_latency_ms]"),
    ("--adapters", ("serving", "adapters"), int, "adapters served on one base model [serving.adapters]"),
    ("--precision", ("training", "precision"), click.Choice(["fp32", "bf16_mixed", "fp16_mixed", "bf16_pure"]),
     "training precision [training.precision]"),
    ("--optimizer", ("training", "optimizer"), click.Choice(["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"]),
     "optimizer [training.optimizer]"),
    ("--micro-batch-size", ("training", "micro_batch_size"), int, "sequences per GPU per step "
     "[training.micro_batch_size]"),
    ("--train-seq-len", ("training", "seq_len"), int, "training sequence length [training.seq_len]"),
    ("--gradient-checkpointing/--no-gradient-checkpointing", ("training", "gradient_checkpointing"), None,
     "recompute activations [training.gradient_checkpointing]"),
    ("--sharding", ("training", "sharding"), click.Choice(["auto", "none", "zero2", "zero3", "fsdp",
                                                           "zero3_offload"]), "multi-GPU sharding [training.sharding]"),
    ("--lora-rank", ("training", "lora_rank"), int, "LoRA rank to use [training.lora_rank]"),
    ("--target-modules", ("training", "target_modules"), str,
     "all-linear, attention, mlp, or a comma list of module names [training.target_modules]"),
    ("--num-virtual-tokens", ("training", "num_virtual_tokens"), int, "prompt/prefix tokens "
     "[training.num_virtual_tokens]"),
    ("--epochs", ("training", "epochs"), float, "training epochs [training.epochs]"),
]


def _param_name(option: str) -> str:
    return option.split("/")[0].lstrip("-").replace("-", "_")


def fact_flags(func: Callable, facts_help: str = "facts file (YAML or JSON); flags override its fields") -> Callable:
    """Add --facts, every fact flag, --task and --set to a command."""
    for option, _path, typ, help_text in reversed(FACT_FLAGS):
        if typ is None:
            func = click.option(option, _param_name(option), default=None, help=help_text)(func)
        else:
            func = click.option(option, _param_name(option), type=typ, default=None, help=help_text)(func)
    func = click.option("--task", "tasks", multiple=True, metavar="NAME=EXAMPLES",
                        help="one task of a multi-task dataset, repeatable [data.tasks]")(func)
    func = click.option("--set", "sets", multiple=True, metavar="PATH=VALUE",
                        help="set any fact by its path, e.g. --set serving.adapters=20 (YAML value)")(func)
    func = click.option("--facts", "facts_file", type=click.Path(dir_okay=False), default=None, help=facts_help)(func)
    return func


def fact_options(func: Callable) -> Callable:
    """Add --policy, --error-format and the fact flags (see ``fact_flags``) to a command."""
    func = fact_flags(func)
    func = click.option("--policy", "policy_path", type=click.Path(), default=None,
                        help="policy file or bundle directory (default: the bundled policies/default)")(func)
    func = click.option("--error-format", type=click.Choice(["text", "json"]), default="text",
                        help="how errors are printed")(func)
    return func


def build_facts(kwargs: dict) -> Any:
    """Return the FactsInput from --facts and the flags (flags win). Raises FactsError on bad flags."""
    import yaml

    from .facts import FactsError, FactsInput, load_facts_file, merge_facts

    base = load_facts_file(kwargs["facts_file"]) if kwargs.get("facts_file") else FactsInput({})
    overrides: dict[tuple, tuple[Any, str]] = {}
    for option, path, _typ, _help in FACT_FLAGS:
        value = kwargs.get(_param_name(option))
        if value is None:
            continue
        if path == ("training", "target_modules") and value not in ("all-linear", "attention", "mlp"):
            value = [v.strip() for v in value.split(",") if v.strip()]
        overrides[path] = (value, option.split("/")[0])
    diags: list[Diagnostic] = []
    tasks = []
    for item in kwargs.get("tasks") or ():
        name, sep, count = item.partition("=")
        if not sep or not name.strip():
            diags.append(Diagnostic("flag-bad-task", f"--task {item!r} must be NAME=EXAMPLES", Location("--task"),
                                    "e.g. --task sentiment=20k"))
            continue
        tasks.append({"name": name.strip(), "examples": count.strip()})
    if tasks:
        overrides[("data", "tasks")] = (tasks, "--task")
    for item in kwargs.get("sets") or ():
        path, sep, raw = item.partition("=")
        parts = tuple(p for p in path.strip().split(".") if p)
        if not sep or len(parts) < 2:
            diags.append(Diagnostic("flag-bad-set", f"--set {item!r} must be PATH=VALUE with a dotted path",
                                    Location("--set"), "e.g. --set hardware.gpu_count=4"))
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        overrides[parts] = (value, f"--set {path.strip()}")
    if diags:
        raise FactsError(diags)
    return merge_facts(base, overrides)


def load_policy_or_default(path: str | None) -> Any:
    """Return the compiled policy at ``path`` (or the bundled default); raises PolicyError."""
    from .policy import load_policy

    return load_policy(path)


def _emit_errors(exc: DiagnosticError, error_format: str) -> None:
    text = render_json(exc.diagnostics) if error_format == "json" else render_text(exc.diagnostics)
    click.echo(text, err=True)


def run_guarded(error_format: str, body: Callable[[], int]) -> None:
    """Run ``body`` and exit with its code; turn every known failure into a located message and exit code."""
    from .engine import EngineDisagreement

    try:
        code = body()
    except DiagnosticError as exc:
        _emit_errors(exc, error_format)
        sys.exit(exc.exit_code)
    except EngineDisagreement as exc:
        click.echo(f"internal error: {exc}", err=True)
        sys.exit(EXIT_INTERNAL)
    except click.exceptions.Exit:
        raise
    except click.ClickException:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
        if os.environ.get("FINETUNE_POLICY_DEBUG"):
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc}\n  (set FINETUNE_POLICY_DEBUG=1 for the traceback)",
                   err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(code)


def dump(data: Any, fmt: str) -> str:
    """Return ``data`` serialised as JSON or YAML."""
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return json.dumps(data, indent=2, ensure_ascii=False)


def record_audit(decision: Any, policy: Any, no_audit: bool, audit_db: str | None) -> str | None:
    """Append the decision to the audit store unless disabled; returns the record id.

    Raises click.exceptions.Exit(7) after printing why when the store cannot be written.
    """
    if no_audit:
        return None
    try:
        from .audit import record_decision
    except ImportError:
        return None
    try:
        return str(record_decision(decision.to_dict(), policy.snapshot(), policy.sha256, db_path=audit_db))
    except Exception as exc:  # noqa: BLE001
        click.echo(f"error: the decision could not be recorded in the audit store: {exc}\n"
                   "  help: fix the store location (--audit-db or FINETUNE_POLICY_AUDIT_DB), or pass --no-audit",
                   err=True)
        raise click.exceptions.Exit(EXIT_AUDIT_WRITE) from None


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when used (keeps `decide` start-up light)."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._available()))

    def _available(self) -> dict[str, str]:
        out = {}
        for name, target in self.lazy.items():
            module = target.split(":")[0]
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if found:
                out[name] = target
        return out

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        target = self._available().get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


LAZY_COMMANDS = {
    "audit": "ruleengine.audit.cli:audit_group",
    "plan": "executors.cli:plan_command",
    "train": "executors.cli:train_command",
    "make-tiny-model": "executors.cli:tiny_model_command",
    "eval": "executors.cli:eval_command",
    "merge": "executors.cli:merge_command",
    "combine": "executors.cli:combine_command",
    "test": "ruleengine.authoring.cli:test_command",
    "check": "ruleengine.authoring.cli:check_command",
    "diff": "ruleengine.authoring.cli:diff_command",
    "map": "ruleengine.authoring.cli:map_command",
}


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
             epilog=EXIT_CODES_HELP)
@fact_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table",
              help="output format")
@click.option("--explain", "with_explain", is_flag=True, help="add why / why-not and counterfactuals")
@click.option("--no-audit", is_flag=True, help="do not record this decision in the audit store")
@click.option("--audit-db", type=click.Path(dir_okay=False), default=None,
              help="audit store (default $FINETUNE_POLICY_AUDIT_DB or ~/.local/share/finetune-policy/audit.sqlite3)")
@click.version_option(package_name="finetune-policy")
@click.pass_context
def main(ctx: click.Context, fmt: str, with_explain: bool, no_audit: bool, audit_db: str | None, **kwargs: Any) -> None:
    """Decide how to fine-tune a model: method, rank, target modules, memory, cost.

    With no subcommand, decides for the facts given by --facts and/or flags, under the bundled
    default policy unless --policy is given, and records the decision in the audit store.

    \b
    Examples:
      decide --model-params 13B --gpu a100-80gb --gpus 1 --examples 50k --use-case domain_qa
      decide --facts job.yaml --format json
      decide estimate --facts job.yaml
      decide explain --facts job.yaml
      decide validate policies/
    """
    if ctx.invoked_subcommand is not None:
        return
    error_format = kwargs["error_format"]

    def body() -> int:
        from .engine import decide
        from .explain import render_decision_text, render_explanation

        policy = load_policy_or_default(kwargs["policy_path"])
        given = build_facts(kwargs)
        origin = os.path.dirname(os.path.abspath(kwargs["facts_file"])) if kwargs.get("facts_file") else os.getcwd()
        decision = decide(policy, given, origin=origin, explain=with_explain)
        record_audit(decision, policy, no_audit, audit_db)
        data = decision.to_dict()
        if fmt == "table":
            click.echo(render_decision_text(data))
            if with_explain:
                click.echo("")
                click.echo(render_explanation(data))
        else:
            click.echo(dump(data, fmt))
        return EXIT_FEASIBLE if decision.feasible else EXIT_INFEASIBLE

    run_guarded(error_format, body)


@main.command("explain", epilog=EXIT_CODES_HELP)
@fact_options
@click.option("--format", "fmt", type=click.Choice(["text", "json", "yaml"]), default="text", help="output format")
@click.option("--no-audit", is_flag=True, help="do not record this decision in the audit store")
@click.option("--audit-db", type=click.Path(dir_okay=False), default=None, help="audit store path")
def explain_command(fmt: str, no_audit: bool, audit_db: str | None, **kwargs: Any) -> None:
    """Why this method, why not each other one, and the smallest change of one fact that flips it.

    Counterfactuals are computed from the policy (GPU memory, GPU count, data size, model size),
    each a real evaluation, never a guess.
    """
    def body() -> int:
        from .engine import decide
        from .explain import render_explanation

        policy = load_policy_or_default(kwargs["policy_path"])
        given = build_facts(kwargs)
        origin = os.path.dirname(os.path.abspath(kwargs["facts_file"])) if kwargs.get("facts_file") else os.getcwd()
        decision = decide(policy, given, origin=origin, explain=True)
        record_audit(decision, policy, no_audit, audit_db)
        data = decision.to_dict()
        if fmt == "text":
            click.echo(render_explanation(data))
        else:
            keys = ("decision_id", "feasible", "verdict", "chosen_rule", "rationale", "source", "rejected",
                    "counterfactuals", "suggestions", "warnings", "trace")
            click.echo(dump({k: data.get(k) for k in keys}, fmt))
        return EXIT_FEASIBLE if decision.feasible else EXIT_INFEASIBLE

    run_guarded(kwargs["error_format"], body)


@main.command("estimate", epilog=EXIT_CODES_HELP)
@fact_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table", help="output format")
def estimate_command(fmt: str, **kwargs: Any) -> None:
    """Memory per GPU, trainable parameters and cost for every method (no rules are applied).

    Training settings given as facts (--precision, --optimizer, --micro-batch-size, --train-seq-len,
    --gradient-checkpointing, --sharding, --lora-rank, --target-modules ...) are used exactly, so
    you can estimate the configuration you have in mind. Data is optional (cost needs it).
    """
    def body() -> int:
        from .derive import derive
        from .explain import method_estimates, render_estimates_table
        from .facts import normalize_facts

        policy = load_policy_or_default(kwargs["policy_path"])
        given = build_facts(kwargs)
        origin = os.path.dirname(os.path.abspath(kwargs["facts_file"])) if kwargs.get("facts_file") else os.getcwd()
        facts = normalize_facts(given, policy, require=("model", "hardware"))
        derived = derive(policy, facts, origin)
        estimates = method_estimates(policy, derived, facts)
        from .explain import architecture_dict

        data = {"policy": {"name": policy.name, "version": policy.version, "sha256": policy.sha256},
                "architecture": architecture_dict(derived.arch), "usable_gb": derived.usable_gb,
                "gpu": {"name": derived.gpu.name, "memory_gb": derived.gpu.memory_gb, "count": derived.gpu.count},
                "estimates": estimates}
        if fmt == "table":
            a = derived.arch
            click.echo(f"Model: {a.params / 1e9:.2f}B parameters ({a.source}), {a.num_layers} layers, hidden "
                       f"{a.hidden_size}; GPU: {derived.gpu.count}x {derived.gpu.name or 'custom'} "
                       f"{derived.gpu.memory_gb:g} GiB, {derived.usable_gb:.1f} GiB usable")
            click.echo("\n".join(render_estimates_table(estimates)))
        else:
            click.echo(dump(data, fmt))
        return EXIT_FEASIBLE

    run_guarded(kwargs["error_format"], body)


def discover_policies(paths: tuple[str, ...]) -> list[str]:
    """Return the policies under ``paths``: bundle dirs (with policy.yaml) and single-file policies."""
    found: list[str] = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
            continue
        if os.path.isfile(os.path.join(path, "policy.yaml")):
            found.append(path)
            continue
        if not os.path.isdir(path):
            found.append(path)  # reported as missing by the loader
            continue
        for entry in sorted(os.listdir(path)):
            full = os.path.join(path, entry)
            if os.path.isdir(full) and os.path.isfile(os.path.join(full, "policy.yaml")):
                found.append(full)
            elif entry.endswith((".yaml", ".yml")) and os.path.isfile(full):
                with open(full, encoding="utf-8", errors="replace") as fh:
                    head = fh.read(4096)
                if "language:" in head:
                    found.append(full)
    return found


@main.command("validate", epilog=EXIT_CODES_HELP)
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--error-format", type=click.Choice(["text", "json"]), default="text", help="how errors are printed")
def validate_command(paths: tuple[str, ...], error_format: str) -> None:
    """Validate policies: every error in every policy file under PATHS, with file:line:col.

    PATHS are policy files, bundle directories (with policy.yaml) or directories holding them
    (default: the bundled policies/ directory).
    """
    from .paths import POLICIES_DIR
    from .policy import PolicyError, load_policy

    targets = discover_policies(paths or (str(POLICIES_DIR),))
    all_diags: list[Diagnostic] = []
    ok: list[str] = []
    for target in targets:
        try:
            policy = load_policy(target)
            ok.append(f"{target}: ok ({policy.name} {policy.version}, {len(policy.rules)} rules, "
                      f"sha256 {policy.short_hash})")
        except PolicyError as exc:
            all_diags.extend(exc.diagnostics)
    if error_format == "json":
        click.echo(json.dumps({"policies": len(targets), "valid": len(ok),
                               "diagnostics": [d.to_dict() for d in all_diags]}, indent=2))
    else:
        for line in ok:
            click.echo(line)
        if all_diags:
            click.echo(render_text(all_diags), err=True)
    if not targets:
        click.echo("no policies found", err=True)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(EXIT_BAD_POLICY if any(d.severity == "error" for d in all_diags) else 0)


@main.command("serve", epilog=EXIT_CODES_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="port (0 = any free port, printed at start)")
@click.option("--policy", "policy_path", type=click.Path(), default=None,
              help="policy file or bundle directory (default: the bundled policies/default)")
@click.option("--no-audit", is_flag=True, help="do not record decisions in the audit store")
@click.option("--audit-db", type=click.Path(dir_okay=False), default=None, help="audit store path")
@click.option("--verbose", is_flag=True, help="log every request to stderr")
@click.option("--error-format", type=click.Choice(["text", "json"]), default="text", help="how errors are printed")
def serve_command(host: str, port: int, policy_path: str | None, no_audit: bool, audit_db: str | None,
                  verbose: bool, error_format: str) -> None:
    """Serve decisions over HTTP (JSON): POST /v1/decide, /v1/explain, /v1/estimate; GET /v1/policy, /healthz.

    The request body is a facts object, exactly as in a facts file. Bad bodies get 400 with located
    diagnostics. Decisions are audited as with the CLI. Stop with Ctrl-C.
    """
    def body() -> int:
        from .service import DecisionService, make_server

        policy = load_policy_or_default(policy_path)
        service = DecisionService(policy, audit=not no_audit, audit_db=audit_db)
        try:
            server = make_server(service, host, port, verbose)
        except OSError as exc:
            raise DiagnosticError([Diagnostic("serve-cannot-bind", f"cannot listen on {host}:{port}: {exc.strerror}",
                                              Location("--port"), "choose another --port or --host")]) from None
        bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
        click.echo(f"serving policy {policy.name} {policy.version} (sha256 {policy.short_hash}) on "
                   f"http://{bound_host}:{bound_port}", err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0

    run_guarded(error_format, body)


@main.command("schema")
@click.argument("name", type=click.Choice(["facts", "policy", "decision", "decision-record", "plan", "memory", "cost"]))
def schema_command(name: str) -> None:
    """Print one of the JSON Schemas (facts, policy, decision, ...)."""
    from .paths import SCHEMAS_DIR

    path = SCHEMAS_DIR / f"{name}.schema.json"
    if not path.exists():
        click.echo(f"error: schema {name} is not available", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(path.read_text(encoding="utf-8"))


if __name__ == "__main__":  # pragma: no cover
    main()
