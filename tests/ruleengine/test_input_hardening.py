"""Bad input is always a clear answer (issue 9): any facts field, any JSON type, extreme values.

Through the API and the CLI (CliRunner): a decision (exit 0/1) or located diagnostics (exit 2), never
an internal error (exit 4), and every JSON the CLI prints is strict JSON. The HTTP side is in
tests/ruleengine/service/test_input_hardening_http.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings

from ruleengine import api
from ruleengine.cli import main
from ruleengine.diagnostics import DiagnosticError


def _hostile():
    name = "ruleengine_hostile_facts"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_hostile.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


H = _hostile()
ENGINE = api.open_policy(None)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(H.hostile_facts())
@example({"model": {"config": {}}, "hardware": {"gpu": "a100-80gb", "gpu_count": 1}, "data": {"examples": "50k"},
          "task": {"use_case": "domain_qa"}})  # an empty inline config once fell through to model.params (KeyError)
def test_the_api_decides_or_refuses_with_diagnostics(facts):
    try:
        decision = ENGINE.decide(facts)
    except DiagnosticError as exc:
        assert exc.exit_code == 2, exc
        assert exc.diagnostics and all(d.code and d.message for d in exc.diagnostics)
        json.dumps([d.to_dict() for d in exc.diagnostics], allow_nan=False)
        return
    json.dumps(decision.to_dict(), allow_nan=False).encode("utf-8")  # strict, encodable JSON
    try:
        ENGINE.estimate(facts)
    except DiagnosticError as exc:
        assert exc.exit_code == 2


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(H.edge_facts())
def test_valid_facts_at_the_edges_of_their_bounds_never_break_the_engine(facts):
    """Facts the schema accepts, at its bounds: every value that reaches durable-rules can be compared exactly."""
    try:
        decision = ENGINE.decide(facts)
    except DiagnosticError as exc:
        assert exc.exit_code == 2, exc
        return
    json.dumps(decision.to_dict(), allow_nan=False).encode("utf-8")


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                   HealthCheck.function_scoped_fixture])
@given(H.hostile_facts())
def test_the_cli_exits_0_1_or_2_and_prints_strict_json(tmp_path, facts):
    path = tmp_path / "facts.json"
    path.write_text(H.as_json_text(facts), encoding="utf-8", errors="surrogatepass")
    result = CliRunner().invoke(main, ["--facts", str(path), "--format", "json", "--no-audit", "--error-format",
                                       "json"])
    assert result.exit_code in (0, 1, 2), result.output
    assert "internal error" not in result.output
    if result.exit_code in (0, 1):
        H.strict_loads(result.stdout)
    else:
        H.strict_loads(result.stderr)


@pytest.mark.parametrize("flag,value", [
    ("--gpu-memory-gb", "nan"), ("--gpu-memory-gb", "inf"), ("--avg-tokens", "-inf"), ("--epochs", "NaN"),
    ("--gpus", "9" * 400), ("--model-params", "1e400"), ("--examples", "9" * 400 + "k"),
    ("--target-modules", "q_prj,v_proj"), ("--set", "model.params=.nan"), ("--set", "data.avg_tokens=.inf"),
    ("--set", "model.name=2020-01-01"), ("--model-config", "/dev/zero"), ("--model-config", "/etc"),
])
def test_bad_flags_exit_2(flag, value):
    base = ["--model-params", "7B", "--gpu", "a100-80gb", "--examples", "50k", "--no-audit"]
    result = CliRunner().invoke(main, [*base, flag, value])
    assert result.exit_code == 2, result.output
    assert "internal error" not in result.output


def test_a_fifo_model_config_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    result = CliRunner().invoke(main, ["--model-config", str(fifo), "--gpu", "a100-80gb", "--examples", "50k",
                                       "--no-audit"])
    assert result.exit_code == 2 and "a FIFO, not a regular file" in result.output


def test_yaml_nan_and_infinity_are_refused_where_they_stand(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("model:\n  params: 7B\nhardware:\n  gpu: a100-80gb\n  gpu_memory_gb: .inf\ndata:\n  examples: .nan\n")
    result = CliRunner().invoke(main, ["--facts", str(path), "--no-audit"])
    assert result.exit_code == 2
    assert f"{path}:5:18: error[yaml-not-finite]" in result.output and f"{path}:7:13: error[yaml-not-finite]" in result.output


def test_300_thousand_tasks_are_refused_fast_with_one_diagnostic():
    facts = {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"},
             "data": {"tasks": [{"name": f"t{i}", "examples": 1} for i in range(300_000)]}}
    with pytest.raises(DiagnosticError) as exc:
        ENGINE.decide(facts)
    assert [d.code for d in exc.value.diagnostics] == ["facts-too-large"]


def test_diagnostics_are_capped_at_50_in_the_cli(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"},
                                "data": {"tasks": [{"name": f"t{i}", "examples": "x"} for i in range(80)]}}))
    text = CliRunner().invoke(main, ["--facts", str(path), "--no-audit"])
    assert text.exit_code == 2 and text.output.count("error[") == 50 and "... and 30 more diagnostic(s)" in text.output
    as_json = CliRunner().invoke(main, ["--facts", str(path), "--no-audit", "--error-format", "json"])
    payload = json.loads(as_json.stderr)
    assert len(payload["diagnostics"]) == 50 and payload["more_diagnostics"] == 30
