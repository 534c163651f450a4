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
