"""Architecture inferred from a parameter count alone: a plausible Llama-family shape.

Used when the facts give ``model.params`` (e.g. ``7B``) and no config: the memory model still
needs widths and a layer count, interpolated here between known Llama shapes.
"""

from __future__ import annotations

import math

from .model import Architecture, ArchitectureError

# Smallest parameter count infer_from_params accepts: below it the embeddings of any plausible
# vocabulary would be most of the model and the inferred shape would be meaningless.
MIN_INFER_PARAMS = 5e7


# --- inferred from a parameter count --------------------------------------------------------

# Known Llama-family shapes: (total params, hidden, layers, intermediate). The intermediate column is
# the running maximum so that every dimension grows with the parameter count (Llama-2-13B's 13824 is
# raised to Llama-3-8B's 14336); the inferred family must be monotone so that a larger model never
# gets a smaller estimate.
LLAMA_SHAPES: tuple[tuple[float, int, int, int], ...] = (
    (1.10e9, 2048, 22, 5632),     # TinyLlama-1.1B
    (3.21e9, 3072, 28, 8192),     # Llama-3.2-3B
    (6.74e9, 4096, 32, 11008),    # Llama-2-7B
    (8.03e9, 4096, 32, 14336),    # Llama-3-8B
    (13.0e9, 5120, 40, 14336),    # Llama-2-13B (intermediate 13824 raised, see above)
    (33.7e9, 8192, 48, 22016),    # CodeLlama-34B
    (69.0e9, 8192, 80, 28672),    # Llama-2-70B
    (405.9e9, 16384, 126, 53248),  # Llama-3.1-405B
)
INFERRED_HEAD_DIM = 128
INFERRED_MAX_KV_HEADS = 8
SMALL_VOCAB, LARGE_VOCAB = 32000, 128256  # Llama-2 and Llama-3 tokenizers
LARGE_VOCAB_FROM = 3e9  # Llama-3.2-3B and up use the 128k vocabulary
UNTIED_FROM = 1e9


def _interp(n: float, column: int) -> float:
    xs = [math.log(s[0]) for s in LLAMA_SHAPES]
    ys = [float(s[column]) for s in LLAMA_SHAPES]
    x = math.log(n)
    if x <= xs[0]:  # below TinyLlama: dimensions shrink like the cube root of the count
        return ys[0] * (n / LLAMA_SHAPES[0][0]) ** (1 / 3)
    if x >= xs[-1]:
        return ys[-1] * (n / LLAMA_SHAPES[-1][0]) ** (1 / 3)
    for k in range(len(xs) - 1):
        if xs[k] <= x <= xs[k + 1]:
            t = (x - xs[k]) / (xs[k + 1] - xs[k])
            return math.exp(math.log(ys[k]) + t * (math.log(ys[k + 1]) - math.log(ys[k])))
    raise AssertionError("unreachable")


def infer_from_params(n_params: float) -> Architecture:
    """Return a plausible Llama-family Architecture for a model of ``n_params`` parameters.

    Hidden size, layers and MLP width are interpolated (log-log) between known Llama shapes
    (:data:`LLAMA_SHAPES`) and rounded down (hidden to a multiple of 128, MLP width to 256), heads
    are 128 wide with at most 8 KV heads (GQA), the vocabulary is 128256 from 3B up and 32000 below,
    and embeddings are tied below 1B. Every dimension is non-decreasing in ``n_params``. The
    returned ``params`` is ``n_params`` itself (``source="inferred"``); the shape's own count is
    within 20% of it from 150M parameters up (tests/ruleengine/test_architecture.py), and
    :meth:`Architecture.param_breakdown` counts the difference as linear-layer weights. Raises ArchitectureError (field ``params``) for counts below 50M or not finite.
    """
    if not isinstance(n_params, (int, float)) or isinstance(n_params, bool) or not math.isfinite(n_params):
        raise ArchitectureError(f"cannot infer an architecture from {n_params!r} parameters", "params")
    if n_params < MIN_INFER_PARAMS:
        raise ArchitectureError(f"cannot infer an architecture for {n_params:.3g} parameters (minimum "
                                f"{MIN_INFER_PARAMS:.0e}); give model.config for small models", "params")
    h = max(256, int(_interp(n_params, 1) + 1e-6) // 128 * 128)
    layers = max(2, int(_interp(n_params, 2) + 1e-6))
    inter = max(512, int(_interp(n_params, 3) + 1e-6) // 256 * 256)
    heads = h // INFERRED_HEAD_DIM
    kv = min(INFERRED_MAX_KV_HEADS, heads)  # not necessarily a divisor of heads: only widths matter here
    vocab = LARGE_VOCAB if n_params >= LARGE_VOCAB_FROM else SMALL_VOCAB
    return Architecture(
        hidden_size=h, num_layers=layers, intermediate_size=inter, num_attention_heads=heads, num_kv_heads=kv,
        head_dim=INFERRED_HEAD_DIM, vocab_size=vocab, tie_word_embeddings=n_params < UNTIED_FROM, mlp="gated",
        model_type="llama", params=int(round(n_params)), source="inferred",
    )
