"""Data loading and validation, loss masks, multi-task temperature mixing, packing."""

from __future__ import annotations

import json

import pytest

from executors.data import (
    DataError,
    Example,
    scan_file,
    scan_files,
    split_and_mix,
    temperature_weights,
)


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_bundled_examples_are_valid_and_detected(examples):
    formats = {p.name: scan_file(str(p)).format for p in examples.glob("*.jsonl")}
    assert formats == {"alpaca.jsonl": "alpaca", "chat.jsonl": "chat", "text.jsonl": "text",
                       "multitask.jsonl": "alpaca", "tools.jsonl": "chat"}
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
    ('{"question": "hi", "answer": "x"}', "data-unknown-format"),
    ('{"prompt": "hi"}', "data-missing-field"),
    ('{"prompt": "hi", "completion": ""}', "data-empty-field"),
    ('{"prompt": [{"role": "user", "content": "q"}], "completion": "a"}', "data-bad-type"),
    ('{"conversations": [{"from": "human", "value": "hi"}]}', "data-no-response"),
    ('{"conversations": [{"from": "alien", "value": "hi"}, {"from": "gpt", "value": "x"}]}', "data-bad-role"),
    ('{"conversations": [{"from": "function_call", "value": "{oops"}, {"from": "gpt", "value": "x"}]}',
     "data-bad-tool-call"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": '
     '{"name": "f", "arguments": "{bad"}}]}]}', "data-bad-tool-call"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {}}]}]}',
     "data-bad-tool-call"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}',
     "data-no-response"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": "x"}',
     "data-bad-type"),
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


def test_examples_job_yaml_is_valid_facts(examples):
    from ruleengine.facts import load_facts_file

    facts = load_facts_file(str(examples.parent / "job.yaml"))
    assert facts.data["hardware"]["gpu"] and facts.data["task"]["use_case"]
    json.dumps(facts.data)


def test_every_record_format_is_detected(tmp_path):
    cases = {
        "alpaca": '{"instruction": "Say hi", "output": "hi"}',
        "chat": '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"type": '
                '"function", "function": {"name": "f", "arguments": {"x": 1}}}]}, {"role": "tool", "content": "1"}, '
                '{"role": "assistant", "content": "one"}], "tools": [{"type": "function", "function": {"name": "f"}}]}',
        "sharegpt": '{"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": '
                    '"{\\"name\\": \\"f\\", \\"arguments\\": {}}"}, {"from": "observation", "value": "1"}, '
                    '{"from": "gpt", "value": "one"}]}',
        "prompt_completion": '{"prompt": "2+2=", "completion": "4"}',
        "text": '{"text": "plain"}',
    }
    for fmt, line in cases.items():
        assert scan_file(write(tmp_path / f"{fmt}.jsonl", [line])).format == fmt
    conversational = write(tmp_path / "pc.jsonl", ['{"prompt": [{"role": "user", "content": "q"}], '
                                                   '"completion": [{"role": "assistant", "content": "a"}]}'])
    assert scan_file(conversational).format == "prompt_completion"
    assert scan_file(write(tmp_path / "m.jsonl", ['{"messages": [{"role": "user", "content": "q"}, '
                                                  '{"role": "assistant", "content": "a"}]}']), "messages").format == "chat"


def test_a_json_array_file_is_located_by_line_and_column(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('[\n  {"text": "a"},\n  {"text": "b"}\n]\n')
    assert len(scan_file(str(good)).examples) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"text": "a"},\n  {"text": ""},\n  {"text": "c" "x"}\n]\n')
    with pytest.raises(DataError) as err:
        scan_file(str(bad))
    assert [(d.code, d.location.line, d.location.col) for d in err.value.diagnostics] == [
        ("data-empty-field", 3, 3), ("data-bad-json", 4, 16)]
    lines = tmp_path / "lines.json"  # JSON lines named .json
    lines.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert len(scan_file(str(lines)).examples) == 2


def test_unknown_extension_and_missing_sources(tmp_path):
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match="data-unknown-extension"):
        scan_file(str(odd))
    with pytest.raises(DataError, match="data-missing-file"):
        scan_file(str(tmp_path / "nope.csv"))
