"""Fixtures shared by the rule-engine tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def reference_evaluator() -> ModuleType:
    """Return tests/ruleengine/reference_evaluator.py as a module (the tests are not a package)."""
    name = "ruleengine_reference_evaluator"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("reference_evaluator.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
