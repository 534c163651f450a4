"""Decision ids are ULIDs: 48-bit milliseconds then 80 random bits, Crockford base32, sortable by time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import ruleengine.decision as decision
from ruleengine.decision import new_decision_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def reference(ms: int, random_part: bytes) -> str:
    """The ULID spec's encoding, digit by digit: 128 bits, 5 at a time from the least significant end."""
    value = (ms << 80) | int.from_bytes(random_part, "big")
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


class _Fixed:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def take(self, n: int) -> bytes:
        assert n == len(self.data)
        return self.data


@given(st.integers(0, 2**48 - 1), st.binary(min_size=10, max_size=10))
def test_the_id_is_the_ulid_of_its_time_and_random_bits(ms, random_part):
    saved = decision._ENTROPY
    decision._ENTROPY = _Fixed(random_part)  # type: ignore[assignment]
    try:
        assert new_decision_id(ms) == reference(ms, random_part)
    finally:
        decision._ENTROPY = saved


def test_ids_are_unique_and_sorted_by_time():
    ids = [new_decision_id(1_700_000_000_000 + i) for i in range(2000)]
    assert len(set(ids)) == 2000 and ids == sorted(ids)
    assert all(len(i) == 26 and set(i) <= set(CROCKFORD) for i in ids)


def test_entropy_blocks_are_consumed_without_reuse():
    source = decision._Entropy(block=25)
    parts = [source.take(10) for _ in range(50)]
    assert all(len(p) == 10 for p in parts) and len(set(parts)) == 50
