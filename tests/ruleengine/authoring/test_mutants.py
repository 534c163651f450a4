"""Mutation adequacy: mutants of every kind, killed by the right cases, equivalents found on the grid,
suggestions that kill what survives, and the default policy at its declared gates."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ruleengine.authoring.grid import GridEvaluator, build_grid
from ruleengine.authoring.mutants import generate_mutants, light_decision, run_mutants
from ruleengine.authoring.testing import Case, load_cases, load_gates, run_case, test_files
from ruleengine.cli import main
from ruleengine.diagnostics import Location
from ruleengine.evaluate import evaluator_for
from ruleengine.pipeline import normalized_facts
from ruleengine.policy import load_policy

from .conftest import REPO

DEFAULT = REPO / "policies" / "default"
RULES = """
- id: big-data
  priority: 10
  when:
    - {fact: data.examples, op: ">=", value: {threshold: large_data_examples}}
    - {fact: task.quality, op: "!=", value: prototype}
  then: {method: full_ft}
  rationale: lots of data
- id: table
  priority: 50
  when: []
  then: {use_case: true}
  rationale: the table
- id: last
  priority: 90
  when: []
  then: {method: qlora, rank: 16}
  rationale: fallback
"""


def case(note, facts, expect):
    return Case(note, facts, expect, Location("cases.yaml", 1, 1), "cases.yaml")


def test_light_decisions_equal_full_decisions_on_every_bundled_case():
    policy = load_policy(str(DEFAULT))
    ev = evaluator_for(policy)
    for f in test_files(str(DEFAULT)):
        for c in load_cases(f):
            full = run_case(policy, c).decision
            import os

            facts = normalized_facts(ev, c.facts_input(), origin=os.path.dirname(c.file))
            light = light_decision(policy, ev.evaluate(facts, use_engine=False))
            assert light["feasible"] == full["feasible"] and light["verdict"] == full["verdict"]
            assert light["chosen_rule"] == full["chosen_rule"] and light["matched_rules"] == full["matched_rules"]
            assert [w["code"] for w in light["warnings"]] == [w["code"] for w in full["warnings"]]
            assert [n["code"] for n in light["notes"]] == [n["code"] for n in full["notes"]]


def test_mutants_of_every_kind(write_policy):
    policy = load_policy(write_policy(RULES))
    mutants = {m.id: m for m in generate_mutants(policy)}
    kinds = {m.kind for m in mutants.values()}
    assert kinds == {"operator", "threshold+", "threshold-", "drop", "swap"}
    boundary = mutants["big-data:rules[0].when[0]:>"]
    cmp = boundary.policy.rule("big-data").when.items[0]
    assert cmp.op == ">" and cmp.value == 1e6
    moved = mutants["big-data:rules[0].when[0]:threshold-"].policy.rule("big-data").when.items[0]
    assert moved.value == 999_999 and moved.op == ">="
    dropped = mutants["big-data:rules[0].when[1]:drop"].policy.rule("big-data").when
    assert len(dropped.items) == 1
    swapped = mutants["swap:big-data:table"].policy
    assert [r.id for r in swapped.select_rules] == ["table", "big-data", "last"]
    assert policy.rule("big-data").when.items[0].op == ">="  # the policy itself is unchanged


def test_boundary_cases_kill_boundary_mutants(write_policy):
    policy = load_policy(write_policy(RULES))
    far = [case("2M", {"model": {"params": "1B"}, "data": {"examples": "2M"}}, {"method": "full_ft"}),
           case("50k", {"model": {"params": "7B"}, "data": {"examples": "50k"}}, {"method": "lora"})]
    report = run_mutants(policy, far)
    survivors = {r.mutant.id for r in report.survivors}
    assert "big-data:rules[0].when[0]:>" in survivors and "big-data:rules[0].when[0]:threshold-" in survivors
    boundary = next(r for r in report.survivors if r.mutant.id == "big-data:rules[0].when[0]:>")
    assert boundary.suggestion["facts"]["data"]["examples"] == 1_000_000
    # the suggestions are cases: added, they kill what they were made for
    extra = [case(r.suggestion["note"], r.suggestion["facts"], r.suggestion["expect"])
             for r in report.survivors if r.suggestion]
    again = run_mutants(policy, far + extra)
    assert {r.mutant.id for r in again.survivors} < survivors
    assert again.score > report.score


def test_equivalent_mutants_are_found_on_the_grid(write_policy):
    """A mutant no fact set tells apart from the policy is equivalent, not a survivor."""
    policy = load_policy(write_policy(RULES + """
- id: never-prototype-and-not
  priority: 95
  when: [{fact: task.quality, op: "==", value: prototype}]
  then: {method: qlora, rank: 8}
  rationale: after a catch-all, never chosen
"""))
    grid = build_grid([policy])
    ge = GridEvaluator(policy)
    results = ge.evaluate(grid, keep=True)
    mutants = {m.id: m for m in generate_mutants(policy)}
    # after `last` (when: []), the rule at priority 95 can never be chosen: negating its condition changes nothing
    assert ge.difference(results, mutants["never-prototype-and-not:rules[3].when[0]:!="].policy) is None
    mem, mask = ge.difference(results, mutants["big-data:rules[0].when[0]:>"].policy)
    assert mask and any(grid.rule_point(i)[list(grid.rule_axes).index("data.examples")] == 1_000_000
                        for i in range(grid.rule_size) if mask >> i & 1)


def test_the_default_policy_meets_its_declared_gates():
    gates: dict = {}
    for f in test_files(str(DEFAULT)):
        gates.update(load_gates(f))
    assert gates["min_coverage"] == 100 and gates["min_mutation_score"] >= 95
    result = CliRunner().invoke(main, ["test", str(DEFAULT), "--mutants"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "coverage: " in result.output and "(100.0%)" in result.output


@pytest.mark.parametrize("gates,code", [("gates: {min_coverage: 101}", 2), ("gates: {min_covrage: 90}", 2)])
def test_bad_gates_are_located_errors(tmp_path, write_policy, gates, code):
    path = write_policy(RULES)
    tests = tmp_path / "p" / "tests"
    tests.mkdir()
    (tests / "gates.yaml").write_text(gates + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["test", path], catch_exceptions=False)
    assert result.exit_code == code and "gates.yaml:1:" in result.stderr
