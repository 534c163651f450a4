"""The root `decide` command: decide for the facts given (no subcommand), and the lazy subcommand table."""

from __future__ import annotations

from typing import Any

import click

from .common import EXIT_CODES_HELP, BoundaryGroup, audit_options, fact_options

LAZY_COMMANDS = {
    "explain": "ruleengine.cli.decide:explain_command",
    "estimate": "ruleengine.cli.decide:estimate_command",
    "batch": "ruleengine.cli.decide:batch_command",
    "validate": "ruleengine.cli.policy:validate_command",
    "schema": "ruleengine.cli.policy:schema_command",
    "test": "ruleengine.cli.policy:test_command",
    "check": "ruleengine.cli.policy:check_command",
    "diff": "ruleengine.cli.policy:diff_command",
    "map": "ruleengine.cli.policy:map_command",
    "serve": "ruleengine.cli.serve:serve_command",
    "audit": "ruleengine.cli.audit:audit_group",
    "plan": "ruleengine.cli.train:plan_command",
    "train": "ruleengine.cli.train:train_command",
    "make-tiny-model": "ruleengine.cli.train:tiny_model_command",
    "merge": "ruleengine.cli.train:merge_command",
    "eval": "ruleengine.cli.train:eval_command",
    "combine": "ruleengine.cli.train:combine_command",
}


@click.group(cls=BoundaryGroup, lazy=LAZY_COMMANDS, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
             epilog=EXIT_CODES_HELP)
@fact_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table",
              help="output format")
@click.option("--explain", "with_explain", is_flag=True, help="add why / why-not and counterfactuals")
@audit_options
@click.version_option(package_name="finetune-policy")
@click.pass_context
def main(ctx: click.Context, fmt: str, with_explain: bool, no_audit: bool, audit_db: str | None,
         audit_key: str | None, **kwargs: Any) -> int | None:
    """Decide how to fine-tune a model: method, rank, target modules, memory, cost.

    With no subcommand, decides for the facts given by --facts and/or flags, under the bundled
    default policy unless --policy is given, and records the decision in the audit store.

    \b
    Examples:
      decide --model-params 13B --gpu a100-80gb --gpus 1 --examples 50k --use-case domain_qa
      decide --facts job.yaml --format json
      decide estimate --facts job.yaml
      decide explain --facts job.yaml
      decide batch jobs.jsonl -o decisions.jsonl
      decide validate policies/
    """
    if ctx.invoked_subcommand is not None:
        return None
    from .decide import decide_and_show

    return decide_and_show(kwargs, fmt=fmt, explain=with_explain, no_audit=no_audit, audit_db=audit_db,
                           audit_key=audit_key)


if __name__ == "__main__":  # pragma: no cover
    main()
