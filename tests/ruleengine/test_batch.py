"""`decide batch`: order kept, bad lines located and skipped, all-or-nothing output, workers agree."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ruleengine.cli import main

GOOD = {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 5000},
        "task": {"use_case": "chat"}}
HUGE = {"model": {"params": "405B"}, "hardware": {"gpu": "t4-16gb"}, "data": {"examples": 5000},
        "task": {"use_case": "chat"}}


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_batch_keeps_order_and_reports_bad_lines(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([json.dumps(GOOD), "{not json", "", json.dumps([1, 2]), json.dumps(HUGE),
                              json.dumps({**GOOD, "hardware": {"gpu": "a100-80gx"}}), "NaN",
                              '{"model": {"params": "7B"}, "data": {"examples": Infinity}}']) + "\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["batch", str(src), "-o", str(out), "--no-audit", "--workers", "1"])
    assert result.exit_code == 2, result.output
    rows = _lines(out)
    assert [r["line"] for r in rows] == [1, 2, 4, 5, 6, 7, 8]
    assert [r["ok"] for r in rows] == [True, False, False, True, False, False, False]
    assert rows[0]["verdict"]["method"] and rows[3]["feasible"] is False and rows[3]["suggestions"]
    assert rows[1]["diagnostics"][0]["code"] == "batch-bad-json"
    assert rows[1]["diagnostics"][0]["location"]["line"] == 2
    assert rows[2]["diagnostics"][0]["code"] == "batch-not-facts"
    assert "did you mean" in rows[4]["diagnostics"][0]["help"]
    assert rows[5]["diagnostics"][0]["code"] == rows[6]["diagnostics"][0]["code"] == "batch-bad-json"
    assert "batch: 7 inputs, 1 decided, 1 infeasible, 5 bad" in result.output


def test_yaml_list_batch_locates_fields_by_their_own_lines(tmp_path):
    src = tmp_path / "in.yaml"
    src.write_text("- model: {params: 7B}\n  hardware: {gpu: a100-80gb}\n  data: {examples: 5000}\n"
                   "  task: {use_case: chat}\n- model: {params: 7B}\n  hardware: {gpu: a100-80gx}\n"
                   "  data: {examples: 5000}\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["batch", str(src), "-o", str(out), "--no-audit", "--workers", "1"])
    assert result.exit_code == 2
    rows = _lines(out)
    assert rows[0]["ok"] and rows[1]["line"] == 5
    assert rows[1]["diagnostics"][0]["location"]["line"] == 6  # the gpu field itself


def test_workers_give_the_same_answers_as_one_process(tmp_path):
    facts = [GOOD, HUGE, {**GOOD, "data": {"examples": 2_000_000}}, GOOD, {**GOOD, "task": {"use_case": "code_generation"}}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(f) + "\n" for f in facts * 40))
    runs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}.jsonl"
        result = CliRunner().invoke(main, ["batch", str(src), "-o", str(out), "--no-audit", "--workers", workers])
        assert result.exit_code == 0, result.output
        runs[workers] = [{k: v for k, v in r.items() if k != "decision_id"} for r in _lines(out)]
    assert runs["1"] == runs["2"] and len(runs["1"]) == 200
    assert [r["line"] for r in runs["2"]] == list(range(1, 201))


def test_full_detail_writes_whole_decisions_and_audits_them(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(GOOD) + "\n" + json.dumps(HUGE) + "\n")
    out, db = tmp_path / "out.jsonl", tmp_path / "audit.sqlite3"
    result = CliRunner().invoke(main, ["batch", str(src), "-o", str(out), "--detail", "full", "--audit-db", str(db)])
    assert result.exit_code == 0, result.output
    rows = _lines(out)
    assert rows[0]["decision"]["estimates"] and rows[1]["decision"]["feasible"] is False
    listed = CliRunner().invoke(main, ["audit", "list", "--db", str(db), "--format", "json"])
    ids = {r["id"] for r in json.loads(listed.output)}
    assert ids == {rows[0]["decision"]["decision_id"], rows[1]["decision"]["decision_id"]}


def test_a_failed_batch_leaves_no_output(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(GOOD) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text("previous results\n")
    result = CliRunner().invoke(main, ["batch", str(src), "-o", str(out), "--no-audit", "--policy",
                                       str(tmp_path / "missing-policy")])
    assert result.exit_code == 3
    assert out.read_text() == "previous results\n" and not (tmp_path / "out.jsonl.partial").exists()
