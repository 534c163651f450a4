"""The evaluator: its first-hit forms (eager ``choose``, lazy ``outcome``) agree with the full evaluation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ruleengine.evaluate import evaluator_for
from ruleengine.facts import normalize_facts
from ruleengine.policy import load_policy

POLICY = load_policy(None)
EVALUATOR = evaluator_for(POLICY)

facts_strategy = st.fixed_dictionaries({
    "model": st.fixed_dictionaries({"params": st.sampled_from(["1B", "3B", "7B", "13B", "34B", "70B", "405B"])}),
    "hardware": st.fixed_dictionaries({"gpu": st.sampled_from(sorted(POLICY.gpus)),
                                       "gpu_count": st.sampled_from([1, 2, 4, 8])}),
    "data": st.fixed_dictionaries({"examples": st.integers(100, 5_000_000)},
                                  optional={"seq_len": st.sampled_from([512, 2048, 8192])}),
    "task": st.fixed_dictionaries({"use_case": st.sampled_from(sorted(POLICY.use_cases))},
                                  optional={"quality": st.sampled_from(["research_best", "production", "prototype"]),
                                            "shift": st.sampled_from(["style_format", "domain_adaptation",
                                                                      "new_knowledge", "continual_pretraining"])}),
    "serving": st.fixed_dictionaries({}, optional={"latency_sensitive": st.booleans(),
                                                   "adapters": st.integers(1, 100)}),
})


@settings(max_examples=150, deadline=None)
@given(given_facts=facts_strategy)
def test_lazy_and_eager_first_hit_agree_with_the_full_evaluation(given_facts):
    facts = normalize_facts(given_facts, POLICY)
    full = EVALUATOR.evaluate(facts, use_engine=False)
    rule, cand = EVALUATOR.choose(facts)
    signature, lazy = EVALUATOR.outcome(facts)
    assert rule == full.chosen
    assert signature == full.signature()
    assert (lazy is None) == (full.candidate is None)
    if lazy is not None:
        assert lazy.verdict() == full.candidate.verdict() == cand.verdict()


def test_lazy_outcome_resolves_fewer_candidates():
    facts = normalize_facts({"model": {"params": "8B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 2},
                             "data": {"examples": 123_457}, "task": {"use_case": "chat"}}, POLICY)
    evaluator = evaluator_for(load_policy(None))  # a fresh policy object: an empty cache
    evaluator.outcome(facts)
    lazily = sum(len(p.by_spec) for p in evaluator.cache.points.values())
    evaluator.derive(facts)
    eagerly = sum(len(p.by_spec) for p in evaluator.cache.points.values())
    assert lazily < eagerly
