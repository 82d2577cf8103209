"""The cache of large result buffers: reused only when no array can see them any more."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from cases import in_threads

import fastloss as fl
from fastloss import _buffers

# just above the size the cache starts at, in float32
N = _buffers.MIN_BYTES // 4 + 256


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts from an empty cache with the default limit, and leaves it so."""
    limit = fl.buffer_cache()["limit"]
    fl.buffer_cache(2 << 30)
    fl.empty_cache()
    yield
    fl.empty_cache()
    fl.buffer_cache(limit)


def _pair(seed, n=N):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)


def _mse_grad(p, t):
    return (2.0 * (p.astype(np.float64) - t) / p.size).astype(np.float32)


def _grad_cases():
    """One large gradient of each host kind that allocates one: (name, call, inputs of two seeds)."""
    rows = N // 1024 + 1

    def ce(seed):
        r = np.random.default_rng(seed)
        return (r.standard_normal((rows, 1024), dtype=np.float32), r.integers(0, 1024, rows))

    def dice(seed):
        r = np.random.default_rng(seed)
        return (r.standard_normal((rows, 1024), dtype=np.float32), (r.random((rows, 1024)) < 0.5).astype(np.float32))

    return [
        ("mse", fl.mse.grad, lambda s: _pair(s)),
        ("mse-general", lambda p, t: fl.mse.grad(p, t, weight=np.ones(1, np.float32)), lambda s: _pair(s)),
        ("cross_entropy", fl.cross_entropy.grad, ce),
        ("dice", fl.dice.grad, dice),
    ]


@pytest.mark.parametrize("name,grad,make", _grad_cases(), ids=[c[0] for c in _grad_cases()])
def test_released_gradient_is_reused_and_held_one_is_not(name, grad, make):
    a, b = make(1), make(2)
    ref_b = grad(*b).copy()
    fl.empty_cache()
    g = grad(*a)
    ref_a = g.copy()
    address = g.ctypes.data
    g2 = grad(*b)  # g is still held: its memory must not be written
    assert g2.ctypes.data != address
    np.testing.assert_array_equal(g, ref_a)
    np.testing.assert_array_equal(g2, ref_b)
    del g, g2
    hits = fl.buffer_cache()["hits"]
    g3 = grad(*b)
    assert fl.buffer_cache()["hits"] == hits + 1
    np.testing.assert_array_equal(g3, ref_b)


def test_same_memory_after_release():
    p, t = _pair(1)
    g = fl.mse.grad(p, t)
    address = g.ctypes.data
    del g
    g = fl.mse.grad(p, t)
    assert g.ctypes.data == address
    np.testing.assert_allclose(g, _mse_grad(p, t), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("keep", ["slice", "reshape", "memoryview", "base-chain"])
def test_anything_derived_from_a_gradient_keeps_it_busy(keep):
    p, t = _pair(1)
    p2, t2 = _pair(2)
    g = fl.mse.grad(p, t)
    expected = g.copy()
    if keep == "slice":
        held, view_of = g[::3], expected[::3]
    elif keep == "reshape":
        held, view_of = g.reshape(-1, 256)[1:], expected.reshape(-1, 256)[1:]
    elif keep == "memoryview":
        held, view_of = memoryview(g), expected
    else:
        held, view_of = np.asarray(g.view(np.int32)).view(np.float32), expected
    del g
    for _ in range(3):
        fl.mse.grad(p2, t2)
    np.testing.assert_array_equal(np.asarray(held), view_of)


def test_value_and_grad_and_none_reduction_use_it_too():
    p, t = _pair(1)
    loss, g = fl.mse.value_and_grad(p, t)
    del g
    hits = fl.buffer_cache()["hits"]
    loss2, g2 = fl.mse.value_and_grad(p, t)
    assert fl.buffer_cache()["hits"] == hits + 1
    np.testing.assert_allclose(g2, _mse_grad(p, t), rtol=1e-6, atol=1e-12)
    assert loss2 == loss
    per = fl.mse(p, t, reduction="none")
    np.testing.assert_allclose(per, (p.astype(np.float64) - t) ** 2, rtol=1e-6)
    held = per.copy()
    per2 = fl.mse(p * 2, t, reduction="none")
    np.testing.assert_array_equal(per, held)
    assert per2.ctypes.data != per.ctypes.data


def test_out_and_small_arrays_bypass_the_cache():
    p, t = _pair(1)
    out = np.empty_like(p)
    before = fl.buffer_cache()
    assert fl.mse.grad(p, t, out=out) is out
    small = fl.mse.grad(p[:1000], t[:1000])
    after = fl.buffer_cache()
    assert (after["hits"], after["misses"], after["buffers"]) == (before["hits"], before["misses"], before["buffers"])
    assert small.flags.owndata


def test_limit_zero_disables_and_empty_cache_releases():
    p, t = _pair(1)
    g = fl.mse.grad(p, t)
    info = fl.buffer_cache()
    assert info["buffers"] == 1 and info["reserved"] == g.nbytes and info["idle"] == 0
    del g
    assert fl.buffer_cache()["idle"] == p.nbytes
    assert fl.empty_cache() == p.nbytes
    assert fl.buffer_cache()["reserved"] == 0
    hits = fl.buffer_cache(0)["hits"]
    g = fl.mse.grad(p, t)
    del g
    g = fl.mse.grad(p, t)
    info = fl.buffer_cache()
    assert info["limit"] == 0 and info["buffers"] == 0 and info["reserved"] == 0 and info["hits"] == hits
    np.testing.assert_allclose(g, _mse_grad(p, t), rtol=1e-6, atol=1e-12)


def test_limit_is_respected_and_lowering_it_trims():
    p, t = _pair(1)
    fl.buffer_cache(3 * p.nbytes)
    held = [fl.mse.grad(p * k, t) for k in range(1, 6)]  # five busy buffers, three cached
    info = fl.buffer_cache()
    assert info["buffers"] == 3 and info["reserved"] == 3 * p.nbytes
    for k, g in enumerate(held, 1):
        np.testing.assert_allclose(g, _mse_grad(p * k, t), rtol=1e-5, atol=1e-12)
    fl.buffer_cache(p.nbytes)  # all busy: nothing can go yet
    assert fl.buffer_cache()["reserved"] == 3 * p.nbytes
    del held
    fl.mse.grad(p, t)  # the next request trims the now idle excess
    assert fl.buffer_cache()["reserved"] <= p.nbytes


def test_eight_threads_never_share_a_buffer():
    inputs = [_pair(s) for s in range(8)]
    expected = [_mse_grad(p, t) for p, t in inputs]

    def work(k):
        p, t = inputs[k]
        for _ in range(6):
            g = fl.mse.grad(p, t)
            fl.mse.grad(t, p)  # released at once: recycled by whichever thread comes next
            np.testing.assert_allclose(g, expected[k], rtol=1e-6, atol=1e-12)
            del g

    in_threads(work)
    assert fl.buffer_cache()["hits"] > 0


@pytest.mark.parametrize("text,value", [("0", 0), ("1048576", 1 << 20), ("512M", 512 << 20), ("512MiB", 512 << 20),
                                        ("2g", 2 << 30), ("1.5K", 1536), (" 64 MB ", 64 << 20)])
def test_environment_byte_counts(text, value):
    assert _buffers._parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1", "5X", "nan"])
def test_bad_environment_byte_counts(text):
    with pytest.raises(ValueError, match="FASTLOSS_BUFFER_CACHE"):
        _buffers._parse_bytes(text)


def test_environment_sets_the_limit_at_import():
    env = dict(os.environ, FASTLOSS_BUFFER_CACHE="0")
    code = "import fastloss as fl; print(fl.buffer_cache()['limit'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (1.5, TypeError), ("1G", TypeError), (True, TypeError)])
def test_bad_limits(bad, exc):
    with pytest.raises(exc, match="max_bytes"):
        fl.buffer_cache(bad)


def _child_sum(q):
    p, t = _pair(3)
    g = fl.mse.grad(p, t)
    del g
    g = fl.mse.grad(p, t)
    q.put(float(np.sum(g, dtype=np.float64)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_uses_its_own_cache():
    import multiprocessing as mp

    p, t = _pair(3)
    held = fl.mse.grad(p, t)  # the parent holds a cached buffer across the fork
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_child_sum, args=(q,))
    child.start()
    got = q.get(timeout=120)
    child.join(timeout=120)
    assert child.exitcode == 0
    assert got == pytest.approx(float(np.sum(_mse_grad(p, t), dtype=np.float64)), rel=1e-5)
    np.testing.assert_allclose(held, _mse_grad(p, t), rtol=1e-6, atol=1e-12)
