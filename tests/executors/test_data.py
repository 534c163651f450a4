"""Data loading and validation, loss masks, multi-task temperature mixing, packing."""

from __future__ import annotations

import json

import pytest

from executors.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    pack,
    scan_file,
    scan_files,
    segments,
    split_and_mix,
    temperature_weights,
)


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_bundled_examples_are_valid_and_detected(examples):
    formats = {p.name: scan_file(str(p)).format for p in examples.glob("*.jsonl")}
    assert formats == {"alpaca.jsonl": "alpaca", "chat.jsonl": "chat", "text.jsonl": "text",
                       "multitask.jsonl": "alpaca"}
    mt = scan_file(str(examples / "multitask.jsonl"))
    assert mt.tasks == {"sounds": 80, "numbers": 67, "opposites": 24}
    for p in examples.glob("*.jsonl"):
        assert sum(1 for _ in p.open()) <= 300


def test_errors_name_file_line_and_problem(tmp_path):
    path = write(tmp_path / "bad.jsonl", [
        '{"instruction": "Say hi", "output": "hi"}',
        '{"instruction": "Say hi" "output": "hi"}',
        '{"instruction": "Say hi"}',
        '{"instruction": "Say hi", "output": "   "}',
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}',
        '[1, 2]',
    ])
    with pytest.raises(DataError) as err:
        scan_file(path)
    assert str(err.value) == "\n".join([
        f"{path}:2:26: error[data-bad-json]: invalid JSON: Expecting ',' delimiter",
        "  help: each line must be one JSON object",
        f"{path}:3:1: error[data-missing-field]: missing field `output` (or `response`) (alpaca format)",
        f"{path}:4:1: error[data-empty-field]: `output` is empty or not a string",
        f"{path}:5:1: error[data-mixed-formats]: mixed formats: this line is chat but the file is alpaca (from line 1)",
        "  help: put each format in its own file and pass several --data",
        f"{path}:6:1: error[data-not-object]: expected a JSON object, got list",
        "  help: each line must be one JSON object",
        "5 error(s), 0 warning(s)",
    ])


@pytest.mark.parametrize("line,code", [
    ('{"text": ""}', "data-empty-field"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "data-no-response"),
    ('{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}', "data-bad-role"),
    ('{"messages": []}', "data-bad-type"),
    ('{"prompt": "hi", "completion": "x"}', "data-unknown-format"),
    ('{"text": "a", "instruction": "b", "output": "c"}', "data-unknown-format"),
    ('{"text": "a", "task": ""}', "data-bad-task"),
])
def test_record_problems(tmp_path, line, code):
    path = write(tmp_path / "d.jsonl", [line])
    with pytest.raises(DataError) as err:
        scan_file(path)
    assert [d.code for d in err.value.diagnostics] == [code]
    assert err.value.diagnostics[0].location.line == 1


def test_declared_format_is_enforced(tmp_path):
    path = write(tmp_path / "d.jsonl", ['{"text": "plain"}'])
    with pytest.raises(DataError, match=r"d.jsonl:1:1: error\[data-missing-field\]: missing field `instruction`"):
        scan_file(path, "alpaca")
    assert scan_file(path, "text").format == "text"


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="data-empty-file"):
        scan_file(write(tmp_path / "e.jsonl", ["", "  "]))
    with pytest.raises(DataError, match="does not exist"):
        scan_file(str(tmp_path / "nope.jsonl"))


def test_errors_of_several_files_are_reported_together(tmp_path):
    a = write(tmp_path / "a.jsonl", ['{"text": ""}'])
    b = write(tmp_path / "b.jsonl", ["{oops"])
    with pytest.raises(DataError) as err:
        scan_files([a, b])
    assert [d.location.file for d in err.value.diagnostics] == [a, b]


def test_several_files_are_tasks_unless_records_name_one(tmp_path):
    a = write(tmp_path / "qa.jsonl", ['{"text": "x"}', '{"text": "y"}'])
    b = write(tmp_path / "mix.jsonl", ['{"text": "x", "task": "t1"}', '{"text": "y"}'])
    scans = scan_files([a, b])
    assert scans[0].tasks == {"qa": 2}
    assert scans[1].tasks == {"t1": 1, "mix": 1}
    assert scan_files([a])[0].tasks == {"default": 2}


def test_temperature_weights():
    sizes = {"big": 900, "small": 100}
    assert temperature_weights(sizes, 1.0) == pytest.approx({"big": 0.9, "small": 0.1})
    w = temperature_weights(sizes, 0.5)
    assert w["big"] == pytest.approx(30 / 40) and w["small"] == pytest.approx(10 / 40)
    assert temperature_weights(sizes, 1.0, cap=100) == pytest.approx({"big": 0.5, "small": 0.5})
    with pytest.raises(ValueError):
        temperature_weights(sizes, 0)


def _examples(counts):
    return [Example("text", {"text": f"{t} {i}"}, t, f"{t}:{i}") for t, n in counts.items() for i in range(n)]


def test_split_and_mix_is_deterministic_and_reports_the_mixture():
    exs = _examples({"a": 200, "b": 20})
    s1 = split_and_mix(exs, 0.1, seed=3, temperature=0.5)
    s2 = split_and_mix(exs, 0.1, seed=3, temperature=0.5)
    assert [e.source for e in s1.train] == [e.source for e in s2.train]
    rep = s1.report["tasks"]
    assert rep["a"]["eval"] == 20 and rep["b"]["eval"] == 2
    assert rep["a"]["train"] + rep["b"]["train"] == len(s1.train) == rep["a"]["samples"] + rep["b"]["samples"]
    # T = 0.5 up-samples the small task: sqrt(18) / (sqrt(180) + sqrt(18)) of the 198 samples
    assert rep["b"]["weight"] == pytest.approx(18 ** 0.5 / (180 ** 0.5 + 18 ** 0.5), abs=1e-6)
    assert rep["b"]["samples"] == round(198 * rep["b"]["weight"])
    assert sum(1 for e in s1.train if e.task == "b") == rep["b"]["samples"]
    assert not {e.source for e in s1.eval} & {e.source for e in s1.train}


def test_single_task_split_keeps_everything():
    s = split_and_mix(_examples({"only": 50}), 0.2, seed=0)
    assert len(s.train) == 40 and len(s.eval) == 10 and s.report["multitask"] is False
    assert split_and_mix(_examples({"only": 50}), 0.0, seed=0).eval == []


def test_alpaca_and_chat_segments_mark_only_responses():
    alpaca = Example("alpaca", {"instruction": "Spell 7", "input": "", "output": "seven"}, "t", "f:1")
    segs = segments(alpaca)
    assert segs == [("### Instruction:\nSpell 7\n\n### Response:\n", False, False), ("seven", True, True)]
    chat = Example("chat", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                         {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                                         {"role": "assistant", "content": "a2"}]}, "t", "f:1")
    trained = [text for text, train, _eos in segments(chat) if train]
    assert trained == ["a1", "a2"]


def test_pack_never_splits_examples():
    items = [{"input_ids": [1] * n, "labels": [IGNORE_INDEX] + [1] * (n - 1)} for n in (5, 4, 3, 6, 2)]
    packed = pack(items, 9)
    assert [len(p["input_ids"]) for p in packed] == [9, 9, 2]
    assert sum(len(p["labels"]) for p in packed) == 20


@pytest.mark.train
def test_tokenized_labels_cover_only_the_response(tiny_model):
    from executors.data import tokenize_example
    from executors.modeling import load_tokenizer

    tok = load_tokenizer(tiny_model)
    ex = Example("alpaca", {"instruction": "What sound does a cow make?", "output": "The cow says moo."}, "t", "f:1")
    item = tokenize_example(ex, tok, 128)
    trained = [i for i, label in zip(item["input_ids"], item["labels"], strict=True) if label != IGNORE_INDEX]
    assert tok.decode(trained) == "The cow says moo." + tok.eos_token
    assert item["input_ids"][0] == tok.bos_token_id and item["labels"][0] == IGNORE_INDEX
    # truncated inside the prompt: nothing to learn, the example is dropped
    assert tokenize_example(ex, tok, 4) is None
    text = Example("text", {"text": "The dog says woof."}, "t", "f:1")
    assert all(label != IGNORE_INDEX for label in tokenize_example(text, tok, 128)["labels"][1:])


@pytest.mark.train
def test_collator_pads_right_and_masks_padding(tiny_model):
    from executors.data import PadCollator

    batch = PadCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                         {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_examples_job_yaml_is_valid_facts(examples):
    from ruleengine.facts import load_facts_file

    facts = load_facts_file(str(examples.parent / "job.yaml"))
    assert facts.data["hardware"]["gpu"] and facts.data["task"]["use_case"]
    json.dumps(facts.data)
