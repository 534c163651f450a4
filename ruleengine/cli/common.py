"""What every `decide` command shares: the fact flags, the one error boundary, output helpers.

The boundary (:class:`BoundaryGroup`, the root group's class) is the only place that turns an
exception into a message and an exit code: commands return an :class:`ExitCode` (or raise), library
errors carry theirs (``exit_code``), and anything unexpected is an internal error (exit 4) without
a traceback unless FINETUNE_POLICY_DEBUG is set.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Callable
from typing import Any

import click

from ..diagnostics import Diagnostic, DiagnosticError, Location, render_json, render_text
from ..exitcodes import ExitCode, help_text

EXIT_CODES_HELP = help_text()


class FiniteFloat(click.ParamType):
    """A float flag that refuses NaN and infinity (click's FLOAT takes ``nan`` and ``inf``)."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        """Return the finite float ``value`` stands for; fail with a usage error (exit 2) otherwise."""
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number (NaN and infinity are not accepted)", param, ctx)
        return number


FINITE_FLOAT = FiniteFloat()

# --- fact flags: every facts field has a flag ------------------------------------------------

FACT_FLAGS: list[tuple[str, tuple, Any, str]] = [
    # (option, facts path, click type, help)
    ("--model-params", ("model", "params"), str, "model size, e.g. 7B, 1.1B, 350M [model.params]"),
    ("--model-config", ("model", "config"), str, "path to a Hugging Face config.json, a regular file of at most "
     "1 MiB [model.config]"),
    ("--model-name", ("model", "name"), str, "model label, for the record only [model.name]"),
    ("--exact/--no-exact", ("model", "exact"), None, "count the architecture of --model-config with transformers "
     "on the meta device: any model_type transformers knows (needs the train extra) [model.exact]"),
    ("--gpu", ("hardware", "gpu"), str, "GPU catalog name, e.g. a100-80gb [hardware.gpu]"),
    ("--gpu-memory-gb", ("hardware", "gpu_memory_gb"), FINITE_FLOAT, "memory of one GPU in GiB [hardware.gpu_memory_gb]"),
    ("--gpus", ("hardware", "gpu_count"), int, "number of GPUs [hardware.gpu_count]"),
    ("--host-memory-gb", ("hardware", "host_memory_gb"), FINITE_FLOAT, "host RAM of one node in GiB [hardware.host_memory_gb]"),
    ("--examples", ("data", "examples"), str, "training examples, e.g. 50k [data.examples]"),
    ("--avg-tokens", ("data", "avg_tokens"), FINITE_FLOAT, "average tokens per example [data.avg_tokens]"),
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
    ("--avg-latency-ms", ("serving", "avg_latency_ms"), FINITE_FLOAT, "average request latency in ms "
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
    ("--epochs", ("training", "epochs"), FINITE_FLOAT, "training epochs [training.epochs]"),
]


def param_name(option: str) -> str:
    """Return the Python parameter name click gives an option (``--model-params`` -> ``model_params``)."""
    return option.split("/")[0].lstrip("-").replace("-", "_")


def error_format_option(func: Callable) -> Callable:
    """Add ``--error-format text|json``; the boundary reads it to print errors of this command."""

    def remember(ctx: click.Context, _param: click.Parameter, value: str) -> str:
        ctx.meta["error_format"] = value
        return value

    return click.option("--error-format", type=click.Choice(["text", "json"]), default="text", is_eager=True,
                        callback=remember, help="how errors are printed")(func)


def fact_flags(func: Callable, facts_help: str = "facts file (YAML or JSON); flags override its fields") -> Callable:
    """Add --facts, every fact flag, --task and --set to a command."""
    for option, _path, typ, help_text_ in reversed(FACT_FLAGS):
        if typ is None:
            func = click.option(option, param_name(option), default=None, help=help_text_)(func)
        else:
            func = click.option(option, param_name(option), type=typ, default=None, help=help_text_)(func)
    func = click.option("--task", "tasks", multiple=True, metavar="NAME=EXAMPLES",
                        help="one task of a multi-task dataset, repeatable [data.tasks]")(func)
    func = click.option("--set", "sets", multiple=True, metavar="PATH=VALUE",
                        help="set any fact by its path, e.g. --set serving.adapters=20 (YAML value)")(func)
    func = click.option("--facts", "facts_file", type=click.Path(dir_okay=False), default=None, help=facts_help)(func)
    return func


def audit_options(func: Callable) -> Callable:
    """Add --no-audit, --audit-db and --audit-key (the decision commands that record)."""
    func = click.option("--audit-key", type=click.Path(dir_okay=False), default=None,
                        help="Ed25519 private key that signs the chain head (default $FINETUNE_POLICY_AUDIT_KEY; "
                        "unsigned when unset)")(func)
    func = click.option("--audit-db", type=click.Path(dir_okay=False), default=None,
                        help="audit store: a path or postgresql://... (default $FINETUNE_POLICY_AUDIT_DB or "
                        "~/.local/share/finetune-policy/audit.sqlite3)")(func)
    return click.option("--no-audit", is_flag=True, help="do not record in the audit store")(func)


def fact_options(func: Callable) -> Callable:
    """Add --policy, --error-format and the fact flags (see ``fact_flags``) to a command."""
    func = fact_flags(func)
    func = click.option("--policy", "policy_path", type=click.Path(), default=None,
                        help="policy file or bundle directory (default: the bundled policies/default)")(func)
    return error_format_option(func)


def facts_given_by_flags(kwargs: dict) -> bool:
    """Return True when any fact was given: a facts file, a fact flag, --task or --set."""
    if kwargs.get("facts_file") or kwargs.get("tasks") or kwargs.get("sets"):
        return True
    return any(kwargs.get(param_name(option)) is not None for option, *_ in FACT_FLAGS)


def build_facts(kwargs: dict) -> Any:
    """Return the FactsInput from --facts and the flags (flags win). Raises FactsError on bad flags."""
    import yaml

    from ..facts import FactsError, FactsInput, load_facts_file, merge_facts

    base = load_facts_file(kwargs["facts_file"]) if kwargs.get("facts_file") else FactsInput({})
    overrides: dict[tuple, tuple[Any, str]] = {}
    for option, path, _typ, _help in FACT_FLAGS:
        value = kwargs.get(param_name(option))
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


def facts_origin(kwargs: dict) -> str:
    """Return the directory relative paths in the facts are read from: the facts file's, else the cwd."""
    facts_file = kwargs.get("facts_file")
    return os.path.dirname(os.path.abspath(facts_file)) if facts_file else os.getcwd()


def dump(data: Any, fmt: str) -> str:
    """Return ``data`` serialised as JSON or YAML."""
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return json.dumps(data, indent=2, ensure_ascii=False)


def exit_for(feasible: bool) -> ExitCode:
    """Return the exit code of a decision: 0 when a method fits, 1 when nothing does."""
    return ExitCode.OK if feasible else ExitCode.INFEASIBLE


# --- the error boundary ----------------------------------------------------------------------

def _emit(exc: DiagnosticError, error_format: str) -> None:
    text = render_json(exc.diagnostics) if error_format == "json" else render_text(exc.diagnostics)
    click.echo(text, err=True)


def _internal(message: str) -> None:
    click.echo(f"internal error: {message}", err=True)


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


class BoundaryGroup(LazyGroup):
    """The root group: runs the command and maps its result or exception to the exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        from ..evaluate import EngineDisagreement

        try:
            result = super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.ClickException as exc:
            if exc.exit_code != ExitCode.INFEASIBLE:  # click's usage errors already exit 2
                raise
            exc.show()  # click's generic errors exit 1, which means "infeasible" here: they are bad input
            ctx.exit(int(ExitCode.BAD_INPUT))
        except DiagnosticError as exc:
            _emit(exc, ctx.meta.get("error_format", "text"))
            ctx.exit(int(exc.exit_code))
        except EngineDisagreement as exc:
            _internal(str(exc))
            ctx.exit(int(ExitCode.INTERNAL))
        except OSError as exc:  # a file or directory given by the user (library errors carry their own codes)
            code = getattr(exc, "exit_code", None)
            click.echo(f"error: {exc}", err=True)
            ctx.exit(int(code) if isinstance(code, int) else int(ExitCode.BAD_INPUT))
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
            code = getattr(exc, "exit_code", None)
            if isinstance(code, int) and code != ExitCode.INTERNAL:
                click.echo(f"error: {exc}", err=True)
                ctx.exit(int(code))
            if os.environ.get("FINETUNE_POLICY_DEBUG"):
                raise
            _internal(f"{type(exc).__name__}: {exc}\n  (set FINETUNE_POLICY_DEBUG=1 for the traceback)")
            ctx.exit(int(ExitCode.INTERNAL))
        if isinstance(result, int):
            ctx.exit(int(result))
        return result
