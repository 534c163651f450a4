"""The exit codes of every `decide` command, defined once.

Library errors carry one of these as their ``exit_code`` (``DiagnosticError`` subclasses,
``EngineDisagreement``); the CLI's single error boundary maps them to the process status.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit status of `decide` and its subcommands."""

    OK = 0  # decided: a method fits (or the command succeeded)
    INFEASIBLE = 1  # decided: nothing fits
    BAD_INPUT = 2  # bad input: facts, flags, files, data, case files
    BAD_POLICY = 3  # invalid policy
    INTERNAL = 4  # internal error: engine disagreement, a bug
    CHECKS_FAILED = 5  # policy tests or checks failed
    TAMPERED = 6  # audit verification failed
    AUDIT_WRITE = 7  # the audit store could not be written
    REPLAY_DIFFERS = 8  # an audit replay decided differently


DESCRIPTIONS = {
    ExitCode.OK: "decided: a method fits (or success)",
    ExitCode.INFEASIBLE: "decided: infeasible, nothing fits",
    ExitCode.BAD_INPUT: "bad input (facts, flags, files)",
    ExitCode.BAD_POLICY: "invalid policy",
    ExitCode.INTERNAL: "internal error",
    ExitCode.CHECKS_FAILED: "policy tests or checks failed",
    ExitCode.TAMPERED: "audit verification failed",
    ExitCode.AUDIT_WRITE: "the audit store could not be written",
    ExitCode.REPLAY_DIFFERS: "an audit replay decided differently",
}


def help_text() -> str:
    """Return the exit-code table for command help (click's ``\\b`` keeps the lines as they are)."""
    items = [f"{int(code)}  {DESCRIPTIONS[code]}" for code in ExitCode]
    lines = ["\b", "Exit codes:"]
    for left, right in zip(items[0::2], items[1::2] + [""], strict=True):
        lines.append(f"  {left:<40}{right}".rstrip())
    return "\n".join(lines) + "\n"


def command_help(meanings: dict[ExitCode, str]) -> str:
    """Return the exit-code lines of one command: only the codes it uses, with what each means there."""
    lines = ["\b", "Exit codes:"]
    lines.extend(f"  {int(code)}  {text}" for code, text in sorted(meanings.items()))
    return "\n".join(lines) + "\n"
