"""The policy commands: `decide validate`, `schema`, `test`, `check`, `diff` and `map`.

Thin shells over ruleengine.policy and ruleengine.authoring; errors go to the root boundary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..diagnostics import Diagnostic, DiagnosticError, render_json, render_text
from ..exitcodes import ExitCode, command_help
from .common import build_facts, error_format_option, fact_flags, fact_options

_INTERNAL = {ExitCode.INTERNAL: "internal error (a bug)"}
VALIDATE_EXITS = command_help({ExitCode.OK: "every policy is valid (warnings may be listed)",
                               ExitCode.BAD_INPUT: "no policy found under PATHS",
                               ExitCode.BAD_POLICY: "a policy has errors (listed with file:line:col)", **_INTERNAL})
TEST_EXITS = command_help({ExitCode.OK: "every case passed and every gate is met",
                           ExitCode.BAD_INPUT: "a case file or its gates are malformed, or a case does not fit the policy",
                           ExitCode.BAD_POLICY: "the policy is invalid", **_INTERNAL,
                           ExitCode.CHECKS_FAILED: "a case failed, or coverage / mutation score below the minimum"})
CHECK_EXITS = command_help({ExitCode.OK: "no errors (and no warnings with --deny-warnings)",
                            ExitCode.BAD_INPUT: "a malformed versions.lock, or --properties without hypothesis",
                            ExitCode.BAD_POLICY: "the policy is invalid", **_INTERNAL,
                            ExitCode.CHECKS_FAILED: "errors (or warnings with --deny-warnings); --update-lock refused"})
DIFF_EXITS = command_help({ExitCode.OK: "the new version's bump is large enough for the change",
                           ExitCode.BAD_POLICY: "either policy is invalid or cannot be read",
                           ExitCode.INTERNAL: "internal error (the grid disagreed with a full decision: a bug)",
                           ExitCode.CHECKS_FAILED: "the version was not bumped enough, or went down"})
FMT_EXITS = command_help({ExitCode.OK: "formatted (or already canonical)",
                          ExitCode.BAD_INPUT: "no policy found under PATHS",
                          ExitCode.BAD_POLICY: "a file is not valid YAML (nothing written)", **_INTERNAL,
                          ExitCode.CHECKS_FAILED: "--check: a file is not in canonical order"})
MAP_EXITS = command_help({ExitCode.OK: "the picture was written", ExitCode.BAD_INPUT: "bad axes or fixed facts",
                          ExitCode.BAD_POLICY: "the policy is invalid", **_INTERNAL})


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


def _targets(paths: tuple[str, ...]) -> list[str]:
    """Return the policies under PATHS, or every bundled policy; a missing bundle is an internal error."""
    from ..paths import policies_root

    return discover_policies(paths or (str(policies_root()),))


# --- decide validate / schema --------------------------------------------------------------------

@click.command("validate", epilog=VALIDATE_EXITS)
@click.argument("paths", nargs=-1, type=click.Path())
@error_format_option
def validate_command(paths: tuple[str, ...], error_format: str) -> ExitCode:
    """Validate policies: every error in every policy file under PATHS, with file:line:col.

    PATHS are policy files, bundle directories (with policy.yaml) or directories holding them
    (default: the bundled policies/ directory).
    """
    from ..authoring.validation import validate_policy

    targets = _targets(paths)
    all_diags: list[Diagnostic] = []
    ok: list[str] = []
    for target in targets:
        policy, diags = validate_policy(target)
        all_diags.extend(diags)
        if policy is not None:
            ok.append(f"{target}: ok ({policy.name} {policy.version}, {len(policy.rules)} rules, "
                      f"sha256 {policy.short_hash})")
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
        return ExitCode.BAD_INPUT
    return ExitCode.BAD_POLICY if any(d.severity == "error" for d in all_diags) else ExitCode.OK


@click.command("schema")
@click.argument("name", type=click.Choice(["facts", "policy", "decision", "decision-record", "plan", "memory", "cost"]))
def schema_command(name: str) -> ExitCode:
    """Print one of the JSON Schemas (facts, policy, decision, ...)."""
    from ..paths import BundledDataMissing, schema

    try:
        path = schema(f"{name}.schema.json")
    except BundledDataMissing:
        click.echo(f"error: schema {name} is not available", err=True)
        return ExitCode.BAD_INPUT
    click.echo(path.read_text(encoding="utf-8"))
    return ExitCode.OK


# --- decide test -----------------------------------------------------------------------------------

@click.command("test", epilog=TEST_EXITS)
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--min-coverage", type=click.FloatRange(0, 100), default=None, metavar="PCT",
              help="fail (exit 5) when coverage (rules, use-case rows, GPU entries) is below PCT percent "
                   "[default: the case files' gates.min_coverage, else 0]")
@click.option("--mutants", is_flag=True, help="also mutate every condition and rule order and report the mutants "
              "no case kills, each with a case that would")
@click.option("--min-mutation-score", type=click.FloatRange(0, 100), default=None, metavar="PCT",
              help="with --mutants: fail (exit 5) below PCT percent killed "
                   "[default: the case files' gates.min_mutation_score, else 0]")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", help="output format")
@click.option("--verbose", "-v", is_flag=True, help="also list always-true rules and equivalent mutants")
@error_format_option
def test_command(paths: tuple[str, ...], min_coverage: float | None, mutants: bool, min_mutation_score: float | None,
                 fmt: str, verbose: bool, error_format: str) -> ExitCode:
    """Run the test cases beside each policy under PATHS (default: policies/) and report coverage.

    A case file is `tests/*.yaml` in a bundle (or `<name>.tests/*.yaml` beside a single-file
    policy) holding `cases:` with `facts:` and `expect:`, and optionally `gates:` (`min_coverage`,
    `min_mutation_score`). Failures show expected vs actual per field. Coverage: select rules
    chosen by some case, advise rules matched by some case, use-case rows and GPU entries some case
    decides on, and whether each rule's conditions were seen both true and false. Rules that can
    never apply (proven by the box analysis of `decide check`) are listed and not counted.
    """
    from ..authoring.coverage import render_report_text, run_policy_tests
    from ..policy import PolicyError

    reports = []
    bad_cases: list[Diagnostic] = []
    bad_policy: list[Diagnostic] = []
    for target in _targets(paths):
        try:
            reports.append(run_policy_tests(target, mutants=mutants))
        except PolicyError as exc:
            bad_policy.extend(exc.diagnostics)
        except DiagnosticError as exc:
            bad_cases.extend(exc.diagnostics)
    failed = []
    gate_lines: dict[int, list[str]] = {}
    for r in reports:
        lines = gate_lines.setdefault(id(r), [])
        need = min_coverage if min_coverage is not None else r.gates.get("min_coverage", 0.0)
        if r.failures:
            failed.append(r)
        if r.coverage < need:
            failed.append(r)
            lines.append(f"FAIL coverage {r.coverage:.1f}% is below the minimum {need:g}%")
        if mutants:
            score_min = min_mutation_score if min_mutation_score is not None else r.gates.get("min_mutation_score", 0.0)
            if r.mutation is not None and r.mutation.score < score_min:
                failed.append(r)
                lines.append(f"FAIL mutation score {r.mutation.score:.1f}% is below the minimum {score_min:g}%")
    if fmt == "json":
        click.echo(json.dumps({"ok": not failed and not bad_cases and not bad_policy,
                               "min_coverage": min_coverage, "min_mutation_score": min_mutation_score,
                               "policies": [r.to_dict() for r in reports],
                               "diagnostics": [d.to_dict() for d in bad_policy + bad_cases]}, indent=2, default=str))
    else:
        for r in reports:
            click.echo(render_report_text(r, verbose))
            for line in gate_lines.get(id(r), []):
                click.echo(line)
        diags = bad_policy + bad_cases
        if diags:
            click.echo(render_json(diags) if error_format == "json" else render_text(diags), err=True)
        if not reports and not diags:
            click.echo("no policies found", err=True)
    if bad_policy:
        return ExitCode.BAD_POLICY
    if bad_cases or not (reports or bad_policy):
        return ExitCode.BAD_INPUT
    return ExitCode.CHECKS_FAILED if failed else ExitCode.OK



# --- decide check --------------------------------------------------------------------------------

@click.command("check", epilog=CHECK_EXITS)
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--deny-warnings", is_flag=True, help="fail (exit 5) on warnings too")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", help="output format")
@click.option("--lock", "lock_path", type=click.Path(dir_okay=False), default=None,
              help="versions.lock to use (default: the nearest one at or above the policy)")
@click.option("--update-lock", is_flag=True,
              help="record the policy's version and semantic hash in the lock and its release snapshot (refused "
                   "when the version is locked with another hash, the bump is smaller than the change needs, or "
                   "CHANGELOG.md has no entry for it)")
@click.option("--max-gpus", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="largest GPU count the never-fits search tries")
@click.option("--properties", is_flag=True, help="also search the policy properties (more memory stays feasible, "
              "verdicts fit, more data keeps capacity, every use-case row reachable) for counterexamples")
@click.option("--examples", "property_examples", type=click.IntRange(1, 100000), default=100, show_default=True,
              help="generated fact sets per property with --properties")
@error_format_option
def check_command(paths: tuple[str, ...], deny_warnings: bool, fmt: str, lock_path: str | None, update_lock: bool,
                  max_gpus: int, properties: bool, property_examples: int, error_format: str) -> ExitCode:
    """Static analysis of policies (default: every policy under policies/), with file:line and help.

    Finds rules that can never hold or are shadowed by earlier rules (taking the implicit fit
    guard into account), equal-priority overlaps, gaps no select rule covers, verdicts that never
    fit in memory, advise rules that can never match, use-case table problems, unused thresholds
    and GPUs, and a changed policy whose version was not bumped (versions.lock). Conditions are
    analysed exactly (interval/partition boxes); only memory fit is sampled, and the output says
    which is which.
    """
    from ..authoring.check import check_policy, compile_for_check, render_check_text
    from ..authoring.release import lock_release
    from ..authoring.versions import LOCK_NAME, find_lock

    reports = []
    extra: list[Diagnostic] = []
    for target in _targets(paths):
        if update_lock:
            policy, cctx = compile_for_check(target)
            lock_file = str(lock_path or find_lock(target) or _default_lock(target, LOCK_NAME))
            changed, diags = lock_release(policy, lock_file, cctx.loc(("version",)))
            extra.extend(diags)
            if changed and fmt == "text":
                click.echo(f"{lock_file}: recorded {policy.name} {policy.version} = {policy.semantic_sha256[:12]} "
                           "(and its release snapshot)")
        try:
            reports.append(check_policy(target, lock_path=lock_path, max_gpus=max_gpus,
                                        properties=property_examples if properties else 0))
        except ImportError as exc:
            raise DiagnosticError([Diagnostic("check-needs-hypothesis", f"--properties needs hypothesis: {exc}",
                                              help="pip install 'finetune-policy[dev]'")]) from None
    failed = any(r.failed(deny_warnings) for r in reports) or any(d.severity == "error" for d in extra)
    if fmt == "json":
        click.echo(json.dumps({"ok": not failed, "deny_warnings": deny_warnings,
                               "policies": [r.to_dict() for r in reports],
                               "lock_update": [d.to_dict() for d in extra]}, indent=2))
    else:
        for r in reports:
            click.echo(render_check_text(r))
        for d in extra:
            click.echo(d.render())
    if not reports:
        click.echo("no policies found", err=True)
        return ExitCode.BAD_INPUT
    return ExitCode.CHECKS_FAILED if failed else ExitCode.OK



def _default_lock(target: str, name: str) -> str:
    p = Path(target).resolve()
    folder = p.parent if p.is_dir() or p.is_file() else p
    return str(folder / name)


# --- fixed-fact flags without --policy (for diff --map) -------------------------------------------

def _fixed_fact_options(func: Callable) -> Callable:
    return fact_flags(func, facts_help="facts file held fixed on the map; flags override its fields")


def _map_options(func: Callable) -> Callable:
    func = click.option("--resolution", type=click.IntRange(4, 400), default=48, show_default=True,
                        help="cells per numeric axis")(func)
    func = click.option("--y-range", default=None, metavar="LOW:HIGH", help="range of the y axis, e.g. 8:192")(func)
    func = click.option("--x-range", default=None, metavar="LOW:HIGH", help="range of the x axis, e.g. 1B:70B")(func)
    func = click.option("--y", "y_fact", default="hardware.gpu_memory_gb", show_default=True, help="fact on the y axis")(func)
    func = click.option("--x", "x_fact", default="model.params", show_default=True, help="fact on the x axis")(func)
    return func


def _draw(policies: list[Any], kwargs: dict, out: str) -> tuple[Any, list[list[bool]] | None]:
    from ..authoring.mapplot import changed_cells, compute_map, fixed_facts_text, make_axis, render_map

    given = build_facts(kwargs).data
    last = policies[-1]
    x = make_axis(last, kwargs["x_fact"], "--x", kwargs["x_range"], kwargs["resolution"])
    y = make_axis(last, kwargs["y_fact"], "--y", kwargs["y_range"], kwargs["resolution"])
    maps = [compute_map(p, given, x, y) for p in policies]
    changed = changed_cells(maps[0], maps[1]) if len(maps) == 2 else None
    if len(policies) == 2:
        title = (f"{policies[0].name} {policies[0].version} -> {last.name} {last.version}: verdicts of the new "
                 "policy, changed cells hatched")
    else:
        title = f"policy {last.name} {last.version}: chosen method by {x.fact} and {y.fact}"
    render_map(maps[-1], out, title, changed, fixed_facts_text(maps[-1]))
    return maps[-1], changed


# --- decide diff ---------------------------------------------------------------------------------

@click.command("diff", epilog=DIFF_EXITS)
@click.argument("old")
@click.argument("new")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", help="output format")
@click.option("--map", "map_out", type=click.Path(dir_okay=False), default=None, metavar="PNG|SVG",
              help="also draw the new policy's verdict map with the changed cells shaded")
@_map_options
@_fixed_fact_options
@error_format_option
def diff_command(old: str, new: str, fmt: str, map_out: str | None, error_format: str, **kwargs: Any) -> ExitCode:
    """The semantic impact of changing policy OLD into NEW.

    OLD and NEW are policy files, bundle directories or REV:PATH (a policy in git, e.g.
    HEAD:policies/default). Reports textual changes (rules, thresholds, table rows, GPUs,
    constants), how many fact sets of a representative grid change verdict (method, rank,
    feasibility) with examples, and fails (exit 5) when verdicts change but the version did not.
    """
    from ..authoring.diff import diff_policies, render_diff_text

    report = diff_policies(old, new)
    changed_share = None
    if map_out:
        _, changed = _draw([report.old, report.new], kwargs, map_out)
        if changed:
            changed_share = sum(map(sum, changed)) / (len(changed) * len(changed[0]))
    if fmt == "json":
        data = report.to_dict()
        if map_out:
            data["map"] = {"path": map_out, "changed_cells": changed_share}
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(render_diff_text(report))
        if map_out:
            click.echo(f"map: {map_out} ({100.0 * (changed_share or 0):.1f}% of cells changed)")
    return ExitCode.CHECKS_FAILED if any(d.severity == "error" for d in report.diagnostics) else ExitCode.OK



# --- decide map ----------------------------------------------------------------------------------

@click.command("map", epilog=MAP_EXITS)
@_map_options
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), default="map.png", show_default=True,
              help="picture to write: .png or .svg")
@fact_options
def map_command(out: str, **kwargs: Any) -> ExitCode:
    """Draw the verdict regions of a policy over two facts (--x, --y), the others held fixed.

    Every cell is a real decision of the plain evaluator. Colour = method, regions labelled with
    their verdict (method and rank), infeasible cells grey and hatched; count axes are
    logarithmic. Fixed facts come from --facts and the usual flags (a 7B model, an 80 GiB GPU and
    50k examples when not given).

    \b
    Examples:
      decide map --x model.params --y hardware.gpu_memory_gb -o map.png
      decide map --x data.examples --y task.use_case --model-params 13B --gpu a100-80gb -o uc.svg
    """
    from .. import api

    if os.path.splitext(out)[1].lower() not in (".png", ".svg"):
        raise DiagnosticError([Diagnostic("map-bad-output", f"`{out}`: the picture must be .png or .svg",
                                          help="e.g. -o map.png")])
    policy = api.open_policy(kwargs["policy_path"]).policy
    data, _ = _draw([policy], kwargs, out)
    n = sum(len(r) for r in data.cells)
    infeasible = sum(1 for r in data.cells for o in r if not o.feasible and not o.error)
    click.echo(f"{out}: {len(data.x.values)} x {len(data.y.values)} cells of {policy.name} {policy.version} "
               f"({infeasible} infeasible of {n})")
    return ExitCode.OK



# --- decide fmt -----------------------------------------------------------------------------------

@click.command("fmt", epilog=FMT_EXITS)
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--check", "check_only", is_flag=True, help="write nothing; fail (exit 5) when a file is not canonical")
@click.option("--diff", "show_diff", is_flag=True, help="write nothing; print the changes as a unified diff")
def fmt_command(paths: tuple[str, ...], check_only: bool, show_diff: bool) -> ExitCode:
    """Put the keys of policy files in canonical order (default: every policy under policies/).

    Only the order of keys changes (sections, rule fields, comparisons fact/op/value, thresholds,
    GPU entries, table rows, verdicts, messages); comments, blank lines, quoting and flow or block
    style stay as written, and a pair moves with the comment lines above it. Lists keep their order.
    """
    from ..authoring.fmt import format_policy

    targets = _targets(paths)
    if not targets:
        click.echo("no policies found", err=True)
        return ExitCode.BAD_INPUT
    errors: list[Diagnostic] = []
    changed = []
    for target in targets:
        for result in format_policy(target):
            if result.error is not None:
                errors.append(result.error)
                continue
            if not result.changed:
                continue
            changed.append(result.path)
            if show_diff:
                click.echo(result.diff(), nl=False)
            elif check_only:
                click.echo(f"{result.path}: not in canonical order (decide fmt rewrites it)")
            else:
                with open(result.path, "w", encoding="utf-8") as fh:
                    fh.write(result.after)
                click.echo(f"{result.path}: formatted")
    if errors:
        click.echo(render_text(errors), err=True)
        return ExitCode.BAD_POLICY
    if check_only and changed:
        return ExitCode.CHECKS_FAILED
    if not changed and not show_diff:
        click.echo(f"{len(targets)} polic{'y' if len(targets) == 1 else 'ies'} already in canonical order")
    return ExitCode.OK
