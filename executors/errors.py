"""Errors raised by the executors: located diagnostics with the exit codes of DESIGN.md.

All of them are ``ruleengine.diagnostics.DiagnosticError`` subclasses, so the ``decide`` CLI prints
them as ``file:line: error[code]: message`` plus a help line and exits with their ``exit_code``.
"""

from __future__ import annotations

from ruleengine.diagnostics import Diagnostic, DiagnosticError, Location

__all__ = ["DataError", "Diagnostic", "Location", "PlanError", "ResumeError", "RunError", "plan_error", "positive_int"]


class PlanError(DiagnosticError):
    """The plan cannot be built or is invalid: an incompatible combination, an unknown module, a bad flag."""

    exit_code = 2


class DataError(DiagnosticError):
    """A data file is invalid (bad JSON, missing field, empty text, mixed formats); nothing was trained."""

    exit_code = 2


class ResumeError(DiagnosticError):
    """A run cannot be resumed or started in this output directory (changed plan or data, no run to resume)."""

    exit_code = 2


class RunError(DiagnosticError):
    """Training could not start with this plan on this machine (e.g. the plan needs CUDA and there is none)."""

    exit_code = 2


def positive_int(verdict: dict, key: str, code: str, help_text: str) -> int:
    """Return ``verdict[key]`` as a positive int; raises PlanError ``code`` (with ``help_text``) otherwise."""
    value = verdict.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PlanError([Diagnostic(code, f"the verdict's {key} is {value!r}; {verdict.get('method')} needs a "
                                    "positive integer", Location("<verdict>"), help_text)])
    return value


def plan_error(code: str, message: str, help_text: str = "", where: str = "<plan>") -> PlanError:
    """Return a PlanError with one diagnostic ``code``/``message`` located at ``where`` (a flag or file)."""
    return PlanError([Diagnostic(code, message, Location(where), help_text)])
