"""Cold start of the `decide` CLI, as ratios against importing its own dependencies and a bare interpreter.

Runs each command several times in fresh processes and prints the median wall time, its ratio to
`python -c pass` and to a process that only imports the dependencies a decision loads (click, PyYAML
with libyaml, jsonschema-rs, durable-rules' C extension: the baseline), measured in the same run;
importing every declared runtime dependency (adding jsonschema, durable.engine, cryptography, which a
decision never loads) is shown for comparison.
Goal (issue 8): one decision from the shell <= 1.5x the import time of its own dependencies. Also
reports which heavy modules a decision imports (must be none of torch/transformers/peft). The
package's bytecode is written first (as pip does at install time), so both sides load compiled modules.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wall(cmd: list[str], runs: int = 7) -> float:
    """Return the median seconds of running ``cmd`` ``runs`` times."""
    env = {**os.environ, "FINETUNE_POLICY_AUDIT_DB": os.path.join(tempfile.mkdtemp(), "a.sqlite3")}
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, check=False)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def compile_package() -> None:
    """Write the package's bytecode, as ``pip install`` does, so no run pays for compiling sources.

    The dependencies in site-packages were compiled when pip installed them; an editable checkout run
    with PYTHONDONTWRITEBYTECODE=1 would otherwise recompile every module in every process.
    """
    import compileall

    import ruleengine

    compileall.compile_dir(os.path.dirname(ruleengine.__file__), quiet=1)


def main() -> None:
    py = sys.executable
    compile_package()
    base = wall([py, "-c", "pass"])
    declared = wall([py, "-c", "import click, yaml, jsonschema, jsonschema_rs, durable.engine, cryptography"])
    deps = wall([py, "-c", "import click, yaml, yaml.cyaml, jsonschema_rs, durable_rules_engine"])
    decide = [py, "-m", "ruleengine.cli"]
    args = ["--model-params", "13B", "--gpu", "a100-80gb", "--examples", "50k", "--use-case", "domain_qa"]
    rows = [
        ("python -c pass", base),
        ("import of every declared dependency", declared),
        ("import of the dependencies a decision loads", deps),
        ("decide --help", wall(decide + ["--help"])),
        ("decide ... --no-audit (one decision)", wall(decide + args + ["--no-audit"])),
        ("decide ... (one decision, audited)", wall(decide + args)),
        ("decide explain ... --no-audit", wall(decide + ["explain"] + args + ["--no-audit"], runs=3)),
    ]
    print(f"{'command':<44}{'median s':>10}{'x deps':>10}{'x python':>10}")
    for name, s in rows:
        print(f"{name:<44}{s:>10.3f}{s / deps:>10.2f}{s / base:>10.1f}")
    probe = ("import sys; from click.testing import CliRunner; from ruleengine.cli import main; "
             f"CliRunner().invoke(main, {args + ['--no-audit']!r}); "
             "print(sorted(m for m in ('torch','transformers','peft','bitsandbytes','matplotlib') if m in sys.modules))")
    out = subprocess.run([py, "-c", probe], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"heavy modules imported by a decision: {out}")


if __name__ == "__main__":
    main()
