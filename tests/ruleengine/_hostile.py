"""Hostile facts for the hardening property tests: every facts field, every JSON type, extreme values.

Loaded by path (the tests are not a package): ``hostile_facts()`` draws a valid base and puts 1-3
values of any JSON type (or non-JSON floats: NaN, +-Infinity, 1e400) at any field path, including
unknown fields and list items.
"""

from __future__ import annotations

import copy
import json
import math

from hypothesis import strategies as st

BASE = {"model": {"params": "13B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 1},
        "data": {"examples": "50k"}, "task": {"use_case": "domain_qa"}}

FIELDS = [
    ("model",), ("model", "name"), ("model", "params"), ("model", "config"), ("model", "exact"),
    ("hardware",), ("hardware", "gpu"), ("hardware", "gpu_memory_gb"), ("hardware", "gpu_count"),
    ("hardware", "host_memory_gb"),
    ("data",), ("data", "examples"), ("data", "avg_tokens"), ("data", "seq_len"), ("data", "tasks"),
    ("data", "tasks", 0), ("data", "tasks", 0, "name"), ("data", "tasks", 0, "examples"),
    ("task",), ("task", "use_case"), ("task", "shift"), ("task", "quality"),
    ("serving",), ("serving", "latency_sensitive"), ("serving", "requests_per_day"), ("serving", "avg_latency_ms"),
    ("serving", "adapters"),
    ("training",), ("training", "precision"), ("training", "optimizer"), ("training", "micro_batch_size"),
    ("training", "seq_len"), ("training", "gradient_checkpointing"), ("training", "sharding"),
    ("training", "lora_rank"), ("training", "target_modules"), ("training", "target_modules", 0),
    ("training", "num_virtual_tokens"), ("training", "epochs"),
    ("unknown",), ("model", "unknown"), ("training", "config"),
]

EXTREME_NUMBERS = [0, -1, 1, 2, 7, 1023, 1024, 1025, 65536, 65537, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64,
                   10**12, 10**13, 10**13 + 1, 10**30, 10**400, -(10**400), 0.0, -0.0, 0.5, 1e-300, 5e-324, 1e6,
                   1e12, 1e13, 1e30, 1e300, 1.7976931348623157e308, -1e308, math.nan, math.inf, -math.inf]
EXTREME_STRINGS = ["", " ", "7B", "13b", "1.1B", "10T", "11T", "9e12", "1e400", "1e400B", "nan", "NaN", "inf",
                   "Infinity", "-1", "0", "0k", "9" * 400 + "B", "50k", "a100-80gb", "h200", "all-linear", "attention",
                   "mlp", "q_proj", "q_prj", "lora", "domain_qa", "zero3_offload", "\ud800", "a\udfffb", "\x00",
                   "é" * 50, "x" * 5000, "/etc/passwd", "/dev/zero", "../../secret", "0x10", "1_000", "७"]

scalars = st.one_of(
    st.sampled_from(EXTREME_NUMBERS), st.sampled_from(EXTREME_STRINGS), st.booleans(), st.none(),
    st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)


def _deep(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


containers = st.one_of(
    st.just([]), st.just({}), st.sampled_from([_deep(9), _deep(40), _deep(300)]),
    st.lists(scalars, max_size=5), st.dictionaries(st.text(max_size=10), scalars, max_size=4),
    st.builds(lambda n: [{"name": f"t{i}", "examples": 10} for i in range(n)], st.sampled_from([1, 999, 1000, 1001,
                                                                                                5000])),
    st.builds(lambda v: {"model_type": "llama", "hidden_size": v, "intermediate_size": 11008, "num_hidden_layers": 32,
                         "num_attention_heads": 32, "vocab_size": 32000}, scalars),
    st.builds(lambda n: ["q_proj"] * n, st.sampled_from([1, 256, 257])),
)

values = st.one_of(scalars, containers)


def put(facts: dict, path: tuple, value: object) -> None:
    """Set ``path`` in ``facts`` to ``value``, creating containers on the way (a path through a scalar of the
    wrong kind replaces it; a string key into a list, or an index into a mapping, leaves ``facts`` as it is)."""
    node: object = facts
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, dict) and isinstance(part, str):
            if last:
                node[part] = value
                return
            child = node.get(part)
            if not isinstance(child, (dict, list)):
                child = [] if isinstance(path[i + 1], int) else {}
                node[part] = child
            node = child
        elif isinstance(node, list) and isinstance(part, int):
            while len(node) <= part:
                node.append({})
            if last:
                node[part] = value
                return
            if not isinstance(node[part], (dict, list)):
                node[part] = [] if isinstance(path[i + 1], int) else {}
            node = node[part]
        else:
            return


@st.composite
def hostile_facts(draw) -> dict:
    """Return a facts dict with 1-3 fields set to extreme values of any type."""
    facts = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        put(facts, draw(st.sampled_from(FIELDS)), copy.deepcopy(draw(values)))
    return facts


def as_json_text(facts: dict) -> str:
    """Return ``facts`` as JSON text; NaN/Infinity written as the (invalid) JSON tokens a careless client sends."""
    return json.dumps(facts, allow_nan=True)


def strict_loads(raw: bytes | str) -> object:
    """Parse strict JSON (NaN/Infinity refused); raises ValueError otherwise."""
    def refuse(name: str) -> object:
        raise ValueError(f"{name} in output")

    return json.loads(raw, parse_constant=refuse)


# --- valid facts at the edges of the schema's bounds (what must reach the rules engine safely) -------------

EDGES = {
    ("model", "params"): [1e6, 1.5e6, 7e9, 1e12, 9.99e12, 1e13, "1M", "10T", "0.5T"],
    ("hardware", "gpu_memory_gb"): [1e-9, 0.5, 24, 80, 4095.9, 4096],
    ("hardware", "gpu_count"): [1, 2, 8, 1024, 65535, 65536],
    ("hardware", "host_memory_gb"): [1e-9, 64, 2048, 65536],
    ("data", "examples"): [0, 1, 100, "50k", 1e9, 1e12, "1T"],
    ("data", "avg_tokens"): [1e-9, 1, 512, 1e5, 1e7],
    ("data", "seq_len"): [1, 2, 2048, 131072, 10_000_000],
    ("serving", "requests_per_day"): [0, 1, "1M", 1e12],
    ("serving", "avg_latency_ms"): [1e-9, 1, 200, 3_600_000],
    ("serving", "adapters"): [1, 2, 100, 100_000],
    ("serving", "latency_sensitive"): [True, False],
    ("training", "micro_batch_size"): [1, 2, 64, 4096],
    ("training", "seq_len"): [1, 2, 4096, 10_000_000],
    ("training", "lora_rank"): [1, 8, 1024],
    ("training", "num_virtual_tokens"): [1, 20, 1024],
    ("training", "epochs"): [1e-9, 0.5, 3, 1000],
    ("training", "precision"): ["fp32", "bf16_mixed", "fp16_mixed", "bf16_pure"],
    ("training", "optimizer"): ["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"],
    ("training", "sharding"): ["auto", "none", "zero2", "zero3", "fsdp", "zero3_offload"],
    ("training", "gradient_checkpointing"): [True, False],
    ("training", "target_modules"): ["all-linear", "attention", "mlp", ["q_proj", "v_proj"], ["down_proj"]],
    ("task", "use_case"): ["domain_qa", "chat", "classification", "code"],
    ("task", "shift"): ["style_format", "domain_adaptation", "new_knowledge", "continual_pretraining"],
    ("task", "quality"): ["research_best", "production", "prototype"],
    ("data", "tasks"): [[{"name": "a", "examples": 0}], [{"name": "a", "examples": 1e12}, {"name": "b", "examples": 1}],
                        [{"name": f"t{i}", "examples": 1e9} for i in range(1000)]],
}


@st.composite
def edge_facts(draw) -> dict:
    """Return valid facts (mostly) with 1-8 fields at the edges of their documented bounds."""
    facts = copy.deepcopy(BASE)
    for path in draw(st.lists(st.sampled_from(sorted(EDGES)), min_size=1, max_size=8, unique=True)):
        value = copy.deepcopy(draw(st.sampled_from(EDGES[path])))
        if path == ("data", "tasks"):
            facts["data"].pop("examples", None)
        put(facts, path, value)
    return facts
