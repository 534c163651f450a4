"""Errors as data: located diagnostics, collected before failing, rendered as text or JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, order=True)
class Location:
    """A place in a source file; line and col are 1-based (0 = unknown)."""

    file: str = ""
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if not self.file:
            return "<input>"
        if not self.line:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem: a stable code, a message, where it is, and a one-line hint on what to do."""

    code: str
    message: str
    location: Location = field(default_factory=Location)
    help: str = ""
    severity: str = "error"  # "error" | "warning"
    path: str = ""  # the field path inside the document, e.g. rules[3].when.fact

    def sort_key(self) -> tuple:
        """Return the key that orders diagnostics by file, line, column, then code."""
        loc = self.location
        return (loc.file, loc.line, loc.col, self.code, self.message)

    def to_dict(self) -> dict:
        """Return a JSON-safe dict of this diagnostic."""
        data = asdict(self)
        data["location"] = asdict(self.location)
        return data

    def render(self) -> str:
        """Return the human-readable form: ``file:line:col: error[code]: message`` plus help."""
        where = str(self.location)
        field_txt = f" (at {self.path})" if self.path else ""
        text = f"{where}: {self.severity}[{self.code}]: {self.message}{field_txt}"
        if self.help:
            text += f"\n  help: {self.help}"
        return text


class DiagnosticError(Exception):
    """An input was rejected; carries every diagnostic found, sorted by location."""

    exit_code = 2

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        super().__init__(render_text(self.diagnostics))

    @property
    def errors(self) -> list[Diagnostic]:
        """Return only the error-severity diagnostics."""
        return [d for d in self.diagnostics if d.severity == "error"]


MAX_SHOWN = 50  # diagnostics printed or returned at most; the rest are counted


def capped(diagnostics: Iterable[Diagnostic], limit: int = MAX_SHOWN) -> tuple[list[Diagnostic], int]:
    """Return the first ``limit`` diagnostics and how many more there are (errors before warnings kept in order)."""
    diags = list(diagnostics)
    return diags[:limit], max(0, len(diags) - limit)


def render_text(diagnostics: Iterable[Diagnostic]) -> str:
    """Return the diagnostics as text, one block each (at most ``MAX_SHOWN``), followed by a count line."""
    diags = list(diagnostics)
    shown, more = capped(diags)
    lines = [d.render() for d in shown]
    if more:
        lines.append(f"... and {more} more diagnostic(s) not shown")
    n_err = sum(1 for d in diags if d.severity == "error")
    n_warn = len(diags) - n_err
    lines.append(f"{n_err} error(s), {n_warn} warning(s)")
    return "\n".join(lines)


def diagnostics_payload(diagnostics: Iterable[Diagnostic]) -> dict:
    """Return ``{"diagnostics": [...]}`` with at most ``MAX_SHOWN`` entries, plus ``more_diagnostics`` when capped."""
    shown, more = capped(diagnostics)
    out: dict = {"diagnostics": [d.to_dict() for d in shown]}
    if more:
        out["more_diagnostics"] = more
    return out


def render_json(diagnostics: Iterable[Diagnostic]) -> str:
    """Return the diagnostics as a JSON document ``{"diagnostics": [...], "more_diagnostics": n}`` (capped)."""
    return json.dumps(diagnostics_payload(diagnostics), indent=2)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return a ``did you mean `x`?`` hint for the closest candidate, or a list of valid names."""
    options = sorted(set(candidates))
    from difflib import get_close_matches  # only when a name is wrong

    close = get_close_matches(name, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    if len(options) <= 12:
        return "valid: " + ", ".join(f"`{o}`" for o in options)
    return f"{len(options)} names are valid; see the documentation"
