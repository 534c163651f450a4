"""The authoring documentation stays in step with the code."""

from __future__ import annotations

import re

from ruleengine.authoring import check as check_module
from ruleengine.authoring.docs import DOC, END, START, render_section, vocabulary_table
from ruleengine.vocabulary import DERIVED, GIVEN, VERDICT

from .conftest import REPO


def test_the_vocabulary_table_in_the_language_doc_is_current():
    text = DOC.read_text(encoding="utf-8")
    assert render_section(text) == text, "run `python -m ruleengine.authoring.docs` to regenerate the table"
    table = text[text.index(START):text.index(END)]
    for name in {**GIVEN, **DERIVED, **VERDICT}:
        assert f"| `{name}` |" in table
    assert vocabulary_table() in text


def test_every_check_code_is_documented_for_authors():
    codes = set(re.findall(r"^([a-z][a-z-]+)\s+(?:error|warning|note)", check_module.__doc__, re.M))
    assert {"rule-shadowed", "select-gap", "rule-never-fits", "version-not-bumped"} <= codes
    guide = (REPO / "docs" / "policy-authoring.md").read_text(encoding="utf-8")
    missing = [c for c in codes if f"`{c}`" not in guide]
    assert not missing, f"codes missing from docs/policy-authoring.md: {missing}"


def test_the_changelog_has_an_entry_for_the_default_policy_version():
    from ruleengine.policy import load_policy

    changelog = (REPO / "policies" / "CHANGELOG.md").read_text(encoding="utf-8")
    policy = load_policy(None)
    assert f"## {policy.name} {policy.version}" in changelog
