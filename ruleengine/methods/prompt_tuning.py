"""Prompt tuning (Lester et al. 2021): trained soft-prompt embeddings prepended to the input."""

from __future__ import annotations

from ..trainable import count_prompt
from .spec import CostTerms, MemoryTerms, MethodConfig, MethodSpec


def prompt_tokens(cfg: MethodConfig, seq_len: int) -> tuple[int, int]:
    """Return (queries, keys) per sequence: the soft prompt lengthens the input itself."""
    n = seq_len + (cfg.num_virtual_tokens or 0)
    return n, n


def virtual_tokens(cfg: MethodConfig) -> int:
    """Return the virtual tokens processed per sequence."""
    return int(cfg.num_virtual_tokens or 0)


SPEC = MethodSpec(
    name="prompt_tuning", label="prompt tuning", order=6,
    summary="trained soft-prompt embeddings on the input",
    hyperparameters=frozenset({"num_virtual_tokens"}),
    trainable=count_prompt,
    memory=MemoryTerms(tokens=prompt_tokens),
    cost=CostTerms(extra_tokens=virtual_tokens),
    executor="executors.prompt_tuning:PromptTuningExecutor",
    colour="#bcbd22", peft_type="PROMPT_TUNING", defaults={"num_virtual_tokens": 20},
)
