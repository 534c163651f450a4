"""Property tests over every policy in policies/: totality, safety, monotonicity, determinism,
order independence, agreement with an independent reference evaluator, round trips, loader fuzzing.

Bounded (example counts below) so that the file runs in well under 90 s on two cores.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ruleengine.api import decide
from ruleengine.cli.policy import discover_policies
from ruleengine.derive import derive
from ruleengine.diagnostics import DiagnosticError
from ruleengine.evaluate import evaluator_for
from ruleengine.facts import FactsError, normalize_facts
from ruleengine.paths import policies_root
from ruleengine.policy import PolicyError, load_policy, load_policy_files
from ruleengine.vocabulary import METHODS, OPTIMIZERS, PRECISIONS, QUALITIES, SHARDINGS, SHIFTS

POLICY_PATHS = discover_policies((str(policies_root()),))
POLICIES = {Path(p).name: load_policy(p) for p in POLICY_PATHS}
IDS = list(POLICIES)

FAST = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ENGINE = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

MODEL_SIZES = st.one_of(st.sampled_from(["350M", "1.1B", "3B", "7B", "8B", "13B", "34B", "70B"]),
                        st.floats(min_value=1e8, max_value=1.2e11, allow_nan=False))


def facts_for(policy):  # type: ignore[no-untyped-def]
    """Return a strategy of valid given-facts documents for ``policy``."""
    hardware = st.one_of(
        st.fixed_dictionaries({"gpu": st.sampled_from(sorted(policy.gpus))},
                              optional={"gpu_count": st.integers(1, 16)}),
        st.fixed_dictionaries({"gpu_memory_gb": st.floats(8, 200, allow_nan=False)},
                              optional={"gpu_count": st.integers(1, 16)}),
    )
    data = st.fixed_dictionaries(
        {"examples": st.one_of(st.integers(0, 5_000_000), st.sampled_from(["500", "1k", "50k", "100k", "1M", "2M"]))},
        optional={"avg_tokens": st.floats(16, 4096, allow_nan=False), "seq_len": st.sampled_from([256, 512, 1024, 2048, 4096])})
    task = st.fixed_dictionaries({"use_case": st.sampled_from(sorted(policy.use_cases))},
                                 optional={"shift": st.sampled_from(SHIFTS), "quality": st.sampled_from(QUALITIES)})
    serving = st.fixed_dictionaries({}, optional={
        "latency_sensitive": st.booleans(), "requests_per_day": st.integers(0, 10_000_000),
        "avg_latency_ms": st.floats(1, 2000, allow_nan=False), "adapters": st.integers(1, 100)})
    training = st.fixed_dictionaries({}, optional={
        "precision": st.sampled_from(PRECISIONS), "optimizer": st.sampled_from(OPTIMIZERS),
        "micro_batch_size": st.integers(1, 16), "seq_len": st.sampled_from([256, 512, 1024, 2048, 4096]),
        "gradient_checkpointing": st.booleans(), "sharding": st.sampled_from(SHARDINGS),
        "lora_rank": st.sampled_from([4, 8, 16, 32, 64])})
    return st.fixed_dictionaries({"model": st.fixed_dictionaries({"params": MODEL_SIZES}), "hardware": hardware,
                                  "data": data, "task": task},
                                 optional={"serving": serving, "training": training})


def _summary(decision) -> tuple:  # type: ignore[no-untyped-def]
    d = decision.to_dict()
    return (d["feasible"], d["chosen_rule"], d["verdict"], sorted(d["advice_rules"]),
            [w["code"] for w in d["warnings"]], [n["code"] for n in d["notes"]])


# --- totality, safety, differential ------------------------------------------------------------

@pytest.mark.parametrize("name", IDS)
@ENGINE
@given(data=st.data())
def test_totality_safety_and_reference_agreement(name, data, reference_evaluator):
    """Every valid fact set gets exactly one outcome (a verdict that fits, or an explicit infeasible), and
    the independent reference evaluator chooses the same rule, verdict and advice as durable-rules."""
    policy = POLICIES[name]
    given_facts = data.draw(facts_for(policy))
    decision = decide(policy, copy.deepcopy(given_facts))
    assert decision.feasible == (decision.verdict is not None) == (decision.chosen_rule is not None)
    if decision.feasible:
        ev = evaluator_for(policy).evaluate(normalize_facts(copy.deepcopy(given_facts), policy), use_engine=False)
        assert ev.candidate is not None and ev.chosen == decision.chosen_rule
        assert ev.candidate.estimate.total_gib <= ev.candidate.usable_gb + 1e-9
    else:
        assert decision.suggestions is not None
    ref = reference_evaluator.evaluate_reference(policy, copy.deepcopy(given_facts))
    assert ref.chosen_rule == decision.chosen_rule
    assert ref.feasible == decision.feasible
    if decision.feasible:
        assert (ref.method, ref.rank) == (decision.verdict["method"], decision.verdict["rank"])
    assert sorted(ref.advice) == sorted(decision.advice_rules)


@pytest.mark.parametrize("name", IDS)
@FAST
@given(data=st.data())
def test_determinism(name, data):
    """The same facts give the same decision (rule, verdict, advice, messages) every time."""
    policy = POLICIES[name]
    given_facts = data.draw(facts_for(policy))
    assert _summary(decide(policy, copy.deepcopy(given_facts))) == _summary(decide(policy, copy.deepcopy(given_facts)))


def _permuted(policy, seed: int):  # type: ignore[no-untyped-def]
    doc = policy.dump_data()
    rules = list(doc["rules"])
    random.Random(seed).shuffle(rules)
    doc["rules"] = rules
    return load_policy_files({"policy.yaml": yaml.safe_dump(doc, sort_keys=False)}, "policy.yaml", "<permuted>")


@pytest.mark.parametrize("name", IDS)
@settings(max_examples=8, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_rule_order_in_the_file_changes_nothing(name, data, seed):
    """Rewriting the policy with its rules in another order keeps its meaning and every decision."""
    policy = POLICIES[name]
    permuted = _permuted(policy, seed)
    assert permuted.semantic_sha256 == policy.semantic_sha256
    for _ in range(3):
        given_facts = data.draw(facts_for(policy))
        assert _summary(decide(permuted, copy.deepcopy(given_facts))) == _summary(decide(policy, copy.deepcopy(given_facts)))


# --- monotonicity (memory model through derive) --------------------------------------------------

def _derived(policy, given_facts):  # type: ignore[no-untyped-def]
    return derive(policy, normalize_facts(copy.deepcopy(given_facts), policy))


def _fitting(d) -> set:  # type: ignore[no-untyped-def]
    return {m for m in METHODS if d.flat[f"fits.{m}"]}


@pytest.mark.parametrize("name", IDS)
@FAST
@given(data=st.data(), extra_gb=st.floats(0.5, 120, allow_nan=False), more=st.integers(1, 8))
def test_more_gpu_memory_or_more_gpus_never_removes_a_fitting_method(name, data, extra_gb, more):
    """A method that fits keeps fitting with more memory per GPU, and with more GPUs."""
    policy = POLICIES[name]
    given_facts = data.draw(facts_for(policy))
    base = _derived(policy, given_facts)
    bigger = copy.deepcopy(given_facts)
    bigger["hardware"]["gpu_memory_gb"] = base.gpu.memory_gb + extra_gb
    assert _fitting(base) <= _fitting(_derived(policy, bigger))
    wider = copy.deepcopy(given_facts)
    wider["hardware"]["gpu_count"] = base.gpu.count + more
    assert _fitting(base) <= _fitting(_derived(policy, wider))


@pytest.mark.parametrize("name", IDS)
@FAST
@given(data=st.data(), factor=st.floats(1.01, 4.0, allow_nan=False), micro_batch=st.integers(1, 8))
def test_a_larger_model_never_lowers_an_estimate(name, data, factor, micro_batch):
    """At fixed training settings, every method's per-GPU estimate grows (or stays) with the parameter count.

    The settings are pinned (micro-batch, sharding, checkpointing, optimizer) because ``auto`` picks
    the largest micro-batch and the least sharding that fit, and the settings ladder changes the
    others when nothing fits, so the *chosen* configuration of a larger model may be smaller.
    """
    policy = POLICIES[name]
    given_facts = data.draw(facts_for(policy))
    training = given_facts.setdefault("training", {})
    training["micro_batch_size"] = micro_batch
    if training.get("sharding", "auto") == "auto":
        training["sharding"] = "none"
    training.setdefault("gradient_checkpointing", True)
    training.setdefault("optimizer", "adamw")
    small = _derived(policy, given_facts)
    larger = copy.deepcopy(given_facts)
    larger["model"]["params"] = small.arch.params * factor
    big = _derived(policy, larger)
    for m in METHODS:
        assert big.flat[f"mem.{m}_gb"] >= small.flat[f"mem.{m}_gb"] - 1e-6, m


@pytest.mark.parametrize("name", IDS)
@FAST
@given(data=st.data(), seq_factor=st.sampled_from([1, 2, 4]), batch_extra=st.integers(0, 8))
def test_longer_sequences_or_larger_batches_never_lower_activation_memory(name, data, seq_factor, batch_extra):
    """Activation memory of every method grows (or stays) with the sequence length and the micro-batch."""
    policy = POLICIES[name]
    given_facts = data.draw(facts_for(policy))
    base = _derived(policy, given_facts)
    training = dict(given_facts.get("training") or {})
    seq = int(base.defaults["lora"].training["seq_len"])
    mbs = int(base.defaults["lora"].training["micro_batch_size"])
    grown = copy.deepcopy(given_facts)
    grown["training"] = {**training, "seq_len": seq * seq_factor, "micro_batch_size": mbs + batch_extra}
    base_fixed = copy.deepcopy(given_facts)
    base_fixed["training"] = {**training, "seq_len": seq, "micro_batch_size": mbs}
    a, b = _derived(policy, base_fixed), _derived(policy, grown)
    for m in METHODS:
        assert b.defaults[m].estimate.activations_gib >= a.defaults[m].estimate.activations_gib - 1e-9, m


# --- round trip ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", IDS)
def test_dump_and_reload_keeps_the_meaning(name):
    """``Policy.dump_data()`` written as one YAML file loads back to the same semantic hash."""
    policy = POLICIES[name]
    text = yaml.safe_dump(policy.dump_data(), sort_keys=False, allow_unicode=True)
    again = load_policy_files({"policy.yaml": text}, "policy.yaml", "<dump>")
    assert again.semantic_sha256 == policy.semantic_sha256
    assert [r.id for r in again.rules] == [r.id for r in policy.rules]


# --- loader fuzzing --------------------------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=12))
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=20)


@FUZZ
@given(text=st.text(max_size=400))
def test_arbitrary_yaml_text_never_crashes_the_policy_loader(text):
    """Any text as a policy file is either a policy or a PolicyError with diagnostics, never another exception."""
    try:
        load_policy_files({"policy.yaml": text}, "policy.yaml", "<fuzz>")
    except PolicyError as exc:
        assert exc.diagnostics


def _mutate(doc, rng: random.Random, value):  # type: ignore[no-untyped-def]
    """Replace, drop or retype one node of a policy document."""
    node = doc
    path = []
    while isinstance(node, (dict, list)) and node and rng.random() < 0.75:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append(key)
        node = node[key]
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.3 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@pytest.mark.parametrize("name", IDS)
@settings(max_examples=50, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(seed=st.integers(0, 2**32 - 1), value=JSONISH)
def test_mutated_policies_never_crash_the_loader(name, seed, value):
    """A valid policy with one node dropped or replaced by arbitrary data loads or fails with PolicyError."""
    doc = _mutate(copy.deepcopy(POLICIES[name].dump_data()), random.Random(seed), value)
    try:
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        assume(False)
    try:
        load_policy_files({"policy.yaml": text}, "policy.yaml", "<fuzz>")
    except PolicyError as exc:
        assert exc.diagnostics


FACT_KEYS = st.sampled_from(["model", "hardware", "data", "task", "serving", "training", "params", "gpu",
                             "gpu_count", "gpu_memory_gb", "examples", "tasks", "use_case", "shift", "quality",
                             "adapters", "seq_len", "micro_batch_size", "sharding", "lora_rank", "config", "x"])
FACTS_JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(FACT_KEYS, inner, max_size=5)), max_leaves=25)


@pytest.mark.parametrize("name", IDS)
@FUZZ
@given(facts=st.dictionaries(FACT_KEYS, FACTS_JSONISH, max_size=6))
def test_arbitrary_facts_are_decided_or_rejected_with_facts_error(name, facts):
    """Any facts document either normalizes or raises FactsError with located diagnostics, never another exception."""
    policy = POLICIES[name]
    try:
        normalize_facts(facts, policy)
    except FactsError as exc:
        assert exc.diagnostics
        assert all(isinstance(d.code, str) and d.code for d in exc.diagnostics)


@pytest.mark.parametrize("name", IDS)
@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), junk=st.dictionaries(FACT_KEYS, FACTS_JSONISH, max_size=2))
def test_valid_facts_with_junk_fields_decide_or_fail_cleanly(name, data, junk):
    """Valid facts with arbitrary extra or replaced groups decide, or fail with a DiagnosticError."""
    policy = POLICIES[name]
    given_facts = {**data.draw(facts_for(policy)), **junk}
    try:
        ev = evaluator_for(policy).evaluate(normalize_facts(given_facts, policy), use_engine=False)
    except DiagnosticError as exc:
        assert exc.diagnostics
        return
    assert ev.chosen is None or ev.candidate.fits
