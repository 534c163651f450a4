"""A wheel of this checkout works from any directory: it ships policies/, schemas/ and examples/.

The wheel is built as a user would (``pip wheel --no-deps``, without build isolation so that no
network is needed) from a copy of the source files, so the checkout gets no build/ folder. It is
installed with ``--no-deps`` into a fresh venv in a temporary directory that sees the running
environment's site-packages through one ``.pth`` line: those folders join sys.path, but their own
``.pth`` files (an editable install's finder, which maps ``ruleengine`` to the checkout) are not
run. Every command runs from another temporary directory with PYTHONPATH unset, and the tests
check that the code and the data come from the new venv's site-packages.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import site
import subprocess
import sys
import textwrap
import urllib.request
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Install:
    """A venv with the wheel installed: where it is and how to run things in it."""

    venv: Path
    purelib: Path
    cwd: Path
    env: dict

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``args`` (a console script of the venv, or ``python``) from ``cwd``."""
        return subprocess.run([str(self.venv / "bin" / args[0]), *args[1:]], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def probe(self, code: str) -> dict:
        """Run ``code`` in the venv's Python; return the JSON it prints last."""
        out = self.run("python", "-c", textwrap.dedent(code))
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])


def _source_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Install:
    """Build the wheel from a copy of the checkout and install it into a fresh venv."""
    setuptools_major = int(version("setuptools").split(".")[0])
    assert setuptools_major >= 77, "building needs setuptools>=77 in this venv (scripts/setup.sh installs it)"
    root = tmp_path_factory.mktemp("packaging")
    src, dist, venv, cwd = root / "src", root / "dist", root / "venv", root / "elsewhere"
    for name in _source_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes((REPO / name).read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(dist)], check=True, capture_output=True)
    (wheel,) = dist.glob("finetune_policy-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "_outer_site_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True)
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["FINETUNE_POLICY_AUDIT_DB"] = str(root / "audit.sqlite3")
    return Install(venv, purelib.resolve(), cwd, env)


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder)


def test_code_and_data_come_from_site_packages(installed):
    found = installed.probe("""
        import json, sys
        from importlib.metadata import distribution
        import ruleengine.cli, ruleengine.cli.train
        from ruleengine import paths
        dist = distribution("finetune-policy")
        print(json.dumps({
            "modules": [m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)],
            "data": [str(p) for p in (paths.policies_root(), paths.default_policy(), paths.schema("facts.schema.json"),
                                      paths.example("job.yaml"), *paths.example_data())],
            "dist": str(dist.locate_file("")),
            "dist_files": [str(f) for f in dist.files],
            "sys_path": sys.path,
        }))
    """)
    assert Path(found["dist"]).resolve() == installed.purelib
    assert "ruleengine/_bundled/policies/default/policy.yaml" in found["dist_files"]
    assert "ruleengine/_bundled/examples/data/alpaca.jsonl" in found["dist_files"]
    assert all(_inside(p, installed.purelib) for p in found["data"]), found["data"]
    ours = [f for f in found["modules"] if Path(f).parent.name in ("ruleengine", "executors")]
    assert ours and all(_inside(f, installed.purelib) for f in ours), ours
    outer = [Path(p).resolve() for p in site.getsitepackages()]
    leaked = [f for f in found["modules"]
              if _inside(f, REPO) and not any(_inside(f, o) for o in outer)]
    assert leaked == [], "modules imported from the checkout"
    assert str(REPO) not in found["sys_path"]


def test_decide_runs_from_any_directory(installed):
    out = installed.run("decide", "--model-params", "7B", "--gpu", "a100-80gb", "--examples", "10k", "--use-case",
                        "chat", "--no-audit")
    assert out.returncode == 0, out.stderr
    assert "Verdict:" in out.stdout


def test_schema_is_shipped(installed):
    out = installed.run("decide", "schema", "facts")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads((REPO / "schemas" / "facts.schema.json").read_text(encoding="utf-8"))


def test_validate_checks_the_bundled_policies(installed):
    out = installed.run("decide", "validate")
    assert out.returncode == 0, out.stderr
    bundled = installed.purelib / "ruleengine" / "_bundled" / "policies" / "default"
    assert f"{bundled}: ok (default " in out.stdout


def test_serve_answers_healthz(installed):
    proc = subprocess.Popen([str(installed.venv / "bin" / "decide"), "serve", "--port", "0", "--no-audit"],
                            cwd=installed.cwd, env=installed.env, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for _ in range(50):  # skip anything printed before the "serving ... on http://host:port" line
            found = re.search(r"^serving .* on http://[^:]+:(\d+)$", proc.stderr.readline().strip())
            if found:
                port = int(found.group(1))
                break
        assert port is not None, "decide serve printed no serving line"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as response:
            assert response.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_tokenizer_corpus_is_the_bundled_example_data(installed):
    found = installed.probe("""
        import json
        from executors.tiny import default_corpus
        print(json.dumps(default_corpus()))
    """)
    assert all(_inside(p, installed.purelib) for p in found), found
    assert [Path(p).name for p in found] == sorted(p.name for p in (REPO / "examples" / "data").glob("*.jsonl"))


@pytest.mark.train
def test_make_tiny_model_trains_its_tokenizer_on_the_bundled_corpus(installed):
    if not all(importlib.util.find_spec(m) for m in ("torch", "transformers", "tokenizers")):
        pytest.skip("the training extra is not installed")
    out = installed.run("decide", "make-tiny-model", "tiny", timeout=300)
    assert out.returncode == 0, out.stderr
    tokenizer = json.loads((installed.cwd / "tiny" / "tokenizer.json").read_text(encoding="utf-8"))
    assert len(tokenizer["model"]["vocab"]) == 512  # 301 when trained on no corpus
