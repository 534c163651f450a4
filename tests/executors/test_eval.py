"""`decide eval RUN`: task perplexity before/after, the forgetting check against the policy, format adherence."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def chat_run(tiny_model, tmp_path_factory, trained, verdict, examples):
    out = tmp_path_factory.mktemp("eval") / "run"
    data = [str(examples / "chat.jsonl"), str(examples / "tools.jsonl")]
    return trained(verdict("lora", training={"learning_rate": 2e-2, "seq_len": 512}), tiny_model, data, out,
                   max_steps=12, eval_fraction=0.15)


def test_eval_reports_perplexity_forgetting_and_format(chat_run):
    from ruleengine.cli import main

    run = chat_run.output_dir
    result = CliRunner().invoke(main, ["eval", run, "--generate", "24", "--max-new-tokens", "24"])
    assert result.exit_code == 0, result.output
    report = json.loads((Path(run) / "eval.json").read_text())
    task = report["task"]
    assert task["examples"] > 0 and task["after"]["perplexity"] < task["before"]["perplexity"]
    assert task["after"]["perplexity"] == pytest.approx(math.exp(task["after"]["loss"]))
    f = report["forgetting"]
    assert f["threshold"] == 0.10 and f["threshold_source"]["threshold"] == "forgetting_ppl_increase"
    assert f["policy_matches_run"] is None  # the run's plan was made from a hand-written verdict
    assert f["ppl_increase"] == pytest.approx(f["after"]["perplexity"] / f["before"]["perplexity"] - 1)
    assert f["flagged"] == (f["ppl_increase"] > 0.10) and f["samples"] == 24
    fmt = report["format"]
    # the held-out split: 18 chat and 6 tool-calling conversations (answered at their tool call)
    assert fmt["samples"] == 24 and 0 <= fmt["stopped_rate"] <= 1 and len(fmt["examples"]) == 3
    assert fmt["tool_calls"]["expected"] == 6 and 0 <= fmt["tool_calls"]["valid"] <= 6 and fmt["json"]["expected"] == 0
    assert "task perplexity" in result.output and "general-text perplexity" in result.output
    manifest = json.loads((Path(run) / "run-manifest.json").read_text())
    assert manifest["evaluation"]["task"] == task and manifest["artifacts"]["evaluation"] == "eval.json"


def test_forgetting_is_flagged_with_the_policys_threshold_and_exit_0(chat_run, tmp_path, examples):
    from ruleengine.cli import main

    policy = tmp_path / "policy"
    shutil.copytree(examples.parent.parent / "policies" / "default", policy)
    thresholds = (policy / "thresholds.yaml").read_text()
    assert "forgetting_ppl_increase:\n    value: 0.10" in thresholds
    (policy / "thresholds.yaml").write_text(thresholds.replace("forgetting_ppl_increase:\n    value: 0.10",
                                                               "forgetting_ppl_increase:\n    value: 0"))
    # text unlike anything the run trained on: fine-tuning moves the model away from it
    general = tmp_path / "general.jsonl"
    rng = random.Random(0)
    general.write_text("".join(json.dumps({"text": " ".join(f"{rng.randrange(10**6)}#{rng.randrange(97)}%"
                                                            for _ in range(40))}) + "\n" for _ in range(12)))
    result = CliRunner().invoke(main, ["eval", chat_run.output_dir, "--policy", str(policy), "--generate", "0",
                                       "--general", str(general)])
    assert result.exit_code == 0, result.output
    assert "FORGETTING FLAGGED" in result.output and "exit 0" in result.output
    saved = json.loads((Path(chat_run.output_dir) / "eval.json").read_text())
    assert saved["forgetting"]["flagged"] is True and saved["forgetting"]["threshold"] == 0
    assert saved["format"] is None


def test_eval_on_given_data_and_json_answers(chat_run, tmp_path, tiny_model):
    from ruleengine.cli import main

    data = tmp_path / "json.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Give {i} as JSON"},
                                                     {"role": "assistant", "content": json.dumps({"n": i})}]}) + "\n"
                            for i in range(6)))
    result = CliRunner().invoke(main, ["eval", chat_run.output_dir, "--data", str(data), "--format", "json",
                                               "--generate", "2", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["task"]["examples"] == 6 and report["task"]["data"] == f"--data {data}"


def test_eval_refuses_what_is_not_a_finished_run(tmp_path):
    from ruleengine.cli import main

    result = CliRunner().invoke(main, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "run-not-found" in result.output
