"""How a record body is kept on disk: the canonical JSON bytes as they are, or zlib-compressed against a
preset dictionary shared by the records of one policy.

The hash chain is defined over the canonical JSON bytes (``records.hash_body_bytes``); the codec only
changes how those exact bytes are stored, and decoding gives them back bit for bit. A wrong dictionary is
refused by zlib itself (the stream carries the dictionary's Adler-32), so a swapped dictionary cannot
silently produce other bytes.

Why a dictionary: a record is ~26 KB of canonical JSON, most of it the same keys, rule names, condition texts
and notes in every decision under one policy. zlib alone gets it to ~4.8 KB; against a dictionary made of one
earlier record of the same policy it is ~1.95 KB (level 3, ~85 µs; levels 1 and 2 are no faster against a
dictionary and 25-50 % larger; bench/bench_audit.py measures it).
"""

from __future__ import annotations

import threading
import zlib
from typing import Any

CODEC_JSON = "json"  # canonical JSON text as is (every record of a store_version 1 store)
CODEC_ZLIB_DICT = "zlib-dict"  # zlib stream (RFC 1950) of the canonical JSON, with a preset dictionary
CODECS = (CODEC_JSON, CODEC_ZLIB_DICT)
ZLIB_LEVEL = 3  # 3 vs 6: ~15 % larger, half the CPU time (see the module docstring)


class CodecError(ValueError):
    """Stored bytes cannot be decoded: unknown codec, corrupt stream, or the wrong dictionary."""


_PRIMED_MAX = 16
_primed: dict[tuple[bytes, int], Any] = {}
_primed_lock = threading.Lock()


def _primed_compressor(dictionary: bytes, level: int) -> Any:
    """Return a zlib compressor that has taken ``dictionary`` and no input yet, made once per dictionary.

    Setting a 26 KB dictionary costs about as much as a quarter of compressing a record; ``copy()`` of a primed
    compressor is a memcpy of its state and gives the very same stream (tests/ruleengine/audit/test_records.py).
    """
    key = (dictionary, level)
    primed = _primed.get(key)
    if primed is None:
        primed = zlib.compressobj(level, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, dictionary)
        with _primed_lock:
            if len(_primed) >= _PRIMED_MAX:
                _primed.clear()
            _primed[key] = primed
    return primed


def encode(body: bytes, dictionary: bytes | None, level: int = ZLIB_LEVEL) -> tuple[str, bytes]:
    """Return ``(codec, stored bytes)`` for the canonical ``body``: zlib against ``dictionary`` when one is given,
    else the body as it is (``json``). Never raises for bytes input."""
    if dictionary is None:
        return CODEC_JSON, body
    comp = _primed_compressor(bytes(dictionary), level).copy()
    return CODEC_ZLIB_DICT, comp.compress(body) + comp.flush()


def decode(codec: str | None, stored: bytes | str, dictionary: bytes | None) -> bytes:
    """Return the canonical body bytes kept as ``stored`` under ``codec`` (None means ``json``).

    Raises CodecError for an unknown codec, a missing dictionary, a corrupt zlib stream, trailing bytes, or a
    dictionary other than the one the stream was made with.
    """
    if codec in (None, CODEC_JSON):
        return stored.encode("utf-8") if isinstance(stored, str) else bytes(stored)
    if codec != CODEC_ZLIB_DICT:
        raise CodecError(f"unknown body codec {codec!r}")
    if dictionary is None:
        raise CodecError("the compression dictionary of this record is missing")
    if isinstance(stored, str):
        raise CodecError("a compressed body is stored as text")
    dec = zlib.decompressobj(15, dictionary)
    try:
        out = dec.decompress(bytes(stored))
    except zlib.error as exc:
        raise CodecError(f"the compressed body cannot be decoded ({exc}): corrupt, or the wrong dictionary") \
            from None
    if not dec.eof or dec.unused_data:
        raise CodecError("the compressed body is truncated or has trailing bytes")
    return out
