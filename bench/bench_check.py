"""Timings of the policy authoring tools on the bundled default policy, against an in-process baseline.

    .venv/bin/python bench/bench_check.py [--repeat 3] [--map-resolution 48]

The baseline is compiling the policy (``load_policy``: parse, schema, resolve, check, compile), which
every command does first; each tool is reported in seconds and as a ratio to it:

* ``check``: every static check of `decide check` (exact box analysis plus sampled memory checks);
* ``boxes``: the exact part alone (every rule's condition to boxes, the gap cover, advise reachability);
* ``test``: every case beside the policy through `decide` (durable-rules) plus coverage;
* ``test --mutants``: the cases against every mutant of the policy, survivors analysed on the grid;
* ``diff``: `decide diff` against a copy whose ``large_data_examples`` threshold is halved (the grid
  over every fact the rules read, both policies);
* ``map``: a ``--resolution`` x ``--resolution`` map over model size and GPU memory (no picture);
* ``1000 rules``: validate, test (30 cases) and check of a generated 1,000-rule policy
  (bench/policy_gen.py; ``--no-large`` skips it).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ruleengine.paths import default_policy  # noqa: E402
from ruleengine.policy.compiler import compile_files, read_policy_files  # noqa: E402

DEFAULT_POLICY = default_policy()


def timed(fn, repeat: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    """Return (median seconds over ``repeat`` runs, the last result)."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per tool; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--map-resolution", type=int, default=48)
    parser.add_argument("--no-large", action="store_true", help="skip the 1,000-rule policy")
    args = parser.parse_args(argv)

    from ruleengine.authoring.analysis import advise_reachable, analyse
    from ruleengine.authoring.check import check_policy
    from ruleengine.authoring.coverage import run_policy_tests
    from ruleengine.authoring.diff import diff_policies
    from ruleengine.authoring.intervals import referenced_dims, universe
    from ruleengine.authoring.mapplot import compute_map, make_axis
    from ruleengine.policy import load_policy

    def compile_fresh():  # type: ignore[no-untyped-def]
        files, root, origin, reader = read_policy_files(DEFAULT_POLICY)
        return compile_files(files, root, origin, reader)

    base, policy = timed(compile_fresh, args.repeat)

    def boxes():  # type: ignore[no-untyped-def]
        a = analyse(policy)
        space = a.space
        dims = referenced_dims(space, policy.select_rules)
        rest = space.remainder([universe(space, dims)], [b for i in a.select for b in i.under])
        return rest, [advise_reachable(a, i) for i in a.advise]

    rows = [("compile (baseline)", base, "")]
    t, report = timed(lambda: check_policy(str(DEFAULT_POLICY)), args.repeat)
    rows.append(("check", t, f"{report.count('error')} errors, {report.count('warning')} warnings, "
                              f"{report.stats['memory_samples']} sampled fact sets"))
    t, _ = timed(boxes, args.repeat)
    rows.append(("boxes (exact part)", t, f"{len(policy.rules)} rules"))
    t, tests = timed(lambda: run_policy_tests(str(DEFAULT_POLICY)), args.repeat)
    rows.append(("test", t, f"{len(tests.results)} cases, coverage {tests.coverage:.1f}%"))
    t, mut = timed(lambda: run_policy_tests(str(DEFAULT_POLICY), mutants=True), 1)
    m = mut.mutation
    rows.append(("test --mutants", t, f"{len(m.results)} mutants, {m.killed} killed, {m.equivalent} equivalent, "
                                      f"score {m.score:.1f}%"))
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / "default"
        shutil.copytree(DEFAULT_POLICY, new, ignore=shutil.ignore_patterns("tests"))
        th = new / "thresholds.yaml"
        th.write_text(th.read_text().replace("value: 1000000", "value: 500000"))
        import re

        from ruleengine.authoring.versions import next_version

        root = new / "policy.yaml"
        version = policy.version
        root.write_text(re.sub(r"^version: .*$", f"version: {next_version(version, 'minor')}", root.read_text(),
                               flags=re.M))
        t, d = timed(lambda: diff_policies(str(DEFAULT_POLICY), str(new)), args.repeat)
        rows.append(("diff", t, f"{d.impact.total:,} fact sets, {d.impact.verdict_flips:,} verdict flips, "
                                f"{d.impact.message_flips:,} message-only"))
    pol = load_policy(None)
    n = args.map_resolution
    x = make_axis(pol, "model.params", "--x", None, n)
    y = make_axis(pol, "hardware.gpu_memory_gb", "--y", None, n)
    t, _ = timed(lambda: compute_map(pol, {"task": {"use_case": "chat"}}, x, y), 1)
    rows.append((f"map {n}x{n}", t, f"{n * n / t:,.0f} cells/s"))
    if not args.no_large:
        rows.extend(_large(args.repeat))
    width = max(len(r[0]) for r in rows)
    for name, seconds, info in rows:
        print(f"{name.ljust(width)}  {seconds:8.3f} s  x{seconds / base:7.1f}  {info}")
    return 0


def _large(repeat: int) -> list[tuple[str, float, str]]:
    """Return the rows of the generated 1,000-rule policy: validate, test (30 cases), check."""
    import importlib.util
    import random

    from ruleengine.authoring.check import check_policy
    from ruleengine.authoring.coverage import run_policy_tests
    from ruleengine.authoring.validation import validate_policy
    from ruleengine.policy import load_policy

    spec = importlib.util.spec_from_file_location("policy_gen", Path(__file__).with_name("policy_gen.py"))
    gen = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["policy_gen"] = gen
    spec.loader.exec_module(gen)  # type: ignore[union-attr]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = gen.write(Path(tmp) / "large", rules=1000, seed=7)
        policy = load_policy(str(folder))
        rng = random.Random(7)
        cases = {}
        from ruleengine.evaluate import evaluator_for
        from ruleengine.facts import normalize_facts

        for i in range(30):  # expectations from the policy itself: the bench measures, the test checks
            facts = gen.random_facts(rng)
            ev = evaluator_for(policy).evaluate(normalize_facts(facts, policy), use_engine=False)
            cases[f"case {i}"] = (facts, {"rule": ev.chosen})
        gen.write(folder, rules=1000, seed=7, expectations=cases)
        t, (_, diags) = timed(lambda: validate_policy(str(folder)), repeat)
        rows.append(("1000 rules: validate", t, f"{sum(d.severity == 'error' for d in diags)} errors"))
        t, tests = timed(lambda: run_policy_tests(str(folder)), 1)
        rows.append(("1000 rules: test", t, f"{len(tests.results)} cases, {len(tests.failures)} failed"))
        t, report = timed(lambda: check_policy(str(folder)), 1)
        slow = sorted(report.stats["timings"].items(), key=lambda kv: -kv[1])[:3]
        rows.append(("1000 rules: check", t, f"{report.count('error')} errors, {report.count('warning')} warnings; "
                     + ", ".join(f"{k} {v:.1f} s" for k, v in slow)))
    return rows


if __name__ == "__main__":
    sys.exit(main())
