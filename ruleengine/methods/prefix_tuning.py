"""Prefix tuning (Li & Liang 2021): trained key/value prefixes in every attention layer."""

from __future__ import annotations

from typing import Any

from ..trainable import count_prefix
from .prompt_tuning import virtual_tokens
from .spec import CostTerms, MemoryTerms, MethodConfig, MethodSpec


def prefix_tokens(cfg: MethodConfig, seq_len: int) -> tuple[int, int]:
    """Return (queries, keys) per sequence: the prefix adds keys, not queries."""
    return seq_len, seq_len + (cfg.num_virtual_tokens or 0)


def prefix_keys_values(arch: Any, cfg: MethodConfig, micro_batch: int, c: Any, dt: Any) -> float:
    """Return the learned keys and values of every layer, per sequence of the micro-batch (bytes).

    peft expands the prefix (adapter dtype) per sequence and casts it to the activations' dtype.
    """
    a = c.get("activations")
    return micro_batch * (cfg.num_virtual_tokens or 0) * arch.num_layers * arch.kv_dim * a["attention_kv"] * dt.scale


def prefix_recompute(c: Any) -> tuple[bool, str]:
    """Return whether checkpointing can be used with prefix tuning, and the note when it cannot."""
    if c.get("prefix_tuning", "disable_checkpointing"):
        return False, "prefix tuning does not work with gradient checkpointing in peft; estimated without it"
    return True, ""


SPEC = MethodSpec(
    name="prefix_tuning", label="prefix tuning", order=7,
    summary="trained key/value prefixes in every attention layer",
    hyperparameters=frozenset({"num_virtual_tokens"}),
    trainable=count_prefix,
    memory=MemoryTerms(tokens=prefix_tokens, sequence_extra=prefix_keys_values, recompute=prefix_recompute),
    cost=CostTerms(extra_tokens=virtual_tokens, recompute=False),
    executor="executors.prefix_tuning:PrefixTuningExecutor",
    colour="#8c564b", peft_type="PREFIX_TUNING", defaults={"num_virtual_tokens": 20},
)
