"""What any policy must mean, checked on the policy itself (`decide check --properties`, and the
hypothesis tests of tests/ruleengine/test_policy_properties.py, which take any policy path).

``more-memory-stays-feasible``
    A feasible decision stays feasible on a GPU with more memory (same GPU otherwise).
``verdict-fits``
    A chosen verdict's per-GPU estimate is within usable memory.
``more-data-keeps-capacity``
    Within one use case, more training examples never choose a verdict with fewer trainable
    parameters (capacity), nor turn a feasible decision infeasible, unless the rule chosen for
    the larger data set says so (``waives: [more-data-keeps-capacity]``).
``rows-reachable``
    Every use-case row's verdict (method and rank) is chosen for some fact set of that use case.

The first three are searched by hypothesis over generated fact sets (shrunk to a small
counterexample); the last over the policy's grid (``grid.build_grid``). Every decision is made by
the decision core's ``Evaluator`` (condition checks; durable-rules agreement is tested elsewhere).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..vocabulary import QUALITIES, SHIFTS

PROPERTIES = ("more-memory-stays-feasible", "verdict-fits", "more-data-keeps-capacity", "rows-reachable")
MODEL_SIZES = ("350M", "1.1B", "3B", "7B", "8B", "13B", "34B", "70B")


@dataclass
class Violation:
    """A counterexample: which property, what happened, and the facts (given form) that show it."""

    property: str
    message: str
    facts: dict
    rule: str | None = None  # the rule to blame (located), when there is one
    use_case: str | None = None


def facts_strategy(policy: Any) -> Any:
    """Return a hypothesis strategy of valid given-facts documents for ``policy``."""
    from hypothesis import strategies as st

    hardware = st.one_of(
        st.fixed_dictionaries({"gpu": st.sampled_from(sorted(policy.gpus))}, optional={"gpu_count": st.integers(1, 8)}),
        st.fixed_dictionaries({"gpu_memory_gb": st.floats(8, 200, allow_nan=False)},
                              optional={"gpu_count": st.integers(1, 8)}),
    )
    data = st.fixed_dictionaries(
        {"examples": st.one_of(st.integers(0, 5_000_000), st.sampled_from(["500", "1k", "50k", "100k", "1M", "2M"]))},
        optional={"seq_len": st.sampled_from([512, 1024, 2048, 4096])})
    task = st.fixed_dictionaries({"use_case": st.sampled_from(sorted(policy.use_cases))},
                                 optional={"shift": st.sampled_from(SHIFTS), "quality": st.sampled_from(QUALITIES)})
    serving = st.fixed_dictionaries({}, optional={
        "latency_sensitive": st.booleans(), "requests_per_day": st.integers(0, 10_000_000),
        "adapters": st.integers(1, 20)})
    model = st.fixed_dictionaries({"params": st.one_of(st.sampled_from(MODEL_SIZES),
                                                       st.floats(1e8, 1.2e11, allow_nan=False))})
    return st.fixed_dictionaries({"model": model, "hardware": hardware, "data": data, "task": task},
                                 optional={"serving": serving})


class PropertyChecker:
    """The property checks of one policy, on given-facts documents."""

    def __init__(self, policy: Any):
        from ..evaluate import evaluator_for
        from .grid import _numeric_values

        self.policy = policy
        self.evaluator = evaluator_for(policy)
        # every cell of data.examples the policy's conditions cut: "more data" is tried at each one above
        self.example_cells = [int(v) for v in _numeric_values([policy], "data.examples", 0, True, set())]
        self.memory_cells = [float(v) for v in _numeric_values([policy], "hardware.gpu_memory_gb", 0.5, False, set())]

    def decide(self, given: dict) -> Any:
        """Return the Evaluation of ``given`` facts (None when the facts are invalid for this policy)."""
        from ..facts import FactsError, normalize_facts

        try:
            return self.evaluator.evaluate(normalize_facts(copy.deepcopy(given), self.policy), use_engine=False)
        except (FactsError, ValueError):
            return None

    def more_memory(self, given: dict, extra_gb: float) -> Violation | None:
        """``more-memory-stays-feasible`` for ``given``: against ``extra_gb`` more GiB per GPU and against every
        GPU-memory cell of the policy above the given memory."""
        ev = self.decide(given)
        if ev is None or ev.candidate is None:
            return None
        memory = ev.derived.gpu.memory_gb
        for larger in sorted({round(memory + extra_gb, 2), *(c for c in self.memory_cells if c > memory)}):
            bigger = copy.deepcopy(given)
            bigger["hardware"]["gpu_memory_gb"] = larger
            ev2 = self.decide(bigger)
            if ev2 is not None and ev2.candidate is None:
                held = [e.rule for e in ev2.trace if getattr(e, "kind", "") == "select" and e.conditions_hold]
                return Violation("more-memory-stays-feasible",
                                 f"feasible with {memory:g} GiB per GPU ({ev.candidate.label()} by `{ev.chosen}`) but "
                                 f"infeasible with {larger:g} GiB: "
                                 + (f"the rules whose conditions hold then ({', '.join(held)}) choose verdicts that "
                                    "do not fit" if held else "no select rule's conditions hold then"),
                                 bigger, held[0] if held else ev.chosen)
        return None

    def verdict_fits(self, given: dict) -> Violation | None:
        """``verdict-fits`` for ``given``."""
        ev = self.decide(given)
        if ev is None or ev.candidate is None:
            return None
        c = ev.candidate
        if c.estimate.total_gib > c.usable_gb + 1e-9:
            return Violation("verdict-fits", f"`{ev.chosen}` chooses {c.label()} needing {c.estimate.total_gib:.1f} "
                             f"GiB per GPU of {c.usable_gb:.1f} usable", given, ev.chosen)
        return None

    def more_data(self, given: dict, factor: float) -> Violation | None:
        """``more-data-keeps-capacity`` for ``given``: against ``factor`` times as many examples and against every
        data-size cell of the policy above the given size."""
        ev = self.decide(given)
        if ev is None or ev.candidate is None:
            return None
        n = int(ev.flat["data.examples"])
        for larger in sorted({int(n * factor) + 1, *(c for c in self.example_cells if c > n)}):
            more = copy.deepcopy(given)
            more["data"] = {**more["data"], "examples": larger}
            found = self._compare(ev, more)
            if found is not None:
                return found
        return None

    def _compare(self, ev: Any, more: dict) -> Violation | None:
        ev2 = self.decide(more)
        if ev2 is None:
            return None
        before = ev.candidate.estimate.trainable_params if ev.candidate else 0
        after = ev2.candidate.estimate.trainable_params if ev2.candidate else 0
        if after >= before or (ev.candidate is None):
            return None
        if ev2.chosen and "more-data-keeps-capacity" in self.policy.rule(ev2.chosen).waives:
            return None
        old = f"{ev.candidate.label()} by `{ev.chosen}`"
        new = f"{ev2.candidate.label()} by `{ev2.chosen}`" if ev2.candidate else "infeasible"
        return Violation("more-data-keeps-capacity",
                         f"{int(ev.flat['data.examples']):,} examples get {old} ({before:,} trainable parameters), "
                         f"{int(ev2.flat['data.examples']):,} get {new} ({after:,})", more,
                         ev2.chosen or ev.chosen)


def rows_reachable(policy: Any) -> list[Violation]:
    """Return a ``rows-reachable`` violation for every use-case row whose verdict no fact set of the grid gets."""
    from .grid import GridEvaluator, build_grid

    grid = build_grid([policy], select_only=True)
    results = GridEvaluator(policy).evaluate(grid, spot_checks=0, advice=False)
    axis = list(grid.memory_axes).index("task.use_case")
    reached: set[str] = set()
    for mem, res in results.items():
        row = policy.use_cases.get(mem[axis], {})
        want = (row.get("method"), row.get("rank"))
        for rid, label in res.labels.items():
            if res.chosen.get(rid) and (label[0], label[1] if want[1] is not None else None) == want:
                reached.add(mem[axis])
    out = []
    for uc, row in policy.use_cases.items():
        if uc not in reached:
            rank = f" r={row['rank']}" if row.get("rank") else ""
            out.append(Violation("rows-reachable", f"use case `{uc}`: its row's verdict ({row.get('method')}{rank}) is "
                                 f"not chosen for any of the {grid.size:,} fact sets of the grid", {}, None, uc))
    return out


def run_properties(policy: Any, examples: int = 100) -> list[Violation]:
    """Search every property of ``policy``; return the (shrunk) counterexamples found.

    Raises ImportError when hypothesis is not installed (it is in the ``dev`` extra).
    """
    from hypothesis import HealthCheck, Verbosity, given, settings
    from hypothesis import strategies as st

    checker = PropertyChecker(policy)
    found: list[Violation] = []
    config = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      verbosity=Verbosity.quiet, suppress_health_check=list(HealthCheck))
    facts = facts_strategy(policy)

    def search(check: Any, *extra: Any) -> None:
        last: list[Violation] = []

        @config
        @given(st.tuples(facts, *extra))
        def prop(drawn: tuple) -> None:
            v = check(*drawn)
            if v is not None:
                last.append(v)
                raise AssertionError(v.message)

        try:
            prop()
        except AssertionError:
            found.append(last[-1])  # hypothesis replays the shrunk example last

    search(checker.more_memory, st.floats(1, 160, allow_nan=False))
    search(checker.verdict_fits)
    search(checker.more_data, st.floats(1.01, 100, allow_nan=False))
    found.extend(rows_reachable(policy))
    return found
