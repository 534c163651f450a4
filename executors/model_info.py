"""What a plan knows about a base model: module names and sizes read from the model built on the meta device."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelInfo:
    """What the plan needs to know about a model, read from the model built on the meta device."""

    model_type: str
    architecture: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int | None
    total_params: int
    linear_modules: list[str]  # leaf names of every nn.Linear except the output embedding
    attention_modules: list[str]
    mlp_modules: list[str]
    feedforward_modules: list[str]  # MLP projections whose *input* is the FFN intermediate (IA3's ff modules)
    no_split_modules: list[str] = field(default_factory=list)  # decoder layer classes (FSDP wrap policy)
    tie_word_embeddings: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the info as a JSON-safe dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Return a ModelInfo from :meth:`to_dict` output; raises TypeError on unknown keys."""
        return cls(**data)
