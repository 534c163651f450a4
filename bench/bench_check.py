"""Timings of the policy authoring tools on the bundled default policy, against an in-process baseline.

    .venv/bin/python bench/bench_check.py [--repeat 3] [--map-resolution 48]

The baseline is compiling the policy (``load_policy``: parse, schema, resolve, check, compile), which
every command does first; each tool is reported in seconds and as a ratio to it:

* ``check``: every static check of `decide check` (exact box analysis plus sampled memory checks);
* ``boxes``: the exact part alone (every rule's condition to boxes, the gap cover, advise reachability);
* ``test``: every case beside the policy through `decide` (durable-rules) plus coverage;
* ``diff``: `decide diff` against a copy whose ``large_data_examples`` threshold is halved (grid of
  ~350k fact sets, both policies);
* ``map``: a ``--resolution`` x ``--resolution`` map over model size and GPU memory (no picture).
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
    rows.append(("test", t, f"{len(tests.results)} cases, rule coverage {tests.rule_coverage:.1f}%"))
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / "default"
        shutil.copytree(DEFAULT_POLICY, new, ignore=shutil.ignore_patterns("tests"))
        th = new / "thresholds.yaml"
        th.write_text(th.read_text().replace("value: 1000000", "value: 500000"))
        (new / "policy.yaml").write_text((new / "policy.yaml").read_text().replace("version: 1.0.0", "version: 1.1.0"))
        t, d = timed(lambda: diff_policies(str(DEFAULT_POLICY), str(new)), args.repeat)
        rows.append(("diff", t, f"{d.impact.total:,} fact sets, {d.impact.verdict_flips:,} flips"))
    pol = load_policy(None)
    n = args.map_resolution
    x = make_axis(pol, "model.params", "--x", None, n)
    y = make_axis(pol, "hardware.gpu_memory_gb", "--y", None, n)
    t, _ = timed(lambda: compute_map(pol, {"task": {"use_case": "chat"}}, x, y), 1)
    rows.append((f"map {n}x{n}", t, f"{n * n / t:,.0f} cells/s"))
    width = max(len(r[0]) for r in rows)
    for name, seconds, info in rows:
        print(f"{name.ljust(width)}  {seconds:8.3f} s  x{seconds / base:7.1f}  {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
