import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ruleengine.units import format_count, parse_count


@pytest.mark.parametrize("text,value", [
    ("7B", 7e9), ("1.1B", 1.1e9), ("350M", 350e6), ("50k", 50_000), ("50K", 50_000), ("12000", 12000),
    (" 2.5 m ", 2.5e6), ("1e3", 1000), ("0", 0), (13, 13), (0.5, 0.5), ("1T", 1e12),
])
def test_parse_count_accepts_suffixes(text, value):
    assert math.isclose(parse_count(text), value)


@pytest.mark.parametrize("bad", ["7X", "", "B", "-5", -1, True, None, "nan", float("nan"), float("inf"), [1]])
def test_parse_count_rejects(bad):
    with pytest.raises(ValueError):
        parse_count(bad)


@given(st.floats(min_value=1, max_value=1e13, allow_nan=False))
def test_format_then_parse_is_close(x):
    assert math.isclose(parse_count(format_count(x)), x, rel_tol=0.01)
