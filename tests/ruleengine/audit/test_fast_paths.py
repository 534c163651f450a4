"""The append fast paths give exactly the bytes of the slow, obvious ones: serialising once with a scan for
non-str keys, the primed zlib compressor, PreparedRecord pickled without its decision dict."""

from __future__ import annotations

import json
import pickle
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ruleengine.audit import InvalidRecord, canonical_json
from ruleengine.audit.codec import CODEC_ZLIB_DICT, decode, encode
from ruleengine.audit.records import canonical_decision, prepare_record

keys = st.one_of(st.text(max_size=5), st.integers(-20, 20), st.floats(allow_nan=False, allow_infinity=False),
                 st.booleans(), st.none(), st.sampled_from(["7b", "-1", "null", "true", "10", "2"]))
leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53), st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=8), st.sampled_from(['a"b', '",1:', '\\', '{"1":2}', "é"]))
value = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                                                   st.dictionaries(keys, inner, max_size=4)), max_leaves=14)


def _obvious(decision: dict) -> str:
    """The definition: the canonical JSON of the decision as it reads back from JSON."""
    return canonical_json(json.loads(json.dumps(decision, ensure_ascii=False, allow_nan=False)))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, value, max_size=5))
def test_canonical_decision_is_the_canonical_json_of_the_json_copy(decision):
    _copy, text = canonical_decision(decision)
    assert text == _obvious(decision)
    assert canonical_json(json.loads(text)) == text  # canonical: its parse serialises to the same bytes


def test_int_keys_that_sort_differently_as_numbers_are_copied_first():
    decision = {"m": {2: "two", 10: "ten"}, "n": {1.5: 0, -3: 1}, "o": {None: 1}, "p": {True: 1, False: 0}}
    copy, text = canonical_decision(decision)
    assert text == '{"m":{"10":"ten","2":"two"},"n":{"-3":1,"1.5":0},"o":{"null":1},"p":{"false":0,"true":1}}'
    assert copy == json.loads(text)


def test_str_keys_that_look_like_numbers_need_no_copy():
    decision = {"gpus": {"10": 1, "2": 2, "7b": 3, "null": 4}}
    copy, text = canonical_decision(decision)
    assert copy is decision  # a false alarm costs a walk, not a copy
    assert text == '{"gpus":{"10":1,"2":2,"7b":3,"null":4}}'


def test_a_decision_that_contains_itself_is_an_invalid_record():
    loop: dict = {"decision_id": "x"}
    loop["self"] = loop
    with pytest.raises(InvalidRecord, match="contains itself"):
        canonical_decision(loop)


def test_the_primed_compressor_gives_the_stream_of_a_fresh_one(make_decision, snap_sha):
    bodies = [prepare_record(make_decision(rank=r), snap_sha).body_bytes(r) for r in (4, 8, 16, 32)]
    dictionary = bodies[0]
    for body in bodies:
        fresh = zlib.compressobj(3, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, dictionary)
        codec, stored = encode(body, dictionary)
        assert codec == CODEC_ZLIB_DICT
        assert stored == fresh.compress(body) + fresh.flush()
        assert decode(codec, stored, dictionary) == body
        assert encode(body, dictionary) == (codec, stored)  # the primed state is copied, never consumed


def test_a_prepared_record_pickles_as_its_texts(make_decision, snap_sha):
    prepared = prepare_record(make_decision(), snap_sha)
    data = pickle.dumps(prepared)
    assert len(data) < 1.3 * len(prepared.decision_text) + 1500  # the text once, not the decision dict as well
    back = pickle.loads(data)
    assert back.body_bytes(7) == prepared.body_bytes(7)
    assert (back.id, back.policy_sha256, back.columns) == (prepared.id, prepared.policy_sha256, prepared.columns)
    assert back.envelope == json.loads(json.dumps(prepared.envelope))
