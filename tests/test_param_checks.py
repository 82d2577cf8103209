"""Hyper-parameter checks of every loss (``Param.check``) and the buffer cache's environment (issue #20)."""

from __future__ import annotations

import numpy as np
import pytest

import fastloss as fl
from fastloss import _buffers


def _params(type_):
    return [(name, p) for name in fl.names() for p in fl.get(name)._params if p.type is type_]


BOOLS = _params(bool)
INTS = _params(int)
FLOATS = _params(float)


def _id(case):
    return f"{case[0]}.{case[1].name}"


def test_the_registry_has_parameters_of_every_type():
    assert len(BOOLS) >= 9 and INTS and FLOATS


@pytest.mark.parametrize("case", BOOLS, ids=_id)
def test_numpy_bools_are_bools(case):
    name, p = case
    for v in (np.True_, np.False_, True, False, 1, 0, np.int64(1)):
        got = p.check(name, v)
        assert type(got) is bool and got == bool(v)
    for v in (2, 0.5, "yes", None, np.array([True, False])):
        with pytest.raises(TypeError, match=p.name):
            p.check(name, v)


@pytest.mark.parametrize("case", INTS, ids=_id)
def test_ints_must_be_integers_that_fit_in_int64(case):
    name, p = case
    ok = p.default if p.default is not None else 0
    for v in (ok, np.int64(ok), np.int32(ok)):
        if p.domain is None or p.domain.contains(float(v)):
            got = p.check(name, v)
            assert type(got) is int and got == ok
    for v in (2**70, -(2**70), 2**63, np.uint64(2**64 - 1)):
        with pytest.raises(ValueError, match=rf"{p.name} must fit in a 64-bit integer"):
            p.check(name, v)
    for v in (float(ok), np.float64(ok), True, np.True_, "1", 1.5):
        with pytest.raises(TypeError, match=rf"{p.name} must be an integer"):
            p.check(name, v)


@pytest.mark.parametrize("case", FLOATS, ids=_id)
def test_floats_beyond_the_float64_range_are_a_value_error(case):
    name, p = case
    for v in (10**400, -(10**400)):
        with pytest.raises(ValueError, match=rf"{p.name} is outside the float64 range"):
            p.check(name, v)
    for v in (True, np.True_, "1.0", b"1"):
        with pytest.raises(TypeError, match=p.name):
            p.check(name, v)


def test_calls_reject_bad_parameters_before_computing():
    x = np.zeros((3, 4))
    y = np.array([0, 1, 2])
    with pytest.raises(TypeError, match="axis must be an integer"):
        fl.cross_entropy(x, y, axis=1.0)
    with pytest.raises(ValueError, match="ignore_index must fit"):
        fl.cross_entropy(x, y, ignore_index=2**70)
    with pytest.raises(ValueError, match="delta is outside the float64 range"):
        fl.huber(np.zeros(3), np.zeros(3), delta=10**400)
    # NumPy scalars of the right kind are accepted
    assert fl.cross_entropy(x, y, axis=np.int64(-1), ignore_index=np.int32(-100)) == fl.cross_entropy(x, y)
    a = np.ones((2, 3))
    assert fl.dice(a, a, from_logits=np.False_) == fl.dice(a, a, from_logits=False)


@pytest.mark.parametrize("text", ["inf", "INF", "infinity", "1e400", "inf G"])
def test_infinite_buffer_cache_size_is_a_clear_error(text):
    with pytest.raises(ValueError, match=r"FASTLOSS_BUFFER_CACHE.*finite"):
        _buffers._parse_bytes(text)
