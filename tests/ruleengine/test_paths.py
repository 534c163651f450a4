"""ruleengine.paths: the bundled policies, schemas and examples, from a wheel or from a checkout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ruleengine import paths

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_lookup():
    """Clear the lookup caches before and after the test (it moves the folders)."""
    paths._folder.cache_clear()
    paths.load_schema.cache_clear()
    yield
    paths._folder.cache_clear()
    paths.load_schema.cache_clear()


def test_a_checkout_uses_its_top_level_folders():
    assert paths.policies_root() == REPO / "policies"
    assert paths.default_policy() == REPO / "policies" / "default"
    assert paths.schema("facts.schema.json") == REPO / "schemas" / "facts.schema.json"
    assert paths.example("data/chat.jsonl") == REPO / "examples" / "data" / "chat.jsonl"
    assert paths.example_data() == sorted((REPO / "examples" / "data").glob("*.jsonl"))
    assert paths.load_schema("facts.schema.json") == json.loads(
        (REPO / "schemas" / "facts.schema.json").read_text(encoding="utf-8"))


def test_the_package_copy_wins_over_the_checkout(tmp_path, monkeypatch, fresh_lookup):
    (tmp_path / "_bundled" / "schemas").mkdir(parents=True)
    packaged = tmp_path / "_bundled" / "schemas" / "facts.schema.json"
    packaged.write_text('{"title": "packaged"}', encoding="utf-8")
    monkeypatch.setattr(paths, "_HERE", tmp_path)
    assert paths.schema("facts.schema.json") == packaged
    assert paths.load_schema("facts.schema.json") == {"title": "packaged"}
    assert paths.policies_root() == REPO / "policies"  # not in the (fake) package: the checkout's


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch, fresh_lookup):
    monkeypatch.setattr(paths, "_CHECKOUT", tmp_path)
    with pytest.raises(paths.BundledDataMissing, match=r"the bundled policies/ folder is missing .*reinstall"):
        paths.default_policy()
    (tmp_path / "examples" / "data").mkdir(parents=True)
    with pytest.raises(paths.BundledDataMissing, match=r"no example data \(\*\.jsonl\) under "):
        paths.example_data()


def test_an_unknown_schema_or_example_is_reported():
    with pytest.raises(paths.BundledDataMissing, match="schemas/nope.schema.json is not bundled"):
        paths.schema("nope.schema.json")
    with pytest.raises(paths.BundledDataMissing, match="examples/nope.yaml is not bundled"):
        paths.example("nope.yaml")


def test_the_checkout_is_found_from_any_working_directory(tmp_path):
    code = "from ruleengine import paths; print(paths.default_policy())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(REPO / "policies" / "default")
