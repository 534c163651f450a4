"""A tiny Llama model and tokenizer built locally, for tests and the README demo (no model hub).

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the bundled example corpus
(``examples/data/*.jsonl``); the model is a randomly initialised ``LlamaForCausalLM`` (hidden 64,
2 layers, 4 heads, 2 key/value heads by default) saved with ``save_pretrained``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def default_corpus() -> list[str]:
    """Return the bundled example data files (``examples/data/*.jsonl``), sorted.

    Raises ruleengine.paths.BundledDataMissing when the install ships none.
    """
    from ruleengine.paths import example_data

    return [str(path) for path in example_data()]


def corpus_texts(paths: list[str]) -> Iterator[str]:
    """Yield every string found in the JSONL files ``paths`` (all formats; bad lines skipped).

    The markup of the built-in chat templates (executors.chat_template) is added so its tokens are
    in the vocabulary.
    """
    from .formats import ROLES

    yield "### Instruction:\n### Input:\n### Response:\n"
    for role in (*ROLES, "tools"):
        yield f"<|{role}|>\n"
    yield "<tool_call></tool_call>"

    def strings(value: Any) -> Iterator[str]:
        """Yield the strings nested in a JSON value."""
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    yield from strings(json.loads(line))
                except json.JSONDecodeError:
                    continue


def train_tokenizer(paths: list[str], vocab_size: int = 512) -> Any:
    """Return a ``PreTrainedTokenizerFast`` with a byte-level BPE of ``vocab_size`` trained on ``paths``.

    Special tokens: ``<pad>`` (pad), ``<s>`` (bos), ``</s>`` (eos), ``<unk>``. Raises ValueError for
    a vocabulary smaller than the 256 byte symbols plus the special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} for a byte-level BPE")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_texts(paths), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def build_tiny_model(output_dir: str, corpus: list[str] | None = None, *, vocab_size: int = 512,
                     hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                     intermediate_size: int = 128, max_position_embeddings: int = 512, seed: int = 0) -> str:
    """Build and save a tiny random ``LlamaForCausalLM`` plus its tokenizer into ``output_dir``.

    Returns the absolute path of ``output_dir``. The model's vocabulary is the trained tokenizer's.
    Raises ValueError for an invalid shape (heads not dividing hidden, kv heads not dividing heads).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("num_heads must divide hidden_size and num_kv_heads must divide num_heads")
    corpus = corpus or default_corpus()
    tokenizer = train_tokenizer(corpus, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return os.path.abspath(output_dir)
