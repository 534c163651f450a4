"""versions.lock: semantic versions, reading and writing the lock, the version diagnostics."""

from __future__ import annotations

import pytest

from ruleengine.authoring.versions import (
    find_lock,
    lock_diagnostics,
    parse_version,
    read_lock,
    update_lock,
    write_lock,
)
from ruleengine.diagnostics import DiagnosticError, Location
from ruleengine.policy import load_policy

from .conftest import REPO


def test_semantic_versions_order_with_prereleases():
    assert parse_version("1.10.0") > parse_version("1.9.3")
    assert parse_version("1.1.0-rc.1") < parse_version("1.1.0")
    assert parse_version("1.1.0-rc.2") > parse_version("1.1.0-rc.1")
    assert parse_version("2.0.0-alpha") < parse_version("2.0.0-beta")
    with pytest.raises(ValueError):
        parse_version("1.0")


def test_the_bundled_lock_records_the_default_policy():
    lock = find_lock(REPO / "policies" / "default")
    assert lock == REPO / "policies" / "versions.lock"
    entries = read_lock(lock)
    policy = load_policy(None)
    assert entries["default"][policy.version] == policy.semantic_sha256, (
        "policies/default changed without a version bump: bump `version`, add a CHANGELOG entry and run "
        "`decide check --update-lock policies/default`")


def test_lock_round_trip_and_update(tmp_path):
    policy = load_policy(None)
    lock = tmp_path / "versions.lock"
    changed, diags = update_lock(policy, lock)
    assert changed and not diags
    assert read_lock(lock) == {"default": {policy.version: policy.semantic_sha256}}
    assert update_lock(policy, lock) == (False, [])
    write_lock(lock, {"default": {policy.version: "0" * 64}})
    changed, diags = update_lock(policy, lock)
    assert not changed and [d.code for d in diags] == ["version-not-bumped"]
    assert read_lock(lock)["default"][policy.version] == "0" * 64


def test_version_diagnostics():
    policy = load_policy(None)
    loc = Location("policy.yaml", 3, 10)
    assert [d.code for d in lock_diagnostics(policy, {}, "l", loc)] == ["version-unlocked"]
    higher = {"default": {"9.0.0": "1" * 64}}
    assert [d.code for d in lock_diagnostics(policy, higher, "l", loc)] == ["version-older", "version-unlocked"]
    same_meaning = {"default": {"0.9.0": policy.semantic_sha256}}
    (note,) = lock_diagnostics(policy, same_meaning, "l", loc)
    assert note.severity == "note" and "same meaning as locked 0.9.0" in note.message
    assert lock_diagnostics(policy, None, None, loc) == []


def test_malformed_lock_files_are_located(tmp_path):
    bad = tmp_path / "versions.lock"
    bad.write_text("lock_version: 2\npolicies: {}\n")
    with pytest.raises(DiagnosticError) as err:
        read_lock(bad)
    assert err.value.diagnostics[0].code == "lock-bad-file"
    bad.write_text("lock_version: 1\npolicies:\n  default:\n    1.0.0: nothex\n")
    with pytest.raises(DiagnosticError) as err:
        read_lock(bad)
    assert str(err.value.diagnostics[0].location).endswith("versions.lock:4:12")
