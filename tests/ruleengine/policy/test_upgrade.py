"""Memory keys of earlier policies: compiled with located warnings, read upgraded, hashed as written."""

from __future__ import annotations

import shutil
from pathlib import Path

from ruleengine.authoring.validation import validate_policy
from ruleengine.memory import MemoryConstants
from ruleengine.policy import load_policy
from ruleengine.policy.upgrade import upgraded

REPO = Path(__file__).resolve().parents[3]


def _old_style(tmp_path: Path) -> Path:
    policy = tmp_path / "p"
    shutil.copytree(REPO / "policies" / "default", policy, ignore=shutil.ignore_patterns("tests"))
    memory = (policy / "memory.yaml").read_text(encoding="utf-8")
    memory = memory.replace("    gather_root: all ", "    gather_root: true ", 1)
    memory = memory.replace("    adapter_per_element: 2", "    dora_per_output: 3\n    adapter_per_element: 2", 1)
    (policy / "memory.yaml").write_text(memory, encoding="utf-8")
    return policy


def test_retired_and_converted_keys_are_located_warnings(tmp_path):
    policy, diags = validate_policy(_old_style(tmp_path))
    assert policy is not None and not [d for d in diags if d.severity == "error"]
    found = {d.code: d for d in diags if d.code.startswith("memory-")}
    assert set(found) == {"memory-key-retired", "memory-value-converted"}
    retired, converted = found["memory-key-retired"], found["memory-value-converted"]
    assert retired.severity == converted.severity == "warning"
    assert retired.location.file.endswith("memory.yaml") and retired.path == "memory.activations.dora_per_output"
    assert "sized from the dtypes" in retired.message and "remove the key" in retired.help
    assert converted.path == "memory.sharding.gather_root" and "`memory.sharding.gather_root: true` is read as `all`" \
        in converted.message and converted.help == "write `gather_root: all`"


def test_the_document_stays_as_written_and_the_model_reads_the_upgrade(tmp_path):
    policy = load_policy(str(_old_style(tmp_path)))
    assert policy.memory["sharding"]["gather_root"] is True and policy.memory["activations"]["dora_per_output"] == 3
    constants = MemoryConstants.from_policy(policy.memory)
    assert constants.get("sharding", "gather_root") == "all"
    assert "dora_per_output" not in constants.raw["activations"]
    default = load_policy(None)
    assert MemoryConstants.from_policy(default.memory).raw == constants.raw  # same meaning as the default
    assert policy.semantic_sha256 != default.semantic_sha256  # hashed as written (the lock's hashes hold)


def test_upgraded_leaves_a_current_section_alone():
    section = {"sharding": {"gather_root": "lm_head"}, "activations": {"adapter_per_element": 2}}
    assert upgraded("memory", section) is section
    old = {"sharding": {"gather_root": False}, "activations": {"ia3_per_element": 1}}
    assert upgraded("memory", old) == {"sharding": {"gather_root": "none"}, "activations": {}}
    assert old == {"sharding": {"gather_root": False}, "activations": {"ia3_per_element": 1}}  # not changed
