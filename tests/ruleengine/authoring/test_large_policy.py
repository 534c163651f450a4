"""Issue 8: a generated 1,000-rule policy (select and advise rules with overlapping conditions over the
vocabulary) passes `decide validate`, `decide test` and `decide check` through the CLI.

Its cases expect what the independent reference evaluator (tests/ruleengine/reference_evaluator.py,
written from the language document) decides, so `decide test` checks durable-rules and the compiled
conditions against it at 1,000 rules. bench/bench_check.py reports the timings.
"""

from __future__ import annotations

import importlib.util
import random
import sys
import time

import pytest
from click.testing import CliRunner

from ruleengine.cli import main
from ruleengine.policy import load_policy

from .conftest import REPO


def _policy_gen():
    spec = importlib.util.spec_from_file_location("policy_gen", REPO / "bench" / "policy_gen.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["policy_gen"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_1000_rule_policy_validates_tests_and_checks(tmp_path, reference_evaluator):
    gen = _policy_gen()
    folder = gen.write(tmp_path / "large", rules=1000, seed=7)
    policy = load_policy(str(folder))
    assert len(policy.rules) == 1000 and len(policy.select_rules) == 600
    rng = random.Random(7)
    expectations = {}
    for i in range(30):
        facts = gen.random_facts(rng)
        ref = reference_evaluator.evaluate_reference(policy, facts)
        expect = {"feasible": ref.feasible, "rule": ref.chosen_rule}
        if ref.feasible:
            expect["method"] = ref.method
        expectations[f"generated case {i}"] = (facts, expect)
    gen.write(folder, rules=1000, seed=7, expectations=expectations)
    run = CliRunner().invoke
    seconds = {}
    for command in (["validate"], ["test", "--min-coverage", "0"], ["check"]):
        t0 = time.perf_counter()
        result = run(main, [command[0], str(folder), *command[1:]], catch_exceptions=False)
        seconds[command[0]] = time.perf_counter() - t0
        assert result.exit_code == 0, (command, result.output[-3000:])
        assert "Traceback" not in result.output
    assert "30 passed, 0 failed" in run(main, ["test", str(folder)], catch_exceptions=False).output
    print(f"1,000-rule policy: {', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())}")
