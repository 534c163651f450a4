"""`decide map`: verdict regions as a picture, each cell a real decision of the plain evaluator."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from ruleengine.api import decide
from ruleengine.authoring.mapplot import compute_map, make_axis
from ruleengine.cli import main
from ruleengine.policy import load_policy

from .conftest import REPO


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_map_png_over_model_size_and_gpu_memory(tmp_path):
    out = tmp_path / "map.png"
    result = run("map", "--x", "model.params", "--y", "hardware.gpu_memory_gb", "--resolution", "16", "-o", str(out),
                 "--use-case", "chat", "--examples", "50k")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "16 x 16 cells of default" in result.stdout and "infeasible" in result.stdout


def test_map_svg_with_a_categorical_axis(tmp_path):
    out = tmp_path / "uc.svg"
    result = run("map", "--x", "data.examples", "--y", "task.use_case", "--model-params", "7B", "--gpu", "a100-80gb",
                 "--resolution", "10", "-o", str(out))
    assert result.exit_code == 0, result.output
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "domain_pretraining" in svg


def test_map_cells_are_the_decisions():
    policy = load_policy(None)
    x = make_axis(policy, "model.params", "--x", "1B:70B", 5)
    y = make_axis(policy, "hardware.gpu_count", "--y", "1:8", 4)
    data = compute_map(policy, {"hardware": {"gpu": "a100-80gb"}, "task": {"use_case": "chat"}}, x, y)
    for j, count in enumerate(y.values):
        for i, params in enumerate(x.values):
            d = decide(policy, {"model": {"params": params}, "hardware": {"gpu": "a100-80gb", "gpu_count": count},
                                "data": {"examples": 50000}, "task": {"use_case": "chat"}})
            cell = data.cells[j][i]
            assert cell.rule == d.chosen_rule and cell.feasible == d.feasible
            if d.feasible:
                assert (cell.method, cell.rank) == (d.verdict["method"], d.verdict["rank"])


def test_bad_axis_and_bad_output_exit_2(tmp_path):
    result = run("map", "--x", "model.parms", "-o", str(tmp_path / "m.png"))
    assert result.exit_code == 2 and "map-bad-axis" in result.stderr and "model.params" in result.stderr
    result = run("map", "--x-range", "70B:1B", "-o", str(tmp_path / "m.png"))
    assert result.exit_code == 2
    result = run("map", "-o", str(tmp_path / "m.pdf"))
    assert result.exit_code == 2 and "map-bad-output" in result.stderr


def test_matplotlib_is_imported_only_for_pictures():
    code = ("import sys; from click.testing import CliRunner; from ruleengine.cli import main; "
            "r = CliRunner().invoke(main, ['check', 'policies/default']); "
            "r2 = CliRunner().invoke(main, ['diff', 'policies/default', 'policies/default']); "
            "assert r.exit_code == 0 and r2.exit_code == 0, (r.output, r2.output); "
            "assert 'matplotlib' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
