"""Shared fixtures: golden files (UPDATE_GOLDEN=1 rewrites them) and a private audit store per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
