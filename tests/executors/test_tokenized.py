"""Tokenization cache, packing without attention across examples, padding-free batches."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.train


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_POLICY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def data_plan(tiny_model, examples, packing=False, files=("alpaca.jsonl",)):
    from executors.chat_template import choose_template
    from executors.modeling import load_tokenizer

    tok = load_tokenizer(tiny_model)
    return tok, {"files": [{"path": str(examples / f)} for f in files], "declared_format": None, "split": None,
                 "chat_template": choose_template("auto", None, ["alpaca"]).to_dict(), "eval_fraction": 0.1,
                 "seed": 0, "seq_len": 128, "packing": packing, "multitask": None}


def test_the_cache_is_filled_once_and_read_back_identically(tiny_model, examples, cache):
    from executors.tokenized import build_run_data

    tok, plan = data_plan(tiny_model, examples)
    first = build_run_data(plan, tok, tiny_model)
    assert [s["cache"] for s in first.stats["tokenization"]] == ["miss"]
    assert len(list((cache / "tokenized").iterdir())) == 1
    second = build_run_data(plan, tok, tiny_model)
    assert [s["cache"] for s in second.stats["tokenization"]] == ["hit"]
    assert second.train["input_ids"] == first.train["input_ids"] and second.train["labels"] == first.train["labels"]
    # another seq_len is another entry
    build_run_data({**plan, "seq_len": 64}, tok, tiny_model)
    assert len(list((cache / "tokenized").iterdir())) == 2


def test_a_changed_source_is_tokenized_again(tiny_model, examples, cache, tmp_path):
    from executors.tokenized import build_run_data

    data = tmp_path / "d.jsonl"
    data.write_text((examples / "alpaca.jsonl").read_text())
    tok, plan = data_plan(tiny_model, examples)
    plan["files"] = [{"path": str(data)}]
    assert build_run_data(plan, tok, tiny_model).stats["tokenization"][0]["cache"] == "miss"
    with data.open("a") as fh:
        fh.write('{"instruction": "What sound does a seal make?", "output": "The seal says arf."}\n')
    again = build_run_data(plan, tok, tiny_model)
    assert again.stats["tokenization"][0]["cache"] == "miss"
    assert again.stats["train_examples"] + again.stats["eval_examples"] == 141


def _logits(model, **inputs):
    import torch

    with torch.no_grad():
        return model(**inputs).logits


def test_packed_examples_do_not_attend_to_each_other(tiny_model, examples, cache):
    """The logits of every example inside a packed, padding-free row equal its logits when it runs alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from executors.tokenized import CountingCollator, build_run_data

    tok, plan = data_plan(tiny_model, examples, packing=True)
    data = build_run_data(plan, tok, tiny_model)
    assert data.stats["train_sequences"] < data.stats["train_examples"]  # several examples per row
    row = next(r for r in data.train if len(r["seq_lengths"]) >= 2)
    batch = CountingCollator(tok.pad_token_id, padding_free=True)([row])
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    # transformers derives the block-diagonal mask from position_ids only without a KV cache: the runner
    # turns the model's use_cache off for training and evaluation
    packed = _logits(model, input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    start = 0
    for n in row["seq_lengths"]:
        ids = torch.tensor([row["input_ids"][start:start + n]])
        alone = _logits(model, input_ids=ids)
        torch.testing.assert_close(packed[:, start:start + n], alone, atol=1e-5, rtol=1e-5)
        start += n
    # without the position ids, or with a cache, the same row attends across examples: the logits differ
    crossed = _logits(model, input_ids=batch["input_ids"], use_cache=False)
    assert not torch.allclose(crossed, packed, atol=1e-3)
    cached = _logits(model, input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True)
    assert not torch.allclose(cached, packed, atol=1e-3)


def test_padding_free_batches_give_the_padded_loss_without_padding(tiny_model, examples, cache):
    import torch
    from transformers import AutoModelForCausalLM

    from executors.tokenized import CountingCollator, build_run_data

    tok, plan = data_plan(tiny_model, examples)
    data = build_run_data(plan, tok, tiny_model)
    features = [data.train[i] for i in range(8)]
    free, padded = CountingCollator(tok.pad_token_id, True), CountingCollator(tok.pad_token_id, False)
    b_free, b_pad = free(features), padded(features)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        loss_free = model(**b_free, use_cache=False).loss
        loss_pad = model(**b_pad, use_cache=False).loss
    torch.testing.assert_close(loss_free, loss_pad, atol=1e-5, rtol=1e-5)
    lengths = [len(f["input_ids"]) for f in features]
    assert free.stats()["padding_fraction"] == 0.0 and free.stats()["tokens"] == sum(lengths)
    assert padded.stats()["padding_fraction"] == pytest.approx(1 - sum(lengths) / (8 * max(lengths)), abs=1e-6)
    assert free.stats()["padding_fraction_if_padded"] == padded.stats()["padding_fraction"]


def test_truncation_leaving_nothing_to_train_is_refused(tiny_model, examples, cache):
    from executors.errors import DataError
    from executors.tokenized import build_run_data

    tok, plan = data_plan(tiny_model, examples)
    with pytest.raises(DataError, match="data-nothing-to-train"):
        build_run_data({**plan, "seq_len": 6}, tok, tiny_model)
