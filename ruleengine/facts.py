"""Facts: the input contract. Loading (YAML/JSON with locations), validation and normalization.

Normalized facts are complete: every fact a rule may reference has a value, taken from the
input, from the policy's ``defaults.facts``, or derived (``task.shift`` from the use-case row).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .diagnostics import Diagnostic, DiagnosticError, Location, did_you_mean
from .jsonsafe import Limits, check_value
from .paths import load_schema
from .policy.model import gpu_names
from .schema_check import validate
from .units import format_count, parse_count
from .yamlsafe import load_yaml_file

# hardware.host_memory_gb when the facts do not give it: unknown. 0 rather than a guessed size so
# that no plan counts on CPU offload (ZeRO-offload needs optimizer states and gradients in host RAM)
# unless the user said the host has the RAM; every fact must have a value after normalization.
UNKNOWN_HOST_MEMORY = 0.0

# Structural limits of facts, checked before the schema: facts nest four levels (data.tasks[i].name), so
# 8 leaves room for what the schema then names; 20000 values allow data.tasks at its maximum (1000 items).
FACTS_LIMITS = Limits(max_depth=8, max_nodes=20_000, max_string=4096)
# An inline model.config (a config.json's content): nested sub-configs (text_config, rope_scaling, ...).
INLINE_CONFIG_LIMITS = Limits(max_depth=32, max_nodes=50_000, max_string=65_536)
MAX_INLINE_CONFIG_BYTES = 256 * 1024


class FactsError(DiagnosticError):
    """The facts are invalid; ``diagnostics`` names each field, with file:line:col when from a file."""

    exit_code = 2


@dataclass
class FactsInput:
    """Facts as given, with a way to locate each field (file position or CLI flag)."""

    data: dict
    doc: Any = None  # a LocatedDoc, or anything with .loc(path, key) -> Location
    flag_paths: dict[tuple, str] = field(default_factory=dict)  # path -> "--flag" that set it

    def locate(self, path: tuple, key: bool = False) -> Location:
        """Return where ``path`` was given: the CLI flag, the file position, or the input as a whole."""
        probe = tuple(path)
        while probe:
            if probe in self.flag_paths:
                return Location(self.flag_paths[probe])
            probe = probe[:-1]
        if self.doc is not None:
            return self.doc.loc(path, key)
        return Location("<facts>")


def load_facts_file(path: str | os.PathLike) -> FactsInput:
    """Read a facts file (YAML or JSON). Raises FactsError naming the file, line and column."""
    try:
        doc = load_yaml_file(str(path))
    except DiagnosticError as exc:
        raise FactsError(exc.diagnostics) from None
    if doc.data is None:
        doc.data = {}
    if not isinstance(doc.data, dict):
        raise FactsError([Diagnostic("facts-not-mapping", "a facts file must be a mapping (model:, hardware:, ...)",
                                     Location(str(path), 1, 1), "see schemas/facts.schema.json")])
    return FactsInput(doc.data, doc)


def merge_facts(base: FactsInput, overrides: dict[tuple, tuple[Any, str]]) -> FactsInput:
    """Return ``base`` with CLI overrides applied: ``{path: (value, "--flag")}``; flags win over the file."""
    data = copy.deepcopy(base.data)
    flags = dict(base.flag_paths)
    for path, (value, flag) in overrides.items():
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value
        flags[path] = flag
    return FactsInput(data, base.doc, flags)


def _get(d: dict, dotted: str) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _count_bounds() -> dict[str, tuple[float, float]]:
    """Return ``{"model.params": (low, high), ...}``: the numeric bounds of every count field of the schema.

    A count may be written as text (``7B``); its value must lie within the bounds of the schema's
    number form, so both forms of a field share one range, defined once in the schema.
    """
    out: dict[str, tuple[float, float]] = {}

    def walk(node: dict, path: str) -> None:
        for name, sub in (node.get("properties") or {}).items():
            where = f"{path}.{name}" if path else name
            forms = sub.get("oneOf") or []
            number = next((f for f in forms if f.get("type") == "number"), None)
            if number is not None and any(f.get("$ref", "").endswith("/countText") for f in forms):
                out[where] = (float(number["minimum"]), float(number["maximum"]))
            walk(sub, where)
            if isinstance(sub.get("items"), dict):
                walk(sub["items"], where + "[]")

    walk(load_schema("facts.schema.json"), "")
    return out


_BOUNDS: dict[str, tuple[float, float]] = {}


def count_bounds(field: str) -> tuple[float, float]:
    """Return the (low, high) bounds of the count field ``field`` (e.g. ``model.params``) from the schema."""
    if not _BOUNDS:
        _BOUNDS.update(_count_bounds())
    return _BOUNDS[field]


def _field(path: tuple) -> str:
    return ".".join("[]" if isinstance(p, int) else p for p in path).replace(".[]", "[]")


def _count(inp: FactsInput, diags: list[Diagnostic], path: tuple, value: Any, integer: bool = False) -> float | None:
    dotted = _fmt_path(path)
    try:
        number = parse_count(value)
    except ValueError as exc:
        diags.append(Diagnostic("facts-bad-count", str(exc), inp.locate(path), "write e.g. 7B, 350M, 50k or 12000",
                                path=dotted))
        return None
    if not _BOUNDS:
        _BOUNDS.update(_count_bounds())
    low, high = _BOUNDS.get(_field(path), (0.0, float("inf")))
    if not low <= number <= high:
        side = f"below {format_count(low)}" if number < low else f"above {format_count(high)}"
        diags.append(Diagnostic("facts-implausible", f"{dotted} = {number:g} is {side}", inp.locate(path),
                                f"give a count from {format_count(low)} to {format_count(high)}, e.g. "
                                + ("7B" if path == ("model", "params") else "50k"), path=dotted))
        return None
    return float(round(number)) if integer else number


def _fmt_path(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def normalize_facts(given: FactsInput | dict, policy: Any, *, require: tuple[str, ...] = ("model", "hardware", "data"),
                    resolve_config: Callable[[str, FactsInput], Any] | None = None) -> dict:
    """Return complete, typed facts (nested dict) from the facts as given and the policy's defaults.

    ``require`` names the groups that must be present (estimate needs no data). Raises FactsError
    with every problem found (unknown fields with did-you-mean, wrong types, impossible values).
    """
    inp = given if isinstance(given, FactsInput) else FactsInput(given)
    check_input(inp)
    diags = validate(inp.data, load_schema("facts.schema.json"), inp.locate, "facts")
    if not isinstance(inp.data, dict):
        raise FactsError(diags)
    try:
        return _normalize(inp, policy, require, resolve_config, diags)
    except (TypeError, AttributeError, KeyError, ValueError):
        if diags:  # values of the wrong shape, already reported by the schema
            raise FactsError(diags) from None
        raise


def check_input(inp: FactsInput) -> None:
    """Refuse facts that are not plain, bounded JSON before anything else looks at them.

    Checks (``ruleengine.jsonsafe``): finite numbers, integers within 64 bits, text without lone
    surrogates, at most ``FACTS_LIMITS`` (and ``INLINE_CONFIG_LIMITS`` / ``MAX_INLINE_CONFIG_BYTES``
    for an inline model.config). Raises FactsError (exit 2) with located diagnostics.
    """
    import json

    model = inp.data.get("model") if isinstance(inp.data, dict) else None
    inline = isinstance(model, dict) and isinstance(model.get("config"), dict)
    diags = check_value(inp.data, inp.locate, "facts", FACTS_LIMITS,
                        {("model", "config"): INLINE_CONFIG_LIMITS} if inline else None)
    if not diags and inline and isinstance(model, dict):
        size = len(json.dumps(model["config"], ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if size > MAX_INLINE_CONFIG_BYTES:
            diags.append(Diagnostic("facts-config-too-large", f"the inline model.config is {size} bytes as JSON "
                                    f"(at most {MAX_INLINE_CONFIG_BYTES})", inp.locate(("model", "config")),
                                    "give the model's config.json only (no weights, no tokenizer)",
                                    path="model.config"))
    if diags:
        raise FactsError(diags)


def _normalize(inp: FactsInput, policy: Any, require: tuple[str, ...],
               resolve_config: Callable[[str, FactsInput], Any] | None, diags: list[Diagnostic]) -> dict:
    """Run the semantic checks and fill defaults; raises FactsError with ``diags`` plus what it finds."""
    data = {k: (plain_copy(v) if isinstance(v, dict) else {}) for k, v in inp.data.items()}
    defaults = (policy.defaults.get("facts") or {})
    model = dict(data.get("model") or {})
    hardware = {**(defaults.get("hardware") or {}), **(data.get("hardware") or {})}
    dat = {**(defaults.get("data") or {}), **(data.get("data") or {})}
    task = {**(defaults.get("task") or {}), **(data.get("task") or {})}
    serving = {**(defaults.get("serving") or {}), **(data.get("serving") or {})}
    training = dict(data.get("training") or {})

    if "model" in require and "params" not in model and "config" not in model:
        diags.append(Diagnostic("facts-missing-model", "the model size is missing", inp.locate(("model",)),
                                "give model.params (e.g. 7B, flag --model-params) or model.config (a config.json)",
                                path="model"))
    if "params" in model:
        model["params"] = _count(inp, diags, ("model", "params"), model["params"])
    if "hardware" in require and "gpu" not in hardware and "gpu_memory_gb" not in hardware:
        diags.append(Diagnostic("facts-missing-gpu", "the GPU is missing", inp.locate(("hardware",)),
                                "give hardware.gpu (one of: " + ", ".join(policy.gpus) + ") or hardware.gpu_memory_gb",
                                path="hardware"))
    gpu_name = hardware.get("gpu")
    gpus = gpu_names(policy.gpus)
    if gpu_name is not None and gpu_name not in gpus:
        diags.append(Diagnostic("facts-unknown-gpu", f"unknown GPU `{gpu_name}`", inp.locate(("hardware", "gpu")),
                                did_you_mean(gpu_name, gpus), path="hardware.gpu"))
    elif gpu_name is not None:
        hardware["gpu"] = gpus[gpu_name]  # an alias resolves to the catalog name
    hardware.setdefault("gpu_count", 1)
    hardware.setdefault("host_memory_gb", UNKNOWN_HOST_MEMORY)
    if "data" in require and "examples" not in dat and "tasks" not in dat:
        diags.append(Diagnostic("facts-missing-examples", "the number of training examples is missing",
                                inp.locate(("data",)), "give data.examples (e.g. 50k, flag --examples) or data.tasks",
                                path="data.examples"))
    if "examples" in dat:
        dat["examples"] = _count(inp, diags, ("data", "examples"), dat["examples"], integer=True)
    tasks = dat.get("tasks")
    if tasks:
        total = 0.0
        for i, t in enumerate(tasks):
            n = _count(inp, diags, ("data", "tasks", i, "examples"), t["examples"], integer=True)
            t["examples"] = n
            total += n or 0
        if "examples" in dat and dat["examples"] is not None and dat["examples"] != total:
            diags.append(Diagnostic("facts-inconsistent", f"data.examples ({dat['examples']:g}) differs from the sum "
                                    f"of data.tasks ({total:g})", inp.locate(("data", "examples")),
                                    "drop data.examples or make it the sum", path="data.examples"))
        dat["examples"] = total
        names = [t["name"] for t in tasks]
        if len(set(names)) != len(names):
            diags.append(Diagnostic("facts-duplicate-task", "task names in data.tasks must be unique",
                                    inp.locate(("data", "tasks")), path="data.tasks"))
    dat.setdefault("examples", 0.0)
    dat.setdefault("avg_tokens", 512)
    dat["num_tasks"] = len(tasks) if tasks else 1
    if "requests_per_day" in serving:
        serving["requests_per_day"] = _count(inp, diags, ("serving", "requests_per_day"), serving["requests_per_day"])
    use_case = task.get("use_case")
    if use_case is None:
        diags.append(Diagnostic("facts-missing-use-case", "task.use_case is missing and the policy has no default",
                                inp.locate(("task",)), "give one of: " + ", ".join(policy.use_cases),
                                path="task.use_case"))
    elif use_case not in policy.use_cases:
        diags.append(Diagnostic("facts-unknown-use-case", f"unknown use case `{use_case}`",
                                inp.locate(("task", "use_case")), did_you_mean(use_case, policy.use_cases),
                                path="task.use_case"))
    else:
        task.setdefault("shift", policy.use_cases[use_case].get("shift", "domain_adaptation"))
    task.setdefault("quality", "production")
    serving.setdefault("latency_sensitive", False)
    serving.setdefault("requests_per_day", 0.0)
    serving.setdefault("avg_latency_ms", 200.0)
    serving.setdefault("adapters", 1)
    _drop_shadowed_shape_errors(diags)
    if diags:
        raise FactsError(diags)
    out = {"model": model, "hardware": hardware, "data": dat, "task": task, "serving": serving,
           "training": training}
    if resolve_config is not None and model.get("config"):
        resolve_config(model["config"], inp)
    return out


def _drop_shadowed_shape_errors(diags: list[Diagnostic]) -> None:
    """Keep one message per bad count: facts-bad-count / facts-implausible say more than the schema's shape error."""
    own = ("facts-bad-count", "facts-implausible")
    counted = {d.path for d in diags if d.code in own}
    diags[:] = [d for d in diags if d.code in own or d.path not in counted]


def plain_copy(value: Any) -> Any:
    """Return a deep copy of JSON-like data (dicts with string keys, lists; tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_copy(v) for v in value]
    return value


def flatten(nested: dict, prefix: str = "") -> dict[str, Any]:
    """Return ``{"a.b": v}`` for every leaf of a nested dict (lists are kept whole)."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


get = _get
