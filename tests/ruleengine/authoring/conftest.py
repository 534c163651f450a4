"""Shared helpers for the authoring tests: a tiny policy writer and golden files beside fixtures."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures" / "policies"

MINI = """\
language: finetune-policy/v1
name: mini
version: 1.0.0
gpus:
  a100-80gb: {memory_gb: 80, bf16: true, tflops: 312, price_per_hour: 4.1}
  t4-16gb: {memory_gb: 16, bf16: false, tflops: 65, price_per_hour: 0.53}
thresholds:
  few_shot_examples: 1000
  large_data_examples: 1000000
defaults:
  facts:
    hardware: {gpu: a100-80gb}
    task: {use_case: chat}
use_cases:
  chat: {label: Chat, method: lora, rank: 16, target_modules: all-linear, shift: style_format}
  pretraining: {label: Pretraining, method: full_ft, shift: continual_pretraining}
rules:
"""


@pytest.fixture
def write_policy(tmp_path):
    """Return a writer: write_policy(rules_yaml, name="p") -> path of a single-file policy in a fresh dir."""

    def write(rules: str, header: str = MINI, name: str = "p") -> str:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        path = folder / "policy.yaml"
        path.write_text(header + textwrap.indent(textwrap.dedent(rules).strip() + "\n", "  "), encoding="utf-8")
        return str(folder)

    return write


@pytest.fixture
def expected_file():
    """Return a checker: expected_file(path, text) compares with a golden file; UPDATE_GOLDEN=1 rewrites it."""

    def check(path: Path, text: str) -> None:
        text = text.replace(str(REPO) + os.sep, "")
        if os.environ.get("UPDATE_GOLDEN") or not path.exists():
            path.write_text(text, encoding="utf-8")
            if not os.environ.get("UPDATE_GOLDEN"):
                pytest.fail(f"golden file {path} did not exist; written - review it and rerun")
        assert text == path.read_text(encoding="utf-8"), (
            f"output differs from {path.relative_to(REPO)} (UPDATE_GOLDEN=1 rewrites it after review)")

    return check
