"""The policy compiler: a table of named stages (load -> schema -> resolve -> check -> compile).

Each stage reads and extends a ``CompileContext`` and appends diagnostics. Errors of one phase do
not hide the next phase's: after schema errors the parts that hold them are pruned
(``shape.prune``) and resolve and check run on the rest, so one run reports every error that can be
found; only a file that cannot be read at all (load) stops the pipeline, and nothing is compiled
while there are errors. Every stage can be run alone in tests through ``run_stages(ctx, until=...)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..conditions import All, AnyOf, Cmp, Condition, Not
from ..diagnostics import Diagnostic, DiagnosticError, Location, did_you_mean
from ..paths import load_schema
from ..schema_check import validate
from ..vocabulary import LLAMA_MODULES, METHODS, RANKED_METHODS, TARGET_PRESETS, FactType, vocabulary
from ..yamlsafe import LocatedDoc, load_yaml_text
from . import upgrade
from .model import Policy, Rule, gpu_names
from .quantities import check_threshold_units, literal, parse_catalog, resolve_thresholds
from .shape import hide_deep, prune, structure_errors

SECTIONS = ("language", "name", "version", "owner", "description", "include", "settings", "memory", "cost",
            "gpus", "thresholds", "defaults", "use_cases", "rules")
SUPPORTED_LANGUAGES = ("finetune-policy/v1",)
MAX_INCLUDES = 32


class PolicyError(DiagnosticError):
    """The policy is invalid; ``diagnostics`` holds every problem found, sorted by location."""

    exit_code = 3


@dataclass
class CompileContext:
    """State shared by the stages."""

    files: dict[str, str]
    root: str
    origin: str
    read: Callable[[str], str | None] | None = None  # reads an included file that is not in ``files``
    docs: dict[str, LocatedDoc] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    section_file: dict[str, str] = field(default_factory=dict)
    diags: list[Diagnostic] = field(default_factory=list)
    conditions: dict[str, Condition] = field(default_factory=dict)  # rule id -> resolved condition
    thresholds: dict[str, float] = field(default_factory=dict)
    threshold_units: dict[str, str | None] = field(default_factory=dict)  # declared (or inferred) units
    threshold_uses: dict[str, list[tuple[str, tuple]]] = field(default_factory=dict)  # name -> (fact, path)
    invalid: dict[str, set] = field(default_factory=dict)  # section -> names pruned after schema errors
    policy: Policy | None = None

    def loc(self, path: tuple, key: bool = False) -> Location:
        """Return the source location of a path into the merged document."""
        if not path:
            doc = self.docs.get(self.root)
            return doc.loc((), key) if doc else Location(self._display(self.root), 1, 1)
        fname = self.section_file.get(path[0], self.root)
        doc = self.docs.get(fname)
        return doc.loc(path, key) if doc else Location(self._display(fname))

    def _display(self, name: str) -> str:
        return os.path.join(self.origin, name) if self.origin and not self.origin.startswith("<") else name

    def error(self, code: str, message: str, path: tuple, help: str = "", key: bool = False,
              severity: str = "error") -> None:
        """Record a diagnostic located at ``path``."""
        self.diags.append(Diagnostic(code, message, self.loc(path, key), help, severity, _path_str(path)))

    @property
    def has_errors(self) -> bool:
        """Return True when an error (not a warning) has been recorded."""
        return any(d.severity == "error" for d in self.diags)


def _path_str(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --- stage 1: load ------------------------------------------------------------------------

def stage_load(ctx: CompileContext) -> None:
    """Parse the root file and its includes, and merge their sections (each defined once)."""
    root_text = ctx.files.get(ctx.root)
    if root_text is None:
        ctx.diags.append(Diagnostic("policy-missing-file", f"policy file `{ctx.root}` not found",
                                    Location(ctx._display(ctx.root)), "check the path"))
        return
    try:
        ctx.docs[ctx.root] = load_yaml_text(root_text, ctx._display(ctx.root))
    except DiagnosticError as exc:
        ctx.diags.extend(exc.diagnostics)
        return
    order = [ctx.root]
    root_data = ctx.docs[ctx.root].data
    if not isinstance(root_data, dict):
        ctx.diags.append(Diagnostic("policy-not-mapping", "a policy file must be a YAML mapping",
                                    Location(ctx._display(ctx.root), 1, 1), "start with `language: finetune-policy/v1`"))
        return
    includes = root_data.get("include") or []
    if isinstance(includes, list):
        if len(includes) > MAX_INCLUDES:
            ctx.error("policy-too-many-includes", f"more than {MAX_INCLUDES} included files", ("include",))
            includes = includes[:MAX_INCLUDES]
        for i, name in enumerate(includes):
            if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
                ctx.error("policy-bad-include", f"include entry {name!r} must be a file name beside policy.yaml",
                          ("include", i))
                continue
            text = ctx.files.get(name)
            if text is None and ctx.read is not None:
                text = ctx.read(name)
                if text is not None:
                    ctx.files[name] = text
            if text is None:
                ctx.error("policy-missing-include", f"included file `{name}` not found", ("include", i),
                          "create it or remove it from `include`")
                continue
            try:
                ctx.docs[name] = load_yaml_text(text, ctx._display(name))
            except DiagnosticError as exc:
                ctx.diags.extend(exc.diagnostics)
                continue
            order.append(name)
    for fname in order:
        data = ctx.docs[fname].data
        if data is None:
            continue
        if not isinstance(data, dict):
            ctx.diags.append(Diagnostic("policy-not-mapping", f"`{fname}` must be a YAML mapping of sections",
                                        Location(ctx._display(fname), 1, 1)))
            continue
        for key, value in data.items():
            if fname != ctx.root and key == "include":
                ctx.diags.append(Diagnostic("policy-nested-include", "only the root policy file may `include`",
                                            ctx.docs[fname].loc((key,), True)))
                continue
            if key in ctx.section_file:
                first = ctx.loc((key,), True)
                ctx.diags.append(Diagnostic("policy-duplicate-section",
                                            f"section `{key}` is defined twice (first at {first})",
                                            ctx.docs[fname].loc((key,), True), "keep one definition"))
                continue
            ctx.section_file[key] = fname
            ctx.data[key] = value


# --- stage 2: schema ----------------------------------------------------------------------

def stage_schema(ctx: CompileContext) -> None:
    """Check the structure (nesting, finite numbers within +-2**53), report memory keys of earlier policies
    (``upgrade.py``: each a warning), then validate the merged document against
    schemas/policy.schema.json (+ memory/cost schemas); prune the parts with errors for the later stages."""
    deep, numbers = structure_errors(ctx)
    hidden = hide_deep(ctx, deep) if deep else set()
    paths: list[tuple] = []

    def locate(path: tuple, key: bool = False) -> Location:
        paths.append(tuple(path))
        return ctx.loc(path, key)

    upgrade.warnings(ctx.data, lambda code, message, path, help: ctx.error(code, message, path, help,
                                                                          severity="warning"))
    found = validate(ctx.data, load_schema("policy.schema.json"), locate, "schema")
    for section, schema_name in (("memory", "memory.schema.json"), ("cost", "cost.schema.json")):
        if section in ctx.data:
            found += validate(ctx.data[section], load_schema(schema_name), locate, "schema", path_prefix=(section,))
    # one diagnostic per bad number: the structural one says more than the schema's
    ctx.diags.extend(d for d, path in zip(found, paths, strict=True)
                     if not any(path[:len(n)] == n for n in numbers | hidden))
    language = ctx.data.get("language")
    if isinstance(language, str) and language not in SUPPORTED_LANGUAGES:
        ctx.diags = [d for d in ctx.diags if d.path != "language"]
        ctx.error("policy-language", f"unsupported policy language `{language}`", ("language",),
                  "this engine reads " + ", ".join(SUPPORTED_LANGUAGES))
    if paths or numbers or hidden:
        prune(ctx, set(paths) | numbers | hidden)


# --- stage 3: resolve ---------------------------------------------------------------------

def _enum_values(ft: FactType, ctx: CompileContext) -> tuple[str, ...]:
    if ft.values is not None:
        return ft.values
    return tuple(ctx.data.get(ft.values_from) or ())


def stage_resolve(ctx: CompileContext) -> None:
    """Resolve names and numbers: thresholds (with units), the GPU catalog, fact paths, enum literals; build each
    rule's condition AST; check every threshold's unit against the facts it is compared with."""
    resolve_thresholds(ctx)
    parse_catalog(ctx)
    seen_ids: dict[str, tuple] = {}
    for i, rule in enumerate(ctx.data.get("rules") or []):
        if rule is None:  # pruned after a schema error
            continue
        rid = rule["id"]
        if rid in seen_ids:
            first = ctx.loc(seen_ids[rid])
            ctx.error("rule-duplicate-id", f"rule id `{rid}` is already used (at {first})", ("rules", i, "id"),
                      "rule ids must be unique")
            continue
        seen_ids[rid] = ("rules", i, "id")
        kind = rule.get("kind", "select")
        vocab = vocabulary(kind)
        when = rule.get("when", [])
        ctx.conditions[rid] = _parse(ctx, when, ("rules", i, "when"), vocab, kind)
    check_threshold_units(ctx, ctx.threshold_uses)


def _parse(ctx: CompileContext, data: Any, path: tuple, vocab: dict[str, FactType], kind: str) -> Condition:
    if isinstance(data, list):
        return All(tuple(_parse(ctx, d, path + (j,), vocab, kind) for j, d in enumerate(data)), _path_str(path))
    if "all" in data:
        return All(tuple(_parse(ctx, d, path + ("all", j), vocab, kind) for j, d in enumerate(data["all"])),
                   _path_str(path))
    if "any" in data:
        return AnyOf(tuple(_parse(ctx, d, path + ("any", j), vocab, kind) for j, d in enumerate(data["any"])),
                     _path_str(path))
    if "not" in data:
        return Not(_parse(ctx, data["not"], path + ("not",), vocab, kind), _path_str(path))
    return _parse_cmp(ctx, data, path, vocab, kind)


def _unknown_fact(ctx: CompileContext, fact: str, path: tuple, vocab: dict[str, FactType], kind: str) -> None:
    if fact.startswith("verdict.") and kind == "select":
        ctx.error("rule-verdict-in-select", f"`{fact}` is only known after selection", path,
                  "move this condition into a rule with `kind: advise`")
    else:
        ctx.error("rule-unknown-fact", f"unknown fact `{fact}`", path, did_you_mean(fact, vocab))


def _parse_cmp(ctx: CompileContext, data: dict, path: tuple, vocab: dict[str, FactType], kind: str) -> Cmp:
    fact, op, raw = data["fact"], data["op"], data["value"]
    loc = ctx.loc(path)
    ft = vocab.get(fact)
    if ft is None:
        _unknown_fact(ctx, fact, path + ("fact",), vocab, kind)
        return Cmp(fact, op, raw, path=_path_str(path), location=loc)
    threshold = other = None
    value: Any = raw
    if isinstance(raw, dict) and "threshold" in raw:
        threshold = raw["threshold"]
        if threshold not in ctx.thresholds:
            ctx.error("rule-unknown-threshold", f"unknown threshold `{threshold}`", path + ("value", "threshold"),
                      did_you_mean(threshold, ctx.thresholds))
            return Cmp(fact, op, 0, threshold, path=_path_str(path), location=loc)
        value = ctx.thresholds[threshold]
        ctx.threshold_uses.setdefault(threshold, []).append((fact, path))
        if not ft.numeric:
            ctx.error("rule-type-mismatch", f"`{fact}` is {ft.kind}; a threshold is a number", path + ("value",),
                      "compare it with a literal of its kind")
    elif isinstance(raw, dict) and "fact" in raw:
        other = raw["fact"]
        oft = vocab.get(other)
        if oft is None:
            _unknown_fact(ctx, other, path + ("value", "fact"), vocab, kind)
        elif (oft.numeric != ft.numeric) or (not ft.numeric and oft.kind != ft.kind):
            ctx.error("rule-type-mismatch", f"`{fact}` ({ft.kind}) compared with `{other}` ({oft.kind})",
                      path + ("value",))
        if op in ("in", "not_in"):
            ctx.error("rule-bad-operator", f"`{op}` needs a list of values, not a fact", path + ("op",))
    else:
        value = _check_literal(ctx, fact, ft, op, raw, path)
    if ft.kind in ("bool", "enum") and op in ("<", "<=", ">", ">="):
        ctx.error("rule-bad-operator", f"`{op}` is not defined for {ft.kind} fact `{fact}`", path + ("op",),
                  "use ==, !=, in or not_in")
    return Cmp(fact, op, value, threshold, other, _path_str(path), loc)


def _check_literal(ctx: CompileContext, fact: str, ft: FactType, op: str, raw: Any, path: tuple) -> Any:
    """Check a literal of a comparison and return it as the evaluator compares it (human forms parsed,
    lists as tuples)."""
    if op in ("in", "not_in"):
        if not isinstance(raw, list):
            ctx.error("rule-bad-value", f"`{op}` needs a list of values", path + ("value",), "write [a, b]")
            return raw
        items = raw
    else:
        if isinstance(raw, list):
            ctx.error("rule-bad-value", f"`{op}` compares with one value, not a list", path + ("value",),
                      "use `in` for membership")
            return tuple(raw)
        items = [raw]
    out = []
    for j, item in enumerate(items):
        vpath = path + (("value", j) if op in ("in", "not_in") else ("value",))
        if ft.numeric:
            item = literal(ctx, fact, ft, item, vpath)
        elif ft.kind == "bool" and not isinstance(item, bool):
            ctx.error("rule-type-mismatch", f"`{fact}` is true/false; {item!r} is not", vpath)
        elif ft.kind == "enum":
            allowed = _enum_values(ft, ctx)
            aliases = gpu_names(ctx.data.get("gpus") or {}) if ft.values_from == "gpus" else {}
            if isinstance(item, str) and item not in allowed and item in aliases:
                ctx.error("rule-gpu-alias", f"{item!r} is an alias; conditions compare catalog names", vpath,
                          f"write `{aliases[item]}`")
            elif not isinstance(item, str) or item not in allowed:
                ctx.error("rule-unknown-value", f"{item!r} is not a value of `{fact}`", vpath,
                          did_you_mean(str(item), allowed))
        out.append(item)
    return tuple(out) if op in ("in", "not_in") else out[0]


# --- stage 4: check -----------------------------------------------------------------------

def stage_check(ctx: CompileContext) -> None:
    """Semantic checks: rule kinds and verdicts, ranks, target modules, defaults, use cases."""
    settings = ctx.data.get("settings") or {}
    use_cases = ctx.data.get("use_cases") or {}
    for name, row in use_cases.items():
        if name not in ctx.invalid.get("use_cases", ()):
            _check_verdict_fields(ctx, row, ("use_cases", name), settings)
    methods_defaults = (ctx.data.get("defaults") or {}).get("methods") or {}
    for method, spec in methods_defaults.items():
        _check_verdict_fields(ctx, {**spec, "method": method}, ("defaults", "methods", method), settings)
    fact_defaults = (ctx.data.get("defaults") or {}).get("facts") or {}
    known = vocabulary("select")
    for group, values in fact_defaults.items():
        if not isinstance(values, dict):
            continue
        for key in values:
            if f"{group}.{key}" not in known:
                ctx.error("defaults-unknown-fact", f"unknown fact `{group}.{key}`",
                          ("defaults", "facts", group, key), did_you_mean(f"{group}.{key}", known), key=True)
    for i, rule in enumerate(ctx.data.get("rules") or []):
        if rule is None:
            continue
        kind = rule.get("kind", "select")
        then = rule.get("then")
        path = ("rules", i)
        if kind == "select":
            if not then:
                ctx.error("rule-no-verdict", f"select rule `{rule['id']}` has no `then`", path,
                          "give `then: {method: ...}` or `then: {use_case: true}`, or mark it `kind: advise`")
                continue
            if not then.get("method") and not then.get("use_case"):
                ctx.error("rule-no-method", f"rule `{rule['id']}` does not say which method", path + ("then",),
                          "add `method:` or `use_case: true`")
            if then.get("use_case") and "use_cases" not in ctx.data:
                ctx.error("rule-no-use-case-table", "`use_case: true` but the policy has no `use_cases`",
                          path + ("then", "use_case"))
            _check_verdict_fields(ctx, then, path + ("then",), settings)
        elif then:
            ctx.error("rule-advise-verdict", f"advise rule `{rule['id']}` cannot choose a method", path + ("then",),
                      "remove `then` or make it a select rule")
        elif not rule.get("warn") and not rule.get("note"):
            ctx.error("rule-advise-empty", f"advise rule `{rule['id']}` has neither `warn` nor `note`", path)
        for section in ("warn", "note"):
            for j, msg in enumerate(rule.get(section) or []):
                _check_template(ctx, msg.get("message", ""), path + (section, j, "message"), kind)
    gpus = ctx.data.get("gpus") or {}
    _check_gpu_aliases(ctx, gpus)
    names = gpu_names(gpus)
    default_gpu = ((fact_defaults.get("hardware") or {}).get("gpu"))
    if default_gpu and default_gpu not in names:
        ctx.error("defaults-unknown-gpu", f"default GPU `{default_gpu}` is not in the catalog",
                  ("defaults", "facts", "hardware", "gpu"), did_you_mean(default_gpu, names))
    default_uc = (fact_defaults.get("task") or {}).get("use_case")
    if default_uc and default_uc not in use_cases:
        ctx.error("defaults-unknown-use-case", f"default use case `{default_uc}` is not in the table",
                  ("defaults", "facts", "task", "use_case"), did_you_mean(default_uc, use_cases))


def _check_gpu_aliases(ctx: CompileContext, gpus: dict) -> None:
    """An alias names one catalog entry: it may not be a catalog name nor be claimed by two entries."""
    claimed: dict[str, str] = {}
    for name, entry in gpus.items():
        for j, alias in enumerate((entry or {}).get("aliases") or ()):
            path = ("gpus", name, "aliases", j)
            if alias in gpus:
                ctx.error("gpu-alias-is-a-name", f"alias `{alias}` of `{name}` is itself a catalog entry", path,
                          "remove the alias or rename the entry")
            elif alias in claimed and claimed[alias] != name:
                ctx.error("gpu-alias-duplicate", f"alias `{alias}` is claimed by `{claimed[alias]}` and `{name}`",
                          path, "keep it on one entry")
            else:
                claimed[alias] = name


def _check_verdict_fields(ctx: CompileContext, spec: dict, path: tuple, settings: dict) -> None:
    method = spec.get("method")
    rank = spec.get("rank")
    if rank is not None:
        lo, hi = settings.get("rank_min", 1), settings.get("rank_max", 256)
        if not lo <= rank <= hi:
            ctx.error("rank-out-of-range", f"rank {rank} is outside {lo}..{hi}", path + ("rank",),
                      f"use a rank between {lo} and {hi} (settings.rank_min/rank_max)")
        elif settings.get("rank_power_of_two", False) and rank & (rank - 1):
            ctx.error("rank-not-power-of-two", f"rank {rank} is not a power of two", path + ("rank",),
                      f"use {1 << (rank.bit_length() - 1)} or {1 << rank.bit_length()} (settings.rank_power_of_two)")
        if method and method not in RANKED_METHODS:
            ctx.error("rank-not-applicable", f"`{method}` has no rank", path + ("rank",), "remove `rank`",
                      severity="warning")
    targets = spec.get("target_modules")
    if isinstance(targets, list):
        for j, name in enumerate(targets):
            if name not in LLAMA_MODULES and name not in ("embed_tokens", "lm_head"):
                ctx.error("unknown-target-module", f"unknown target module `{name}`", path + ("target_modules", j),
                          did_you_mean(name, LLAMA_MODULES + TARGET_PRESETS))
    if method is not None and method not in METHODS:
        ctx.error("unknown-method", f"unknown method `{method}`", path + ("method",), did_you_mean(method, METHODS))


def _check_template(ctx: CompileContext, message: str, path: tuple, kind: str) -> None:
    """Messages may embed facts as ``{fact.path}`` or ``{fact.path:.2f}``; check the names exist."""
    import string

    vocab = vocabulary("advise")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(message) if f]
    except ValueError as exc:
        ctx.error("message-bad-template", f"bad message template: {exc}", path, "write {{ for a literal brace")
        return
    for name in fields:
        if name not in vocab and name not in ctx.thresholds:
            ctx.error("message-unknown-fact", f"message refers to unknown `{name}`", path,
                      did_you_mean(name, list(vocab) + list(ctx.thresholds)))
        elif name.startswith("verdict.") and kind == "select":
            pass  # select-rule messages are rendered after selection, so verdict fields are known


# --- stage 5: compile ---------------------------------------------------------------------

def stage_compile(ctx: CompileContext) -> None:
    """Build the Policy: rules ordered by (priority, id) with their resolved conditions (nothing when there are
    errors)."""
    if ctx.has_errors:
        return
    data = ctx.data
    rules: list[Rule] = []
    for i, raw in enumerate(data.get("rules") or []):
        if raw is None:
            continue
        rules.append(Rule(
            id=raw["id"], kind=raw.get("kind", "select"), priority=raw["priority"],
            when=ctx.conditions[raw["id"]], then=dict(raw.get("then") or {}),
            warn=tuple(raw.get("warn") or ()), note=tuple(raw.get("note") or ()),
            rationale=raw["rationale"], source=raw.get("source", ""), location=ctx.loc(("rules", i)),
            waives=tuple(raw.get("waives") or ()),
        ))
    rules.sort(key=lambda r: (r.kind != "select", r.priority, r.id))
    ordered: list[Rule] = []
    counters = {"select": 0, "advise": 0}
    for r in rules:
        counters[r.kind] += 1
        ordered.append(Rule(**{**r.__dict__, "order": counters[r.kind]}))
    locations = {f"rules.{r.id}": r.location for r in ordered}
    for section in ("thresholds", "use_cases", "gpus"):
        for key in data.get(section) or {}:
            locations[f"{section}.{key}"] = ctx.loc((section, key), True)
    threshold_meta = {k: {kk: vv for kk, vv in v.items() if kk != "value"}
                      for k, v in (data.get("thresholds") or {}).items() if isinstance(v, dict)}
    ctx.policy = Policy(
        name=data["name"], version=data["version"], language=data["language"], owner=data.get("owner", ""),
        description=data.get("description", ""), settings=dict(data.get("settings") or {}),
        memory=data.get("memory") or {}, cost=data.get("cost") or {}, gpus=data.get("gpus") or {},
        thresholds=dict(ctx.thresholds), threshold_meta=threshold_meta, defaults=data.get("defaults") or {},
        use_cases=data.get("use_cases") or {}, rules=ordered, root=ctx.root, files=dict(ctx.files),
        origin=ctx.origin, locations=locations,
    )
    # keep only the files that are part of the policy (root + includes actually loaded)
    ctx.policy.files = {name: ctx.files[name] for name in ctx.docs}


STAGES: list[tuple[str, Callable[[CompileContext], None]]] = [
    ("load", stage_load),
    ("schema", stage_schema),
    ("resolve", stage_resolve),
    ("check", stage_check),
    ("compile", stage_compile),
]


# schema, resolve and check find independent problems (the schema stage prunes what it rejects), so all
# three run before the pipeline stops on errors; a document that cannot be loaded stops it at once
_CONTINUE_ON_ERROR = {"schema", "resolve", "check"}


def run_stages(ctx: CompileContext, until: str | None = None) -> CompileContext:
    """Run the stages in order, stopping after load errors, or after the stage named ``until``; later stages
    run on what the earlier ones accepted (compile only without errors)."""
    for name, stage in STAGES:
        stage(ctx)
        if name == until or (ctx.has_errors and name not in _CONTINUE_ON_ERROR):
            break
    return ctx


def compile_files(files: dict[str, str], root: str, origin: str = "<snapshot>",
                  read: Callable[[str], str | None] | None = None) -> Policy:
    """Compile a policy from its files; returns the Policy or raises PolicyError with every diagnostic."""
    ctx = run_stages(CompileContext(dict(files), root, origin, read))
    if ctx.has_errors or ctx.policy is None:
        raise PolicyError(ctx.diags)
    return ctx.policy


def read_policy_files(path: str | os.PathLike) -> tuple[dict[str, str], str, str, Callable[[str], str | None]]:
    """Return (files, root name, origin dir, reader) for a policy file or bundle directory on disk.

    Raises PolicyError when the path does not exist or is not readable.
    """
    p = Path(path)
    if p.is_dir():
        root_path = p / "policy.yaml"
        if not root_path.exists():
            raise PolicyError([Diagnostic("policy-missing-file", f"`{p}` is a directory without policy.yaml",
                                          Location(str(p)), "a policy bundle needs a policy.yaml naming its files")])
    else:
        root_path = p
    if not root_path.exists():
        raise PolicyError([Diagnostic("policy-missing-file", f"policy `{root_path}` not found", Location(str(p)),
                                      "check the path given to --policy")])
    base = root_path.parent

    def reader(name: str) -> str | None:
        try:
            return (base / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    text = reader(root_path.name)
    if text is None:
        raise PolicyError([Diagnostic("file-unreadable", f"cannot read `{root_path}` as UTF-8 text",
                                      Location(str(root_path)))])
    return {root_path.name: text}, root_path.name, str(base), reader


