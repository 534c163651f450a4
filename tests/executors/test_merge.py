"""`decide merge RUN`: the merged model reproduces the trained one, 4-bit adapters merge into the dequantized base."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.train


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float()


def probe(tiny_model):
    from executors.modeling import load_tokenizer

    tok = load_tokenizer(tiny_model)
    return tok("<s>### Instruction:\nWhat sound does a cow make?\n\n### Response:\n",
               add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("method,options", [("qlora", {}), ("dora", {}), ("adalora", {}),
                                            ("ia3", {"load_in_4bit": True}), ("dora", {"load_in_4bit": True})])
def test_merge_reproduces_the_trained_model(method, options, tiny_model, verdict, examples, tmp_path, trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from executors import get_executor
    from ruleengine.cli import main

    run = tmp_path / "run"
    result = trained(verdict(method), tiny_model, [str(examples / "alpaca.jsonl")], run, **options)
    out = CliRunner().invoke(main, ["merge", str(run)])
    assert out.exit_code == 0, out.output
    assert "equivalence check: max |logit difference|" in out.output and ": ok" in out.output
    merged_dir = run / "merged"
    report = json.loads((merged_dir / "merge.json").read_text())
    quantized = result.plan["quantization"] is not None
    assert report["base"] == ("dequantized" if quantized else "original") and report["check"]["passed"] is True
    # independently of the report: the saved model, loaded with plain transformers, gives the trained logits
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    trained = get_executor(method).load_trained(str(run), result.plan)
    ids = probe(tiny_model)
    diff = float((logits(merged, ids) - logits(trained, ids)).abs().max())
    assert diff < 1e-4, diff
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())
    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    assert tok.chat_template == result.plan["data"]["chat_template"]["text"]
    manifest = json.loads((run / "run-manifest.json").read_text())
    assert manifest["merges"][-1]["check"]["max_abs_logit_diff"] == report["check"]["max_abs_logit_diff"]
    assert manifest["artifacts"]["merged"] == "merged"


def test_qlora_merged_into_the_original_weights_differs_by_the_quantization_error(tiny_model, verdict, examples,
                                                                                  tmp_path, trained):
    from ruleengine.cli import main

    run = tmp_path / "run"
    trained(verdict("qlora"), tiny_model, [str(examples / "alpaca.jsonl")], run)
    deq = CliRunner().invoke(main, ["merge", str(run)])
    orig = CliRunner().invoke(main, ["merge", str(run), "--base", "original", "-o", str(tmp_path / "orig")])
    assert deq.exit_code == 0 and orig.exit_code == 0, orig.output
    d = json.loads((run / "merged" / "merge.json").read_text())["check"]
    o = json.loads((tmp_path / "orig" / "merge.json").read_text())["check"]
    assert d["max_abs_logit_diff"] < 1e-4 < o["max_abs_logit_diff"]
    assert o["passed"] is None and "quantization error is expected" in orig.output


def test_merge_refusals_and_a_failed_check(tiny_model, verdict, examples, tmp_path, monkeypatch, trained):
    from ruleengine.cli import main

    data = [str(examples / "alpaca.jsonl")]
    prompt = tmp_path / "prompt"
    trained(verdict("prompt_tuning"), tiny_model, data, prompt, max_steps=1)
    r = CliRunner().invoke(main, ["merge", str(prompt)])
    assert r.exit_code == 2 and "error[merge-unsupported]" in r.output
    full = tmp_path / "full"
    trained(verdict("full_ft"), tiny_model, data, full, max_steps=1)
    r = CliRunner().invoke(main, ["merge", str(full)])
    assert r.exit_code == 2 and "error[merge-nothing]" in r.output
    r = CliRunner().invoke(main, ["merge", str(tmp_path)])
    assert r.exit_code == 2 and "error[run-not-found]" in r.output
    lora = tmp_path / "lora"
    trained(verdict("lora"), tiny_model, data, lora, max_steps=2)
    import executors.merge

    with monkeypatch.context() as m:  # a merge that does not reproduce the trained model is not kept
        m.setattr(executors.merge, "max_logit_difference", lambda a, b, inputs: 0.5)
        r = CliRunner().invoke(main, ["merge", str(lora)])
    assert r.exit_code == 5 and "error[merge-check-failed]" in r.output and "0.5" in r.output
    assert not (lora / "merged").exists() and not list(lora.glob("merged.tmp*"))
    assert CliRunner().invoke(main, ["merge", str(lora)]).exit_code == 0
    again = CliRunner().invoke(main, ["merge", str(lora)])
    assert again.exit_code == 2 and "merge-output-exists" in again.output
    assert CliRunner().invoke(main, ["merge", str(lora), "--overwrite"]).exit_code == 0
