"""Shared fixtures: golden files (UPDATE_GOLDEN=1 rewrites them) and a private audit store per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent

# CI (CI=true) runs every property test from a fixed seed, so a red build is reproducible; locally
# the examples are random. Neither has a per-example deadline: the 2-core machines are shared.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _private_audit_store(tmp_path, monkeypatch):
    """Keep every test's audit records out of the user's real store."""
    monkeypatch.setenv("FINETUNE_POLICY_AUDIT_DB", str(tmp_path / "audit.sqlite3"))


@pytest.fixture
def golden():
    """Return a checker: golden(name, text) compares ``text`` with tests/golden/<name>."""

    def check(name: str, text: str) -> None:
        path = REPO / "tests" / "golden" / name
        text = text.replace(str(REPO) + os.sep, "")
        if os.environ.get("UPDATE_GOLDEN") or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            if not os.environ.get("UPDATE_GOLDEN"):
                pytest.fail(f"golden file {path} did not exist; written - review it and rerun")
        assert text == path.read_text(encoding="utf-8"), f"output differs from golden {path}"

    return check


def pytest_addoption(parser):
    """``--policy PATH`` (repeatable; or FINETUNE_POLICY_PROPERTIES=path[:path...]): the policies the policy
    property tests (tests/ruleengine/test_policy_properties.py) run on; default: every bundled policy."""
    parser.addoption("--policy", action="append", default=[], metavar="PATH",
                     help="a policy (file or bundle) for the policy property tests; repeatable")


def pytest_generate_tests(metafunc):
    if "policy_path" in metafunc.fixturenames:
        paths = list(metafunc.config.getoption("--policy") or [])
        env = os.environ.get("FINETUNE_POLICY_PROPERTIES")
        if env:
            paths.extend(p for p in env.split(os.pathsep) if p)
        if not paths:
            from ruleengine.cli.policy import discover_policies
            from ruleengine.paths import policies_root

            paths = discover_policies((str(policies_root()),))
        metafunc.parametrize("policy_path", paths, ids=[Path(p).name for p in paths], scope="module")
