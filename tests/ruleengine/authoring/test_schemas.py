"""The editors' JSON Schema: current, every shipped policy file valid alone and naming it, typos caught."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from ruleengine.authoring.fmt import policy_files
from ruleengine.authoring.schemas import MODELINE, NAME, OUT, render

from .conftest import REPO

POLICY_FILES = sorted(
    [p for p in policy_files(str(REPO / "policies" / "default"))]
    + sorted((REPO / "policies" / "releases").rglob("*.yaml")))


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft202012Validator(json.loads(OUT.read_text(encoding="utf-8")))


def test_the_shipped_schema_is_generated_from_the_current_schemas_and_vocabulary():
    assert OUT.read_text(encoding="utf-8") == render(), "run `python -m ruleengine.authoring.schemas`"


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_policy_file_validates_alone_and_names_the_schema(path, validator):
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert first.startswith(MODELINE) and first.endswith(NAME)
    schema_path = (path.parent / first[len(MODELINE):]).resolve()
    assert schema_path == OUT.resolve()
    errors = list(validator.iter_errors(yaml.safe_load(text)))
    assert not errors, [e.message for e in errors]


RULE = {"id": "r", "priority": 1, "rationale": "x", "then": {"method": "lora"},
        "when": [{"fact": "data.examples", "op": ">=", "value": 1000}]}


@pytest.mark.parametrize("document", [
    {"rules": [{**RULE, "when": [{"fact": "data.exampels", "op": ">=", "value": 1000}]}]},  # fact typo
    {"rules": [{**RULE, "when": [{"fact": "task.shift", "op": "==", "value": "style_fromat"}]}]},  # enum typo
    {"rules": [{**RULE, "when": [{"fact": "serving.latency_sensitive", "op": "==", "value": "yes"}]}]},
    {"rules": [{**RULE, "then": {"method": "qlroa"}}]},  # method typo
    {"memory": {"usable": {"safety_margn": 0.9}}},  # memory key typo
    {"cost": {"mfuu": 0.3}},  # cost key typo
    {"thresholds": {"t": {"value": 1, "unit": "parameters"}}},  # unit outside the vocabulary
    {"rules": [{**RULE, "waives": ["more-memory"]}]},
])
def test_typos_the_compiler_schema_leaves_to_later_stages_are_caught(document, validator):
    assert list(validator.iter_errors(document))


def test_one_file_of_a_bundle_validates_alone(validator):
    assert not list(validator.iter_errors({"rules": [RULE]}))
    assert not list(validator.iter_errors({"thresholds": {"t": {"value": "2GiB", "unit": "GiB"}}}))
    assert Path(OUT).name == NAME
