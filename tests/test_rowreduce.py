"""The rowreduce kind (and the similarity kind where it applies): the driver's guarantees.

Determinism across thread counts and across the serial, row-parallel and split paths, gradient
statistics, ``out=`` buffers and in-place gradients, memory layouts and dtypes, NaN, empty input.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rowcases import ROWREDUCE, SIMILARITY, as_tuple, default_shape, reduced_reference, row_inputs
from test_runtime import run_python
from test_stats import assert_stats

import fastloss as fl
from fastloss.kinds.rowsum import cpu as rowreduce_cpu
from fastloss.kinds.rowsum import host as _rowreduce

#: Shapes that reach each path: short rows in parallel blocks, and a few rows longer than a piece.
BIG = {"last": [(3000, 32), (3, 9000)], "first": [(700, 10, 10), (3, 3, 50, 61)]}


def big_inputs(name, shape, seed=7):
    spec = fl.get(name).spec
    rng = np.random.default_rng(seed)
    if spec.options.get("row_length"):  # boxes: as many numbers as the shape holds
        return row_inputs(spec, (shape[0] * shape[1] // 4,), (4,), rng)
    return row_inputs(spec, shape[:1], shape[1:], rng)


DIGEST = """
import hashlib, json, numpy as np, fastloss as fl
from test_rowreduce import BIG, big_inputs
from rowcases import ROWREDUCE, SIMILARITY
out = {}
for name in ROWREDUCE + SIMILARITY:
    layout = fl.get(name).spec.options.get("rows", "last")
    for shape in BIG[layout]:
        if name in SIMILARITY and shape[0] > 1000:
            continue
        inputs = big_inputs(name, shape)
        v, g = fl.get(name).value_and_grad(*[x.astype(np.float32) if x.ndim > 1 else x for x in inputs])
        out[f"{name}{shape}"] = [float(v).hex()] + [hashlib.sha1(x.tobytes()).hexdigest() for x in g]
print(json.dumps(out))
"""


def test_results_are_bit_identical_for_any_thread_count():
    runs = []
    for threads in ("1", "2", "3"):
        res = run_python(DIGEST, {"NUMBA_NUM_THREADS": threads})
        assert res.returncode == 0, res.stderr
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert {k.split("(")[0] for k in runs[0]} == set(ROWREDUCE + SIMILARITY)
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize("name", ROWREDUCE)
def test_serial_row_parallel_and_split_paths_give_identical_bits(name, monkeypatch):
    layout = fl.get(name).spec.options.get("rows", "last")
    for shape in BIG[layout]:
        inputs = big_inputs(name, shape)
        results = []
        for mode in ("ser", "par", "split"):
            monkeypatch.setattr(_rowreduce, "_mode", lambda n, d, mode=mode: mode)
            v, g, s = fl.get(name).value_and_grad(*inputs, reduction="none", stats=True)
            total = fl.get(name)(*inputs)
            results.append((v, as_tuple(g), total, s))
        for v, g, total, s in results[1:]:
            np.testing.assert_array_equal(v, results[0][0])
            assert total == results[0][2]
            for a, b in zip(g, results[0][1]):
                np.testing.assert_array_equal(a, b)
            assert s == results[0][3]


@pytest.mark.parametrize("name", ROWREDUCE + SIMILARITY)
def test_stats_match_numpy_and_leave_the_gradient_unchanged(name):
    loss = fl.get(name)
    lead, row = default_shape(loss.spec)
    inputs = row_inputs(loss.spec, lead, row, np.random.default_rng(0))
    for reduction in ("mean", "sum", "none"):
        v, g, s = loss.value_and_grad(*inputs, reduction=reduction, stats=True)
        v0, g0 = loss.value_and_grad(*inputs, reduction=reduction)
        np.testing.assert_array_equal(v, v0)
        for a, b in zip(as_tuple(g), as_tuple(g0)):
            np.testing.assert_array_equal(a, b)
        assert_stats(s, *as_tuple(g))


def test_long_rows_stats_have_one_row_per_piece():
    inputs = big_inputs("dice", (3, 3, 50, 61))
    _, g, s = fl.dice.value_and_grad(*inputs, stats=True)
    assert_stats(s, g)
    assert rowreduce_cpu.nstats(3, 9150) == 3 * 3


@pytest.mark.parametrize("name", ROWREDUCE)
def test_out_buffers_in_place_and_bad_out(name):
    loss = fl.get(name)
    lead, row = default_shape(loss.spec)
    inputs = row_inputs(loss.spec, lead, row, np.random.default_rng(1))
    diff = [k for k, i in enumerate(loss.spec.inputs) if i.differentiable]
    v, g = loss.value_and_grad(*inputs)
    g = as_tuple(g)
    outs = tuple(np.empty_like(inputs[k]) for k in diff)
    v2, g2 = loss.value_and_grad(*inputs, out=outs if len(outs) > 1 else outs[0])
    assert v2 == v
    for o, r, want in zip(outs, as_tuple(g2), g):
        assert r is o
        np.testing.assert_array_equal(o, want)
    # in place: every differentiable input receives its own gradient
    copies = [x.copy() for x in inputs]
    own = tuple(copies[k] for k in diff)
    loss.value_and_grad(*copies, out=own if len(own) > 1 else own[0])
    for o, want in zip(own, g):
        np.testing.assert_array_equal(o, want)
    # a non-contiguous out gets the same values
    strided = np.empty((*inputs[diff[0]].shape, 2))[..., 0]
    first = (strided, *outs[1:]) if len(outs) > 1 else strided
    loss.grad(*inputs, out=first)
    np.testing.assert_array_equal(strided, g[0])
    other = next(k for k in range(len(inputs)) if k != diff[0])
    bad = [
        (np.empty(inputs[diff[0]].shape, np.float32), TypeError, "dtype"),
        (np.empty((*inputs[diff[0]].shape[:-1], inputs[diff[0]].shape[-1] + 1)), ValueError, "shape"),
        (inputs[other] if inputs[other].shape == inputs[diff[0]].shape else None, ValueError, "shares memory"),
    ]
    ro = np.empty_like(inputs[diff[0]])
    ro.flags.writeable = False
    bad.append((ro, ValueError, "read-only"))
    for buf, exc, match in bad:
        if buf is None:
            continue
        with pytest.raises(exc, match=match):
            loss.grad(*inputs, out=(buf, *outs[1:]) if len(outs) > 1 else buf)
    with pytest.raises(ValueError, match="gradient buffer"):
        loss.grad(*inputs, out=(*outs, outs[0]))


@pytest.mark.parametrize("name", ROWREDUCE)
def test_layouts_dtypes_and_untouched_inputs(name):
    loss = fl.get(name)
    lead, row = default_shape(loss.spec)
    inputs = row_inputs(loss.spec, lead, row, np.random.default_rng(2))
    before = [x.copy() for x in inputs]
    v, g = loss.value_and_grad(*inputs)
    for x, b in zip(inputs, before):
        np.testing.assert_array_equal(x, b)
    fortran = [np.asfortranarray(x) for x in inputs]
    strided = [np.repeat(x, 2, axis=-1)[..., ::2] for x in inputs]
    for variant in (fortran, strided):
        v2, g2 = loss.value_and_grad(*variant)
        assert v2 == v
        for a, b in zip(as_tuple(g2), as_tuple(g)):
            np.testing.assert_array_equal(a, b)
    v16, g16 = loss.value_and_grad(*[x.astype(np.float16) if x.ndim > len(lead) else x for x in inputs])
    assert v16.dtype == np.float16 and all(a.dtype == np.float16 for a in as_tuple(g16))


@pytest.mark.parametrize("name", ROWREDUCE)
def test_nan_stays_in_its_row(name):
    loss = fl.get(name)
    lead, row = default_shape(loss.spec)
    inputs = row_inputs(loss.spec, lead, row, np.random.default_rng(3))
    diff = [k for k, i in enumerate(loss.spec.inputs) if i.differentiable]
    x = inputs[diff[0]].copy()
    x[1].reshape(-1)[0] = np.nan
    inputs[diff[0]] = x
    v, g = loss.value_and_grad(*inputs, reduction="none")
    assert np.isnan(v[1]) and np.all(np.isfinite(np.delete(v, 1)))
    for gk in as_tuple(g):
        assert np.all(np.isfinite(np.delete(gk, 1, axis=0)))
    assert np.isnan(loss(*inputs))


@given(
    st.sampled_from(ROWREDUCE),
    st.lists(st.integers(1, 4), min_size=1, max_size=2),
    st.lists(st.integers(1, 9), min_size=1, max_size=3),
    st.integers(0, 2**32 - 1),
)
def test_any_row_shape_matches_the_reference(name, lead, row, seed):
    """Rows shorter and longer than the accumulator lanes (64), several leading or trailing axes."""
    spec = fl.get(name).spec
    if spec.options.get("row_length"):
        row = [4]
    elif spec.options.get("rows") == "first":
        lead = lead[:1]
    else:
        row = [int(np.prod(row)) * 3]
    inputs = row_inputs(spec, tuple(lead), tuple(row), np.random.default_rng(seed))
    params = {p.name: p.default for p in spec.params}
    want_v, want_g = reduced_reference(name, inputs, params, "none")
    v, g = fl.get(name).value_and_grad(*inputs, reduction="none")
    assert v.shape == tuple(lead)
    np.testing.assert_allclose(v, want_v, rtol=1e-11, atol=1e-13)
    for got, want in zip(as_tuple(g), want_g):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_eight_python_threads_at_once_give_the_serial_answers():
    inputs = big_inputs("cosine_embedding", (3000, 32))
    want_v, want_g = fl.cosine_embedding.value_and_grad(*inputs)
    results = [None] * 8

    def work(k):
        results[k] = fl.cosine_embedding.value_and_grad(*inputs)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for v, g in results:
        assert v == want_v
        for a, b in zip(g, want_g):
            np.testing.assert_array_equal(a, b)


def test_integer_inputs_compute_in_float64():
    x1 = np.array([[0, 3], [1, 1]])
    x2 = np.array([[4, 0], [1, 2]])
    v, (g1, _) = fl.contrastive.value_and_grad(x1, x2, np.array([1, 0]))
    assert v.dtype == np.float64 and g1.dtype == np.float64
    np.testing.assert_allclose(v, fl.contrastive(x1.astype(float), x2.astype(float), np.array([1, 0])))


def test_declarations_are_checked():
    from fastloss._api import Loss
    from fastloss._spec import Input, LossSpec
    from fastloss.kinds.rowsum.host import RowReduce

    def stage(*args):
        return (0.0,)

    with pytest.raises(TypeError, match="RowReduce"):
        Loss(LossSpec("bad_kernel", "rowreduce", stage, (Input("x", "", differentiable=True),)))(np.zeros((2, 2)))
    spec = LossSpec("bad_rows", "rowreduce", RowReduce(stage, stage, stage), (Input("x", "", differentiable=True),),
                    options={"rows": "middle"})
    with pytest.raises(ValueError, match="rows"):
        Loss(spec)(np.zeros((2, 2)))


def test_a_new_rowreduce_loss_is_one_declaration():
    """A user-level check of the contract: the squared Euclidean distance, declared in a few lines."""
    from fastloss._api import Loss
    from fastloss._spec import Input, LossSpec
    from fastloss.kinds.rowsum.host import RowReduce, row_options

    def map_(j, a, b):
        return ((a - b) * (a - b),)

    def finish(sums):
        return (sums[0], 2.0)

    def grad(j, a, b, coefs):
        return (coefs[1] * (a - b),)

    loss = Loss(LossSpec("sq_dist", "rowreduce", RowReduce(map_, finish, grad),
                         (Input("a", "", differentiable=True), Input("b", "")), options=row_options(cache=False)))
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    v, g = loss.value_and_grad(a, b, reduction="sum")
    np.testing.assert_allclose(v, np.sum((a - b) ** 2))
    np.testing.assert_allclose(g, 2 * (a - b))


def test_kernels_compile_for_cuda():
    """Every stage of every rowreduce kernel (and kernel variant) compiles as a CUDA device function.

    To PTX, no GPU needed: what a CUDA driver of the kind will compile from the same declarations.
    """
    pytest.importorskip("numba_cuda")
    from numba import cuda
    from numba.cuda import types

    from fastloss.device.ptx import DEFAULT_CC, target

    f64 = types.float64
    compiled = 0
    for name in ROWREDUCE:
        spec = fl.get(name).spec
        params = {p.name: p.default for p in spec.params}
        n_params = len(spec.kernel_params(params))
        per_row = spec.options.get("row_inputs", ())
        n_el = sum(1 for i in spec.inputs if i.name not in per_row)
        n_rows = len(per_row)
        variant = spec.options.get("variant")
        kernels = {spec.kernel, variant(params) if variant else None} - {None}
        for k in kernels:
            compiled += 1
            with target():
                ptx, sums_ty = cuda.compile_ptx(k.map, (types.int64,) + (f64,) * (n_el + n_params), device=True,
                                                cc=DEFAULT_CC)
                assert ".func" in ptx
                _, res_ty = cuda.compile_ptx(k.finish, (sums_ty,) + (f64,) * (n_rows + n_params), device=True,
                                             cc=DEFAULT_CC)
                assert isinstance(res_ty, types.BaseTuple) and res_ty[0] == f64  # (loss, *coefficients)
                cuda.compile_ptx(k.grad, (types.int64,) + (f64,) * n_el + (res_ty,) + (f64,) * n_params, device=True,
                                 cc=DEFAULT_CC)
    assert compiled == len(ROWREDUCE) + 1  # the Euclidean triplet variant
