"""The `decide` CLI through click's CliRunner and through a real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from ruleengine.cli import main
from ruleengine.paths import load_schema

REPO = Path(__file__).resolve().parents[2]
DECIDE = [sys.executable, "-m", "ruleengine.cli"]
BASE = ["--model-params", "13B", "--gpu", "a100-80gb", "--gpus", "1", "--examples", "50k", "--use-case", "domain_qa"]


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_decide_table_output_and_exit_code():
    r = run(*BASE, "--no-audit")
    assert r.exit_code == 0, r.output
    assert "Verdict: lora r=16" in r.output
    assert "[overfitting-watch]" in r.output
    assert "Memory per GPU" in r.output and "full_ft" in r.output


def test_decide_json_matches_the_decision_schema():
    r = run(*BASE, "--no-audit", "--format", "json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    jsonschema.validate(data, load_schema("decision.schema.json"))
    assert data["verdict"]["method"] == "lora" and data["feasible"] is True
    assert data["policy"]["name"] == "default" and len(data["policy"]["sha256"]) == 64
    assert {r["method"] for r in data["rejected"]} == {"full_ft", "qlora", "dora", "ia3", "prompt_tuning",
                                                       "prefix_tuning", "adapter", "adalora"}
    full = next(r for r in data["rejected"] if r["method"] == "full_ft")
    assert full["code"] == "memory" and full["margin_gb"] < 0


def test_decide_yaml_output():

    r = run(*BASE, "--no-audit", "--format", "yaml")
    assert yaml.safe_load(r.output)["verdict"]["rank"] == 16


def test_infeasible_exit_code_and_suggestions():
    r = run("--model-params", "70B", "--gpu", "a10g-24gb", "--examples", "50k", "--no-audit")
    assert r.exit_code == 1, r.output
    assert "INFEASIBLE" in r.output and "What would fit" in r.output


def test_facts_file_with_flag_override(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("model: {params: 7B}\nhardware: {gpu: a100-80gb}\ndata: {examples: 20k}\ntask: {use_case: chat}\n")
    r = run("--facts", str(job), "--use-case", "code_generation", "--no-audit", "--format", "json")
    data = json.loads(r.output)
    assert data["facts"]["given"]["task"]["use_case"] == "code_generation"
    assert data["verdict"]["rank"] == 32


def test_bad_facts_file_is_located(tmp_path, golden):
    job = tmp_path / "job.yaml"
    job.write_text("model: {params: 7B}\nhardware: {gpu: a100-80g, gpu_count: 0}\ndata: {exampels: 20k}\n")
    r = run("--facts", str(job), "--no-audit")
    assert r.exit_code == 2
    golden("cli-bad-facts.txt", r.output.replace(str(job), "job.yaml"))


def test_bad_facts_json_error_format(tmp_path):
    r = run("--model-params", "7B", "--gpu", "h300", "--examples", "5", "--no-audit", "--error-format", "json")
    assert r.exit_code == 2
    diags = json.loads(r.output)["diagnostics"]
    assert diags[0]["code"] == "facts-unknown-gpu" and diags[0]["location"]["file"] == "--gpu"
    assert "h200" in diags[0]["help"]  # did-you-mean covers aliases too


def test_gpu_alias_and_host_memory_flag():
    r = run("--model-params", "7B", "--gpu", "h200", "--host-memory-gb", "512", "--examples", "50k",
            "--use-case", "chat", "--no-audit", "--format", "json")
    assert r.exit_code == 0, r.output
    facts = json.loads(r.output)["facts"]
    assert facts["given"]["hardware"]["gpu"] == "h200"
    assert facts["normalized"]["hardware"] == {"gpu": "h200-141gb", "gpu_count": 1, "host_memory_gb": 512}


def test_invalid_policy_exit_code():
    r = run(*BASE, "--no-audit", "--policy", str(REPO / "tests/fixtures/policies/broken.yaml"))
    assert r.exit_code == 3
    assert "did you mean `data.examples`?" in r.output


def test_validate_reports_every_policy():
    r = run("validate", str(REPO / "policies"))
    assert r.exit_code == 0, r.output
    from ruleengine.policy import load_policy

    assert f"default {load_policy(None).version}" in r.output
    r = run("validate", str(REPO / "policies"), str(REPO / "tests/fixtures/policies/broken.yaml"))
    assert r.exit_code == 3


def test_estimate_lists_every_method():
    r = run("estimate", "--model-params", "7B", "--gpu", "a100-80gb", "--format", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert set(data["estimates"]) == {"full_ft", "lora", "qlora", "dora", "ia3", "prompt_tuning", "prefix_tuning",
                                      "adapter", "adalora"}
    e = data["estimates"]
    assert e["qlora"]["memory"]["total_gib"] < e["lora"]["memory"]["total_gib"] < e["full_ft"]["memory"]["total_gib"]


def test_estimate_uses_the_users_exact_training_settings():
    a = json.loads(run("estimate", "--model-params", "7B", "--gpu", "a100-80gb", "--format", "json").output)
    b = json.loads(run("estimate", "--model-params", "7B", "--gpu", "a100-80gb", "--format", "json",
                       "--micro-batch-size", "16", "--no-gradient-checkpointing").output)
    assert b["estimates"]["lora"]["memory"]["activations_gib"] > a["estimates"]["lora"]["memory"]["activations_gib"]


def test_explain_gives_why_why_not_and_counterfactuals():
    r = run("explain", *BASE, "--no-audit")
    assert r.exit_code == 0, r.output
    assert "Chosen: lora r=16" in r.output and "Why not the others:" in r.output
    assert "full_ft:" in r.output
    assert "What would change the verdict" in r.output


def test_help_is_complete_for_every_command():
    for args in ([], ["explain"], ["estimate"], ["validate"], ["schema"]):
        r = run(*args, "--help")
        assert r.exit_code == 0 and "Usage:" in r.output
    assert "Exit codes:" in run("--help").output


def test_decide_never_imports_torch_transformers_or_peft():
    code = ("import sys; from click.testing import CliRunner; from ruleengine.cli import main; "
            "r = CliRunner().invoke(main, ['--model-params','7B','--gpu','a100-80gb','--examples','5k','--no-audit',"
            "'--explain']); assert r.exit_code == 0, r.output; "
            "[CliRunner().invoke(main, [c, '--help']) for c in ('plan', 'train', 'eval', 'merge', 'combine')]; "
            "heavy = [m for m in ('torch','transformers','peft','bitsandbytes','accelerate','matplotlib','datasets',"
            "'trl','pyarrow','tensorboard','wandb','mlflow') if m in sys.modules]; print(heavy); "
            "sys.exit(1 if heavy else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr


def test_real_subprocess_decide_and_exit_codes(tmp_path):
    env = {**os.environ, "FINETUNE_POLICY_AUDIT_DB": str(tmp_path / "a.sqlite3")}
    exe = Path(sys.executable).with_name("decide")
    cmd = [str(exe)] if exe.exists() else DECIDE
    p = subprocess.run(cmd + BASE + ["--format", "json"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["verdict"]["method"] == "lora"
    p = subprocess.run(cmd + ["--model-params", "7B", "--gpu", "nope", "--examples", "5"], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 2 and "unknown GPU `nope`" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("args", [["--gpus", "abc"], ["--shift", "huge"], ["--set", "novalue"], ["--task", "x"]])
def test_bad_flags_exit_2(args):
    r = CliRunner().invoke(main, ["--model-params", "7B", "--gpu", "a100-80gb", "--examples", "5", "--no-audit", *args])
    assert r.exit_code == 2, r.output


def test_the_readme_facts_example_decides_estimates_and_explains():
    facts = str(REPO / "examples" / "domain-qa-13b.yaml")
    r = run("--facts", facts, "--no-audit", "--format", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["verdict"]["method"] == "lora" and "unmerged-adapter-latency" in {w["code"] for w in data["warnings"]}
    assert run("estimate", "--facts", facts).exit_code == 0
    assert run("explain", "--facts", facts, "--no-audit").exit_code == 0
