"""The one error boundary of `decide`: every exception becomes a message and an exit code of the enum."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from ruleengine.cli.common import BoundaryGroup, error_format_option
from ruleengine.diagnostics import Diagnostic, DiagnosticError, Location
from ruleengine.evaluate import EngineDisagreement
from ruleengine.exitcodes import ExitCode, help_text
from ruleengine.paths import BundledDataMissing


class _Stale(Exception):
    exit_code = ExitCode.TAMPERED


def _app(raise_: BaseException | None, result: object = None) -> click.Group:
    @click.group(cls=BoundaryGroup)
    def root() -> None:
        """A root group like `decide`'s."""

    @root.command("run")
    @error_format_option
    def run(error_format: str) -> object:
        if raise_ is not None:
            raise raise_
        return result

    return root


@pytest.mark.parametrize(("raised", "code", "text"), [
    (DiagnosticError([Diagnostic("x-bad", "it is bad", Location("f.yaml", 3, 1))]), 2, "f.yaml:3:1"),
    (EngineDisagreement("engines differ"), 4, "internal error: engines differ"),
    (FileNotFoundError(2, "No such file", "nope.json"), 2, "nope.json"),
    (BundledDataMissing("the bundled schemas/ folder is missing"), 4, "schemas/ folder is missing"),
    (_Stale("chain broken"), 6, "chain broken"),
    (RuntimeError("a bug"), 4, "internal error: RuntimeError: a bug"),
    (click.ClickException("click's generic failure"), 2, "click's generic failure"),
    (click.BadParameter("bad value", param_hint="--x"), 2, "bad value"),
])
def test_exceptions_map_to_exit_codes(raised, code, text, monkeypatch):
    monkeypatch.delenv("FINETUNE_POLICY_DEBUG", raising=False)
    result = CliRunner().invoke(_app(raised), ["run"])
    assert result.exit_code == code, result.output
    assert text in result.output
    assert "Traceback" not in result.output


def test_returned_codes_are_the_exit_status():
    assert CliRunner().invoke(_app(None, ExitCode.INFEASIBLE), ["run"]).exit_code == 1
    assert CliRunner().invoke(_app(None, ExitCode.OK), ["run"]).exit_code == 0


def test_json_error_format_prints_diagnostics_as_json():
    import json

    raised = DiagnosticError([Diagnostic("x-bad", "it is bad", Location("f.yaml", 3, 1))])
    result = CliRunner().invoke(_app(raised), ["run", "--error-format", "json"])
    payload = json.loads(result.stderr)
    assert payload["diagnostics"][0]["code"] == "x-bad"


def test_every_exit_code_is_in_the_help_text():
    text = help_text()
    for code in ExitCode:
        assert f"{int(code)}  " in text
