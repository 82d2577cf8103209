"""The thread launcher behind the pointwise kind's parallel path."""

from __future__ import annotations

import threading

import numba
import numpy as np
import pytest
from cases import in_threads
from hypothesis import given
from hypothesis import strategies as st

from fastloss import _launcher


@given(st.integers(1, 100_000), st.integers(1, 64))
def test_pieces_cover_every_chunk_once_in_order(nchunks, threads):
    pieces = _launcher.pieces(nchunks, threads)
    assert pieces[0][0] == 0 and pieces[-1][1] == nchunks
    assert all(a < b for a, b in pieces)
    assert all(pieces[k][1] == pieces[k + 1][0] for k in range(len(pieces) - 1))
    assert len(pieces) <= threads * _launcher.PIECES_PER_THREAD
    if len(pieces) > 1:
        # no thread left running one piece more than the others
        assert len(pieces) < threads or len(pieces) % threads == 0
        assert min(b - a for a, b in pieces) >= _launcher.MIN_PIECE_CHUNKS


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_every_piece_runs_exactly_once(threads):
    ranges = _launcher.pieces(10_000, threads)
    hits = np.zeros(10_000, dtype=np.int64)
    seen = []

    def fn(hits, c0, c1):
        hits[c0:c1] += 1
        seen.append(threading.get_ident())

    _launcher.run_ranges(fn, (hits,), ranges, threads)
    assert (hits == 1).all()
    assert len(seen) == len(ranges)


@pytest.mark.parametrize("failing", [0, 5])  # the caller's first piece, and one a worker may take
def test_an_error_in_any_piece_reaches_the_caller(failing):
    ranges = [(k, k + 1) for k in range(8)]

    def fn(c0, c1):
        if c0 == failing:
            raise ZeroDivisionError(f"piece {c0}")

    with pytest.raises(ZeroDivisionError, match=f"piece {failing}"):
        _launcher.run_ranges(fn, (), ranges, 2)
    _launcher.run_ranges(lambda c0, c1: None, (), ranges, 2)  # the pool still works


def test_results_do_not_stay_referenced_after_the_call():
    import sys

    buf = np.zeros(64)
    before = sys.getrefcount(buf)
    for _ in range(20):
        _launcher.run_ranges(lambda b, c0, c1: None, (buf,), [(k, k + 1) for k in range(8)], 2)
    assert sys.getrefcount(buf) == before


def test_many_callers_at_once():
    def caller(tid):
        for _ in range(50):
            hits = np.zeros(64, dtype=np.int64)
            _launcher.run_ranges(lambda h, c0, c1: h.__setitem__(slice(c0, c1), h[c0:c1] + 1),
                                 (hits,), [(k * 8, k * 8 + 8) for k in range(8)], 4)
            assert (hits == 1).all()

    in_threads(caller)


def test_thread_count_follows_numba():
    numba.get_num_threads()  # once the backend has started, numba.set_num_threads is honoured
    numba.set_num_threads(1)
    try:
        assert _launcher.num_threads() == 1
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert _launcher.num_threads() == numba.config.NUMBA_NUM_THREADS


# --- which path a pointwise call takes (fastloss.kinds.pointwise.host.run_driver) ---


@pytest.fixture
def launches(monkeypatch):
    """The piece lists of the parallel launches made during a test."""
    seen = []
    real = _launcher.run_ranges

    def spy(fn, args, ranges, threads):
        seen.append(ranges)
        return real(fn, args, ranges, threads)

    monkeypatch.setattr(_launcher, "run_ranges", spy)
    return seen


def _inputs(n):
    rng = np.random.default_rng(0)
    return rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)


def test_path_follows_size_and_measured_speed(launches, monkeypatch):
    import fastloss as fl
    from fastloss import _config
    from fastloss.kinds.pointwise import host as _pointwise

    drv = _pointwise.POINTWISE.driver(fl.mse.spec)
    mid = (_config.POINTWISE_SERIAL_BELOW + _config.POINTWISE_PARALLEL_FROM) // 2
    fl.mse.value_and_grad(*_inputs(mid))  # compiled, if not yet
    want = fl.mse.value_and_grad(*_inputs(mid))
    launches.clear()
    monkeypatch.setitem(_pointwise._serial_cost, drv, 1e-6)  # as slow as 1 µs per element: worth threads
    got = fl.mse.value_and_grad(*_inputs(mid))
    assert len(launches) == 1
    assert got[0] == want[0] and np.array_equal(got[1], want[1])
    monkeypatch.setitem(_pointwise._serial_cost, drv, 1e-12)  # cheap: serial
    fl.mse.value_and_grad(*_inputs(mid))
    assert len(launches) == 1
    fl.mse.value_and_grad(*_inputs(_config.POINTWISE_SERIAL_BELOW - 1))  # small: serial, whatever the speed
    monkeypatch.setitem(_pointwise._serial_cost, drv, 1.0)
    fl.mse.value_and_grad(*_inputs(_config.POINTWISE_SERIAL_BELOW - 1))
    assert len(launches) == 1
    monkeypatch.setitem(_pointwise._serial_cost, drv, 1e-12)
    fl.mse.value_and_grad(*_inputs(_config.POINTWISE_PARALLEL_FROM))  # large: parallel, whatever the speed
    assert len(launches) == 2


def test_a_call_that_compiles_is_not_taken_as_a_speed(launches):
    import fastloss as fl
    from fastloss import _config
    from fastloss.kinds.pointwise import host as _pointwise

    @fl.pointwise
    def cubic_test_loss(pred, target):
        d = pred - target
        return d * d * d, 3.0 * d * d

    mid = _config.POINTWISE_SERIAL_BELOW + 1000
    cubic_test_loss.value_and_grad(*_inputs(mid))  # compiles (or loads from the disk cache)
    drv = _pointwise.POINTWISE.driver(cubic_test_loss.spec)
    assert drv not in _pointwise._serial_cost and not launches
    cubic_test_loss.value_and_grad(*_inputs(mid))
    assert 0.0 < _pointwise._serial_cost[drv] < 1e-6  # a real speed: well under a microsecond per element
