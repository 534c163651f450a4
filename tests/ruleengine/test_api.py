"""The decision API: the memo, batches, summaries and recording, as a caller of ruleengine.api sees them."""

from __future__ import annotations

import json
import random

import pytest

from ruleengine import api
from ruleengine.diagnostics import DiagnosticError
from ruleengine.exitcodes import ExitCode
from ruleengine.facts import FactsError
from ruleengine.pipeline import summary_of
from ruleengine.policy import load_policy

FACTS = {"model": {"params": "13B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": "50k"},
         "task": {"use_case": "domain_qa"}}


def _content(decision) -> dict:
    data = decision.to_dict()
    for key in ("decision_id", "created_at", "metrics"):
        data.pop(key)
    return data


def test_a_memo_hit_is_a_new_decision_with_the_same_content():
    engine = api.PolicyEngine(load_policy(None))
    first = engine.decide(FACTS)
    second = engine.decide(json.loads(json.dumps(FACTS)))  # equal facts, another object
    assert (engine.memo_hits, engine.memo_misses) == (1, 1)
    assert second.decision_id != first.decision_id and second.metrics["memo"] is True
    assert _content(second) == _content(first)


def test_the_memo_keys_on_every_given_fact_and_on_the_policy():
    engine = api.PolicyEngine(load_policy(None))
    engine.decide(FACTS)
    engine.decide({**FACTS, "model": {"params": "13B", "name": "mine"}})
    assert engine.memo_hits == 0
    other = api.PolicyEngine(load_policy(None))  # a second compiled policy: its own memo
    other.decide(FACTS)
    assert other.memo_hits == 0


def test_a_model_config_file_bypasses_the_memo(tmp_path):
    config = tmp_path / "config.json"
    base = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
            "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000}
    config.write_text(json.dumps(base))
    engine = api.PolicyEngine(load_policy(None))
    facts = {**FACTS, "model": {"config": str(config)}}
    small = engine.decide(facts)
    config.write_text(json.dumps({**base, "num_hidden_layers": 44}))
    large = engine.decide(facts)
    assert engine.memo_hits == 0
    assert large.derived["model.num_layers"] == 44 and small.derived["model.num_layers"] == 22


def test_decide_many_keeps_the_order_and_passes_bad_inputs_through():
    engine = api.PolicyEngine(load_policy(None))
    bad = {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gx"}, "data": {"examples": 10}}
    parsed_error = FactsError([])
    items = list(engine.decide_many([FACTS, bad, parsed_error, FACTS]))
    assert [i.index for i in items] == [0, 1, 2, 3]
    assert items[0].decision is not None and items[3].decision is not None
    assert isinstance(items[1].error, FactsError) and items[1].error.diagnostics[0].code == "facts-unknown-gpu"
    assert items[2].error is parsed_error


def test_summaries_are_the_summary_of_the_full_decision():
    """The lean summary path decides exactly as the full pipeline, infeasible decisions included."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from facts_gen import infeasible, varied

    policy = load_policy(None)
    engine = api.PolicyEngine(policy, memo_size=0)
    facts = varied(policy, 60, seed=3) + infeasible(policy, 5, seed=4)
    random.Random(0).shuffle(facts)
    for given in facts:
        full = summary_of(engine.decide(given))
        lean = engine.summarize(given)
        assert {**lean, "decision_id": None} == {**full, "decision_id": None}, given


def test_record_failure_is_an_audit_write_error(tmp_path):
    engine = api.open_policy(None)
    decision = engine.decide(FACTS)
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(api.AuditWriteError) as caught:
        api.record(decision, engine, audit_db=str(blocked / "audit.sqlite3"))
    assert caught.value.exit_code == ExitCode.AUDIT_WRITE
    assert isinstance(caught.value, DiagnosticError) and "--no-audit" in caught.value.diagnostics[0].help


def test_open_policy_compiles_once_until_the_files_change(tmp_path):
    import shutil

    from ruleengine.paths import default_policy

    copy = tmp_path / "policy"
    shutil.copytree(default_policy(), copy)
    first, again = api.open_policy(copy), api.open_policy(copy)
    assert first is again
    rules = copy / "rules.yaml"
    rules.write_text(rules.read_text() + "\n# a comment changes the content hash\n")
    changed = api.open_policy(copy)
    assert changed is not first and changed.sha256 != first.sha256
