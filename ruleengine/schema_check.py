"""JSON Schema validation that reports located, actionable diagnostics."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only; jsonschema is imported when input is invalid
    import jsonschema

from .diagnostics import Diagnostic, Location, did_you_mean


def _fmt_path(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _allowed_props(schema: dict) -> list[str]:
    props = list(schema.get("properties", {}))
    for sub in schema.get("oneOf", []) + schema.get("anyOf", []):
        props.extend(sub.get("properties", {}))
    return props


def _best(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For oneOf errors pick the branch that got furthest (the most specific complaint)."""
    if error.validator in ("oneOf", "anyOf") and error.context:
        deepest = max(error.context, key=lambda e: (len(e.absolute_path), -len(e.schema_path)))
        if len(deepest.absolute_path) > len(error.absolute_path):
            return _best(deepest)
    return error


_FAST: dict[int, tuple[dict, Any]] = {}
_SLOW: dict[int, tuple[dict, Any]] = {}


def _fast_valid(data: Any, schema: dict) -> bool:
    """Return True when jsonschema-rs (compiled once per schema) says ``data`` is valid.

    False means "not known to be valid" (invalid, or a value jsonschema-rs cannot take, such as an
    integer beyond 64 bits): the caller then runs the full validation, whose diagnostics decide.
    """
    found = _FAST.get(id(schema))
    if found is None or found[0] is not schema:
        import jsonschema_rs

        found = (schema, jsonschema_rs.validator_for(schema))
        _FAST[id(schema)] = found
    try:
        return bool(found[1].is_valid(data))
    except (ValueError, TypeError, OverflowError):
        return False


def _validator(schema: dict) -> jsonschema.Draft202012Validator:
    import jsonschema  # 40 ms to import: only for input the compiled validator does not accept

    found = _SLOW.get(id(schema))
    if found is None or found[0] is not schema:
        found = (schema, jsonschema.Draft202012Validator(schema))
        _SLOW[id(schema)] = found
    return found[1]


def validate(
    data: Any,
    schema: dict,
    locate: Callable[[tuple, bool], Location],
    code_prefix: str,
    path_prefix: tuple = (),
) -> list[Diagnostic]:
    """Return one diagnostic per schema violation of ``data``, located through ``locate(path, key)``.

    Valid data is recognised by jsonschema-rs (compiled, microseconds); only data it does not accept
    goes through jsonschema, whose errors become the diagnostics.
    """
    if _fast_valid(data, schema):
        return []
    validator = _validator(schema)
    diags: list[Diagnostic] = []
    for raw in validator.iter_errors(data):
        error = _best(raw)
        path = path_prefix + tuple(error.absolute_path)
        where = _fmt_path(path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = _allowed_props(error.schema)
            extras = [k for k in error.instance if k not in allowed]
            for key in extras:
                diags.append(Diagnostic(
                    f"{code_prefix}-unknown-field", f"unknown field `{key}`", locate(path + (key,), True),
                    did_you_mean(str(key), allowed), path=_fmt_path(path + (key,))))
            continue
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else error.message
            diags.append(Diagnostic(f"{code_prefix}-missing-field", f"required field `{missing}` is missing",
                                    locate(path, False), f"add `{missing}` to {where}", path=where))
            continue
        if error.validator in ("enum", "const"):
            options = error.validator_value if error.validator == "enum" else [error.validator_value]
            hint = did_you_mean(str(error.instance), [str(o) for o in options])
            diags.append(Diagnostic(f"{code_prefix}-bad-value",
                                    f"{error.instance!r} is not one of {', '.join(map(str, options))}",
                                    locate(path, False), hint, path=where))
            continue
        if error.validator == "oneOf" and error.schema.get("oneOf") and all(
                "$ref" in s or "type" in s or "enum" in s for s in error.schema["oneOf"]):
            diags.append(Diagnostic(f"{code_prefix}-bad-value", f"{error.instance!r} has the wrong shape",
                                    locate(path, False), _shape_help(error.schema), path=where))
            continue
        message = error.message
        if error.validator == "pattern":
            message = f"{error.instance!r} is not a valid value here"
        if len(message) > 200:
            message = message[:197] + "..."
        diags.append(Diagnostic(f"{code_prefix}-{error.validator}", message, locate(path, False),
                                _help_for(error), path=where))
    return diags


def _shape_help(schema: dict) -> str:
    kinds = []
    for sub in schema.get("oneOf", []):
        if "enum" in sub:
            kinds.append("one of " + ", ".join(map(str, sub["enum"])))
        elif "$ref" in sub:
            kinds.append(sub["$ref"].rsplit("/", 1)[-1])
        elif "type" in sub:
            kinds.append(str(sub["type"]))
    return "expected " + " or ".join(kinds)


def _help_for(error: jsonschema.ValidationError) -> str:
    v = error.validator
    if isinstance(error.schema, dict) and error.schema.get("x-help"):
        return str(error.schema["x-help"])
    if v == "type":
        return f"expected {error.validator_value}"
    if v in ("minimum", "exclusiveMinimum"):
        return f"use a value {'>' if v == 'exclusiveMinimum' else '>='} {error.validator_value}"
    if v in ("maximum", "exclusiveMaximum"):
        return f"use a value {'<' if v == 'exclusiveMaximum' else '<='} {error.validator_value}"
    if v == "pattern":
        return f"must match {error.validator_value}"
    if v == "minItems":
        return f"give at least {error.validator_value} item(s)"
    return ""
