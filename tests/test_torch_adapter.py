"""``fastloss.torch``: autograd wrappers that keep the fused kernel.

CPU tensors run for real (zero-copy NumPy views). CUDA tensors cannot be made here (CPU build of
PyTorch, no GPU): their path is exercised with *stand-in CUDA tensors*, CPU tensors that report a
CUDA device and expose ``__cuda_array_interface__``. fastloss's own dispatch (``select_kind``,
``require_same_device``) routes them to its CUDA backend, where a stand-in kind takes the place of
the real one: in-process it runs the CPU kernels on the tensors' memory; under the Numba CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``, run in a subprocess) it runs the backend's real CUDA kernels
on simulated device copies. What no test here covers: PyTorch's real CUDA tensors, read through
``__cuda_array_interface__`` by ``numba.cuda.as_cuda_array``, and results allocated by PyTorch's
caching allocator on a GPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import adaptercases as ac  # noqa: E402
from cases import defaults, pointwise_inputs  # noqa: E402

import fastloss as fl  # noqa: E402
import fastloss.torch as flt  # noqa: E402
from fastloss import _adapters  # noqa: E402
from fastloss import kinds as _kinds  # noqa: E402
from fastloss._call import signed_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIMULATOR_ON = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
_REAL_KIND_FOR = _kinds.cuda_kind  # the CUDA backend's kinds, before a test puts stand-ins in their place

TORCH_EQUIVALENTS = {
    "mse": lambda p, t: F.mse_loss(p, t),
    "mae": lambda p, t: F.l1_loss(p, t),
    "huber": lambda p, t: F.huber_loss(p, t, delta=1.0),
    "smooth_l1": lambda p, t: F.smooth_l1_loss(p, t, beta=1.0),
    "binary_cross_entropy": lambda p, t: F.binary_cross_entropy_with_logits(p, t),
}


def leaf(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("name", sorted(TORCH_EQUIVALENTS))
def test_matches_torch_functional_forward_and_backward(name):
    loss = fl.get(name)
    p, t = pointwise_inputs(loss.spec, (12, 5), np.random.default_rng(0))
    a, b = leaf(p), leaf(p)
    target = torch.tensor(t)
    ours = getattr(flt, name)(a, target)
    ref = TORCH_EQUIVALENTS[name](b, target)
    ours.backward()
    ref.backward()
    assert ours.dtype == torch.float64 and ours.shape == ()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


def torch_inputs(name, xs, diff=True):
    """Leaves requiring grad for the differentiable inputs (when ``diff``), plain tensors otherwise."""
    spec = fl.get(name).spec
    return [leaf(x) if diff and inp.differentiable else torch.tensor(x) for x, inp in zip(xs, spec.inputs)]


# -- every registered loss, every reduction ---------------------------------------------------------


def test_every_registered_loss_has_a_wrapper():
    assert set(ac.NAMES) <= set(fl.names()) and len(ac.NAMES) > 20
    for name in fl.names():  # custom losses registered by earlier tests too
        f = getattr(flt, name)
        assert f.__wrapped__ is fl.get(name) and f.__name__ == name
        assert _kinds.KINDS[fl.get(name).spec.kind].none_backward in ("scale", "weight"), f"{name}: no backward rule"


@pytest.mark.parametrize("name", ac.NAMES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_every_registered_loss_gives_the_fused_gradient(name, reduction):
    """The value and the gradients are fastloss's own (bit for bit), scaled by grad_output."""
    loss = fl.get(name)
    rng = np.random.default_rng(1)
    xs = ac.inputs(name, rng)
    w = ac.weight(name, xs, rng)
    tensors = torch_inputs(name, xs)
    out = getattr(flt, name)(*tensors, weight=None if w is None else torch.tensor(w), reduction=reduction)
    (2.5 * out).backward()  # a grad_output other than 1
    v, g = loss.value_and_grad(*xs, weight=w, reduction=reduction)
    assert out.shape == () and out.dtype == torch.float64
    np.testing.assert_array_equal(out.detach().numpy(), v)
    for k, want in zip(ac.differentiable(name), ac.as_tuple(g)):
        np.testing.assert_allclose(tensors[k].grad.numpy(), 2.5 * want, rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", ac.NAMES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_every_registered_loss(name, reduction):
    """torch.autograd.gradcheck (float64 finite differences of the whole Jacobian): under "none" every
    sample's loss against every input element, so the per-sample backward rules are checked exactly,
    cross-sample terms (in-batch negatives) included. Weighted with the loss's own weight semantics."""
    rng = np.random.default_rng(2)
    xs = ac.inputs(name, rng)
    w = ac.weight(name, xs, rng)
    fixed = torch_inputs(name, xs, diff=False)
    diff = ac.differentiable(name)
    f = getattr(flt, name)
    wt = None if w is None else torch.tensor(w)

    def fn(*d):
        args = list(fixed)
        for k, t in zip(diff, d):
            args[k] = t
        return f(*args, weight=wt, reduction=reduction)

    assert torch.autograd.gradcheck(fn, tuple(leaf(xs[k]) for k in diff), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("name", ac.NAMES)
def test_reduction_none_vjp_is_the_weighted_gradient(name):
    """sum_i c_i d l_i / dx from the adapter equals fastloss's gradient of sum_i c_i w_i l_i, where the
    weight is per sample (pointwise, rowreduce, similarity); rowwise weights are per class, so there the
    reference is each row's gradient (of the sum) times its cotangent."""
    loss = fl.get(name)
    rng = np.random.default_rng(3)
    xs = ac.inputs(name, rng)
    w = ac.weight(name, xs, rng)
    tensors = torch_inputs(name, xs)
    out = getattr(flt, name)(*tensors, weight=None if w is None else torch.tensor(w), reduction="none")
    want_v = loss(*xs, weight=w, reduction="none")
    np.testing.assert_array_equal(out.detach().numpy(), want_v)
    c = rng.normal(size=out.shape)
    (out * torch.tensor(c)).sum().backward()
    if loss.spec.kind == "rowwise":
        axis = -1
        want = [g * np.expand_dims(c, axis) for g in ac.as_tuple(loss.grad(*xs, weight=w, reduction="sum"))]
    else:
        cw = c if w is None else c * np.broadcast_to(w, c.shape)
        with signed_weights():  # the cotangents are signed, as the adapter's own rerun
            want = ac.as_tuple(loss.grad(*xs, weight=cw, reduction="sum"))
    for k, g in zip(ac.differentiable(name), want):
        np.testing.assert_allclose(tensors[k].grad.numpy(), g, rtol=1e-13, atol=1e-15)


def test_backward_rules_by_kind():
    """Which losses rerun the kernel in backward under "none": only where an element feeds several losses."""
    shapes = {"mse": [(3, 4), (3, 4)], "cross_entropy": [(4, 5), (4,)], "triplet_margin": [(4, 5)] * 3,
              "dice": [(2, 2, 3)] * 2, "info_nce": [(4, 5)] * 2}
    rules = {n: _adapters.none_rule(fl.get(n), defaults(fl.get(n).spec) | {"axis": -1}, s, [0])
             for n, s in shapes.items()}
    assert rules == {"mse": "scale", "cross_entropy": "scale", "triplet_margin": "scale", "dice": "scale",
                     "info_nce": "weight"}
    assert _adapters.none_rule(fl.mse, {}, [(4,), (3, 4)], [0]) == "weight"  # pred broadcast
    assert _adapters.none_rule(fl.mse, {}, [(3, 4), (4,)], [0]) == "scale"  # only the target broadcast
    gnll = fl.gaussian_nll
    assert _adapters.per_sample_shape(gnll, {}, [(3, 4), (3, 4), (3,)]) == (3, 4)  # one variance per sample
    assert _adapters.none_rule(gnll, {}, [(3, 4), (3, 4), (3,)], [0, 2]) == "weight"
    assert _adapters.none_rule(gnll, {}, [(3, 4), (3, 4), (3, 4)], [0, 2]) == "scale"
    assert _adapters.per_sample_shape(fl.dice, {}, [(2, 3, 4), (2, 3, 4)]) == (2,)
    assert _adapters.cotangent_shape(fl.dice, {}, (2,), 3) == (2, 1, 1)
    assert _adapters.cotangent_shape(fl.cross_entropy, {"axis": 1}, (3, 5), 3) == (3, 1, 5)


def test_gaussian_nll_per_sample_variance_under_none():
    rng = np.random.default_rng(4)
    m, y, var = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.uniform(0.5, 2, size=3)
    t = torch.tensor(y)
    assert torch.autograd.gradcheck(lambda a, b: flt.gaussian_nll(a, t, b, reduction="none"), (leaf(m), leaf(var)),
                                    eps=1e-6, atol=1e-7, rtol=1e-5)


def test_info_nce_none_needs_the_cross_sample_terms():
    """Scaling each row's gradient of the sum by its cotangent would be wrong for InfoNCE: check that
    the adapter's answer differs from that shortcut and matches the full vector-Jacobian product."""
    rng = np.random.default_rng(5)
    z1, z2 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    c = np.array([1.0, -2.0, 0.5, 3.0])
    a = leaf(z1)
    (flt.info_nce(a, torch.tensor(z2), reduction="none") * torch.tensor(c)).sum().backward()
    shortcut = fl.info_nce.grad(z1, z2, reduction="sum")[0] * c[:, None]
    with signed_weights():  # the cotangents are signed
        exact = fl.info_nce.grad(z1, z2, weight=c, reduction="sum")[0]
    np.testing.assert_allclose(a.grad.numpy(), exact, rtol=1e-13)
    assert np.max(np.abs(shortcut - exact)) > 1e-2


def test_reduction_none_backward_uses_grad_output_and_broadcasting():
    rng = np.random.default_rng(2)
    p, t = leaf(rng.normal(size=(6, 4))), torch.tensor(rng.normal(size=(4,)))
    w = torch.tensor(rng.uniform(size=(6, 1)))
    cot = torch.tensor(rng.normal(size=(6, 4)))
    out = flt.huber(p, t, delta=0.5, weight=w, reduction="none")
    (out * cot).sum().backward()
    p2 = p.detach().clone().requires_grad_()
    (F.huber_loss(p2, t.expand(6, 4), delta=0.5, reduction="none") * w * cot).sum().backward()
    torch.testing.assert_close(out, F.huber_loss(p2, t.expand(6, 4), delta=0.5, reduction="none") * w)
    torch.testing.assert_close(p.grad, p2.grad, rtol=1e-12, atol=1e-15)
    # a broadcast prediction: its gradient sums over rows with different grad_output
    q = leaf(rng.normal(size=(4,)))
    target = torch.tensor(rng.normal(size=(6, 4)))
    (flt.huber(q, target, delta=0.5, weight=w, reduction="none") * cot).sum().backward()
    q2 = q.detach().clone().requires_grad_()
    (F.huber_loss(q2.expand(6, 4), target, delta=0.5, reduction="none") * w * cot).sum().backward()
    torch.testing.assert_close(q.grad, q2.grad, rtol=1e-12, atol=1e-15)


def test_rowwise_reduction_none_scales_each_row():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 6, 5))  # classes on axis 1
    y = torch.tensor(rng.integers(0, 6, size=(3, 5)))
    w = torch.tensor(rng.uniform(0.5, 2, size=6))
    cot = torch.tensor(rng.normal(size=(3, 5)))
    a, b = leaf(x), leaf(x)
    ours = flt.cross_entropy(a, y, weight=w, axis=1, reduction="none")
    ref = F.cross_entropy(b, y, weight=w, reduction="none")  # torch: classes on dim 1
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    (ours * cot).sum().backward()
    (ref * cot).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


def test_cross_entropy_matches_torch():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 7))
    y = rng.integers(0, 7, size=8)
    y[2] = -100
    a, b = leaf(x), leaf(x)
    ours = flt.cross_entropy(a, torch.tensor(y), label_smoothing=0.1)
    ref = F.cross_entropy(b, torch.tensor(y), label_smoothing=0.1)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


# -- small plain cross entropy: PyTorch's own function (SMALL_CROSS_ENTROPY) ----------------------


def _ce_pair(shape, dtype, seed=11):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * 3
    y = rng.integers(0, shape[1], size=shape[0])
    y[::5] = -100  # ignored rows, fastloss's and PyTorch's default ignore_index
    return leaf(x, dtype), leaf(x, dtype), torch.tensor(y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_small_plain_cross_entropy_is_pytorchs_bit_for_bit(dtype, reduction):
    """At most SMALL_CROSS_ENTROPY logits, a plain call is F.cross_entropy: same bits, same gradient."""
    a, b, y = _ce_pair((16, 10), dtype)
    assert flt._small_cross_entropy(a.detach(), y, "sum") is not None
    ours = flt.cross_entropy(a, y, reduction=reduction)
    ref = F.cross_entropy(b, y, reduction=reduction)
    assert ours.dtype == dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    cot = torch.linspace(0.5, 2.0, ours.numel(), dtype=dtype).reshape(ours.shape)
    (ours * cot).sum().backward()
    (ref * cot).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    # and it is what fastloss computes, to rounding
    want = fl.cross_entropy(a.detach().numpy(), y.numpy(), reduction=reduction)
    np.testing.assert_allclose(ours.detach().numpy(), want, rtol=2e-6 if dtype == torch.float32 else 1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plain_cross_entropy_above_the_threshold_is_fastlosss(monkeypatch, dtype):
    """Above SMALL_CROSS_ENTROPY logits (here lowered to 0) the fused kernel runs, bit for bit
    fastloss's value and gradient, scaled by grad_output."""
    monkeypatch.setattr(flt, "SMALL_CROSS_ENTROPY", 0)
    a, _, y = _ce_pair((16, 10), dtype)
    ours = flt.cross_entropy(a, y)
    (3.0 * ours).backward()
    v, g = fl.cross_entropy.value_and_grad(a.detach().numpy(), y.numpy())
    np.testing.assert_array_equal(ours.detach().numpy(), v)
    np.testing.assert_array_equal(a.grad.numpy(), 3.0 * g)
    a.grad = None
    flt.cross_entropy(a, y, reduction="sum").backward()  # grad_output 1: the saved gradient as it is
    np.testing.assert_array_equal(a.grad.numpy(), fl.cross_entropy.grad(a.detach().numpy(), y.numpy(), reduction="sum"))


def test_small_cross_entropy_limit_shrinks_for_long_rows(monkeypatch):
    monkeypatch.setattr(flt, "SMALL_CROSS_ENTROPY", 4096)
    y = torch.zeros(8, dtype=torch.int64)
    assert flt._small_cross_entropy(torch.zeros(8, 128), y, "mean") is not None  # 1024 logits, short rows
    assert flt._small_cross_entropy(torch.zeros(32, 128), y[:1].expand(32).contiguous(), "mean") is not None
    assert flt._small_cross_entropy(torch.zeros(33, 128), torch.zeros(33, dtype=torch.int64), "mean") is None
    # 256 classes: at most 4096 * 128 / 256 = 2048 logits
    assert flt._small_cross_entropy(torch.zeros(8, 256), y, "mean") is not None
    assert flt._small_cross_entropy(torch.zeros(9, 256), torch.zeros(9, dtype=torch.int64), "mean") is None


def test_small_cross_entropy_leaves_other_calls_to_fastloss():
    """Only the plain call PyTorch computes alike is handed over; errors keep fastloss's messages."""
    a, b, y = _ce_pair((6, 4), torch.float64)
    bad = y.clone()
    bad[1] = 4
    with pytest.raises(ValueError, match=re.escape(str(_raises(fl.cross_entropy, a.detach().numpy(), bad.numpy())))):
        flt.cross_entropy(a, bad)
    with pytest.raises(ValueError, match="target"):
        flt.cross_entropy(a, y[:5])
    # int32 labels, options, class weights, float16: fastloss's kernel
    for kwargs in ({"label_smoothing": 0.1}, {"ignore_index": -100}, {"weight": torch.ones(4, dtype=torch.float64)}):
        got = flt.cross_entropy(a, y, **kwargs)
        want = fl.cross_entropy(a.detach().numpy(), y.numpy(), **{k: getattr(v, "numpy", lambda v=v: v)()
                                                                    for k, v in kwargs.items()})
        np.testing.assert_array_equal(got.detach().numpy(), want)
    got = flt.cross_entropy(a, y.to(torch.int32))
    np.testing.assert_array_equal(got.detach().numpy(), fl.cross_entropy(a.detach().numpy(), y.numpy()))
    with torch.no_grad():  # no gradient wanted: the value alone
        np.testing.assert_array_equal(flt.cross_entropy(a, y, reduction="sum").numpy(),
                                      F.cross_entropy(b, y, reduction="sum").numpy())


def _raises(f, *args):
    with pytest.raises(ValueError) as info:
        f(*args)
    return info.value


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_z_loss_and_softcap_through_the_adapter(reduction):
    """Per-row terms (z-loss, soft-capped logits) keep the row-by-row backward rule exact."""
    rng = np.random.default_rng(10)
    y = torch.tensor(rng.integers(0, 5, size=4))
    w = torch.tensor(rng.uniform(0.5, 2, size=5))
    f = lambda x: flt.cross_entropy(x, y, weight=w, z_loss=0.05, softcap=3.0, reduction=reduction)
    assert torch.autograd.gradcheck(f, (leaf(3 * rng.normal(size=(4, 5))),), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_two_differentiable_inputs_and_partial_requires_grad():
    rng = np.random.default_rng(4)
    m, y, var = rng.normal(size=10), rng.normal(size=10), rng.uniform(0.5, 2, size=10)
    tm, tv = leaf(m), leaf(var)
    flt.gaussian_nll(tm, torch.tensor(y), tv).backward()
    gm, gv = fl.gaussian_nll.grad(m, y, var)
    np.testing.assert_array_equal(tm.grad.numpy(), gm)
    np.testing.assert_array_equal(tv.grad.numpy(), gv)
    tm2 = leaf(m)
    flt.gaussian_nll(tm2, torch.tensor(y), torch.tensor(var)).backward()  # var needs no gradient
    np.testing.assert_array_equal(tm2.grad.numpy(), gm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_dtypes_keep_their_dtype(dtype):
    p = torch.linspace(-2, 2, 50, dtype=dtype).requires_grad_()
    t = torch.zeros(50, dtype=dtype)
    out = flt.mse(p, t)
    out.backward()
    assert out.dtype == dtype and p.grad.dtype == dtype
    ref = 2 * p.detach().double() / 50
    torch.testing.assert_close(p.grad.double(), ref, rtol=1e-2, atol=1e-3)


def test_zero_copy_views_and_inputs_untouched():
    base = torch.randn(20, 6, dtype=torch.float64)
    p = base[:, ::2].clone().requires_grad_()  # non-contiguous layouts work too
    t = base.t()[::2].t()
    before = base.clone()
    flt.log_cosh(p, t).backward()
    np.testing.assert_allclose(p.grad.numpy(), np.tanh((p.detach() - t).numpy()) / p.numel(), rtol=1e-12)
    assert torch.equal(base, before)


def test_custom_loss_through_wrap_and_gradcheck():
    @fl.pointwise
    def pseudo_huber(pred, target, delta=1.0):
        d = pred - target
        s = math.sqrt(1.0 + (d / delta) ** 2)
        return delta * delta * (s - 1.0), d / s

    f = flt.wrap(pseudo_huber)
    t = torch.randn(7, dtype=torch.float64)
    p = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: f(x, t, delta=0.7, reduction="sum"), (p,))
    assert torch.autograd.gradcheck(lambda x: f(x, t, reduction="none"), (p,))


@fl.rowwise(name="torch_adapter_row_ce")
def _row_ce(logits, target, grad):
    m = logits.max()
    s = 0.0
    for j in range(logits.size):
        s += math.exp(logits[j] - m)
    for j in range(logits.size):
        grad[j] = math.exp(logits[j] - m) / s
    grad[target] -= 1.0
    return m + math.log(s) - logits[target]


def test_custom_rowwise_loss_per_sample_with_an_axis_and_ignored_rows():
    rng = np.random.default_rng(9)
    y = torch.tensor(rng.integers(0, 4, size=(2, 3)))
    y[0, 1] = -100
    w = torch.tensor(rng.uniform(0.5, 2, size=4))
    f = flt.wrap(_row_ce)
    x = leaf(rng.normal(size=(2, 4, 3)))  # classes on axis 1
    assert torch.autograd.gradcheck(lambda a: f(a, y, weight=w, axis=1, reduction="none"), (x,),
                                    eps=1e-6, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(f(x, y, weight=w, axis=1, reduction="none"),
                               F.cross_entropy(x, y, weight=w, reduction="none"), rtol=1e-12, atol=1e-14)


def test_in_a_training_step_with_an_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, dtype=torch.float64)
    x = torch.randn(64, 3, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = None
    for _ in range(50):
        opt.zero_grad()
        loss = flt.mse(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < 1e-2 * first


def test_clear_errors():
    p = torch.randn(4, requires_grad=True)
    t = torch.randn(4, requires_grad=True)
    with pytest.raises(ValueError, match="target requires a gradient, but fastloss computes none"):
        flt.mse(p, t)
    with pytest.raises(ValueError, match="weight must not require a gradient"):
        flt.mse(p, t.detach(), weight=torch.ones(4, requires_grad=True))
    with pytest.raises(TypeError, match="does not take out="):
        flt.mse(p, t.detach(), out=p)
    with pytest.raises(TypeError, match="expects torch tensors"):
        flt.mse(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="delta must be in"):
        flt.huber(p, t.detach(), delta=-1.0)
    with pytest.raises(AttributeError, match="no attribute 'not_a_loss'"):
        flt.not_a_loss
    assert "mse" in dir(flt)


def test_tuple_results_and_unknown_kinds_are_refused():
    import inspect
    import types

    with pytest.raises(TypeError, match="return_z_loss=True returns a tuple of values"):
        _adapters.check_params("fastloss.torch", "cross_entropy", {"return_z_loss": True, "z_loss": 1e-4})
    _adapters.check_params("fastloss.torch", "cross_entropy", {"return_z_loss": False})
    if "return_z_loss" in inspect.signature(fl.cross_entropy).parameters:  # once cross_entropy has it
        with pytest.raises(TypeError, match="return_z_loss=True"):
            flt.cross_entropy(leaf(np.zeros((2, 3))), torch.tensor([0, 1]), return_z_loss=True)
    mystery = types.SimpleNamespace(spec=types.SimpleNamespace(name="odd", kind="mystery"))
    with pytest.raises(NotImplementedError, match="not differentiable for losses of the 'mystery' kind"):
        _adapters.check_none_supported("fastloss.torch", mystery, "none")
    _adapters.check_none_supported("fastloss.torch", mystery, "sum")


def test_defaults_come_from_the_declaration():
    import inspect

    assert inspect.signature(flt.huber) == inspect.signature(fl.huber)
    assert defaults(fl.huber.spec) == {"delta": 1.0}


# -- CUDA tensors -------------------------------------------------------------------------------------
#
# No GPU and a CPU build of PyTorch here: a StandInCuda tensor is a CPU tensor that reports device
# cuda:0 and exposes __cuda_array_interface__ (over its CPU memory), so that fastloss's real dispatch
# sends it to the CUDA backend. There a StandInKind replaces the backend's kind: it records what the
# adapter passed, runs a kind on host copies of the tensors' memory (the CPU kind in-process; the real
# CUDA kind under the simulator) and hands results back as StandInCuda tensors, as the real backend
# hands back torch CUDA tensors. Outside the StandInKind, a StandInCuda refuses every host transfer
# (.numpy(), .item(), float(), .cpu(), .tolist()), so a sync or host copy in the adapter fails the test.

_HOST_OK = [False]


@contextlib.contextmanager
def host_allowed():
    _HOST_OK[0], before = True, _HOST_OK[0]
    try:
        yield
    finally:
        _HOST_OK[0] = before


def _no_host(method):
    def guarded(self, *args, **kwargs):
        if not _HOST_OK[0]:
            raise AssertionError(f"the adapter called .{method}() on a CUDA tensor (a host copy or sync)")
        return getattr(torch.Tensor, method)(self, *args, **kwargs)

    return guarded


class StandInCuda(torch.Tensor):
    """A CPU tensor standing in for a CUDA tensor (see above)."""

    @property
    def device(self):
        return torch.device("cuda", 0)

    @property
    def is_cuda(self):
        return True

    @property
    def __cuda_array_interface__(self):
        return {"shape": tuple(self.shape), "strides": tuple(s * self.element_size() for s in self.stride()),
                "typestr": np.dtype(str(self.dtype).removeprefix("torch.")).str, "data": (self.data_ptr(), False),
                "version": 3, "stream": None}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.backward:
            # through the default __torch_function__ the whole backward pass would run with subclass
            # dispatch off (plain tensors out of every op), which no real CUDA tensor does
            self, *rest = args
            return torch.Tensor.backward(self.as_subclass(torch.Tensor), *rest, **(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)

    numpy = _no_host("numpy")
    item = _no_host("item")
    cpu = _no_host("cpu")
    tolist = _no_host("tolist")
    __float__ = _no_host("__float__")
    __array__ = _no_host("__array__")


def cuda(x, requires_grad=False):
    t = torch.as_tensor(x).clone().as_subclass(StandInCuda)
    return t.requires_grad_() if requires_grad else t


def _host(x):
    """A stand-in's memory as NumPy (inside the StandInKind only)."""
    if isinstance(x, torch.Tensor):
        assert not x.requires_grad, "the backend got a tensor that requires grad (not detached)"
        return torch.Tensor.numpy(x.as_subclass(torch.Tensor))
    return x


class StandInKind:
    """Takes the place of a kind of the CUDA backend (see above)."""

    def __init__(self, name, calls, run_kind):
        self.name = name
        self.calls = calls
        self.run_kind = run_kind

    def extra_params(self, spec):
        return _kinds.KINDS[self.name].extra_params(spec)

    def run(self, spec, inputs, params, weight, reduction, *, need_value, need_grad, out, stats=False):
        if not any(isinstance(x, torch.Tensor) for x in (*inputs, weight)):
            # the backend's own call on its device arrays (the CUDA similarity kind's cross entropy)
            return _REAL_KIND_FOR(self.name).run(spec, inputs, params, weight, reduction, need_value=need_value,
                                                 need_grad=need_grad, out=out, stats=stats)
        self.calls.append({"inputs": list(inputs), "weight": weight, "reduction": reduction, "need_grad": need_grad})
        with host_allowed():
            value, grads = self.run_kind(self.name, spec, [_host(x) for x in inputs], params, _host(weight),
                                         reduction, need_value=need_value, need_grad=need_grad)[:2]
            to_dev = lambda a: None if a is None else torch.from_numpy(np.array(a)).as_subclass(StandInCuda)
            return to_dev(value), tuple(to_dev(g) for g in grads)


def _cpu_kind(name, spec, inputs, params, weight, reduction, **flags):
    return _kinds.KINDS[name].run(spec, inputs, params, weight, reduction, out=None, **flags)


@pytest.fixture
def stand_in_backend(monkeypatch):
    """Route CUDA arrays to StandInKinds running the CPU kinds; yields the list of recorded calls."""
    calls = []
    monkeypatch.setattr(_kinds, "cuda_kind", lambda name, device=True: StandInKind(name, calls, _cpu_kind))
    return calls


def _same_memory(a, b):
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


@pytest.mark.parametrize("name", ["huber", "gaussian_nll", "cross_entropy", "triplet_margin", "info_nce"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cuda_tensors_go_to_the_cuda_backend_without_host_copies(stand_in_backend, name, reduction):
    """The backend gets the tensors themselves (detached, same memory); the loss and gradients come back
    as device tensors; backward scales on the device; the gradients equal the CPU adapter's."""
    calls = stand_in_backend
    rng = np.random.default_rng(6)
    xs = ac.inputs(name, rng)
    w = ac.weight(name, xs, rng)
    spec = fl.get(name).spec
    diff = ac.differentiable(name)
    dev = [cuda(x, requires_grad=inp.differentiable) for x, inp in zip(xs, spec.inputs)]
    f = getattr(flt, name)
    out = f(*dev, weight=None if w is None else cuda(w), reduction=reduction)
    assert isinstance(out, StandInCuda) and out.requires_grad
    assert len(calls) == 1 and calls[0]["reduction"] == reduction
    for got, mine in zip(calls[0]["inputs"], dev):
        assert isinstance(got, StandInCuda) and not got.requires_grad and _same_memory(got, mine)
    c = cuda(rng.normal(size=tuple(out.shape)))
    out.backward(c)  # grad_output is a device tensor too: float(grad_output) would raise
    host = torch_inputs(name, xs)
    ref = f(*host, weight=None if w is None else torch.tensor(w), reduction=reduction)
    ref.backward(torch.tensor(np.asarray(c.as_subclass(torch.Tensor))))
    with host_allowed():
        np.testing.assert_array_equal(torch.Tensor.numpy(out.detach().as_subclass(torch.Tensor)), ref.detach().numpy())
        for k in diff:
            np.testing.assert_allclose(dev[k].grad.numpy(), host[k].grad.numpy(), rtol=1e-14, atol=1e-16)
    rule = _adapters.none_rule(fl.get(name), {}, [x.shape for x in xs], diff) if reduction == "none" else None
    if rule == "weight":  # backward ran the kernel again, with grad_output (times weight) on the device
        assert len(calls) == 2 and calls[1]["reduction"] == "sum" and calls[1]["need_grad"]
        assert isinstance(calls[1]["weight"], StandInCuda)
    else:
        assert len(calls) == 1  # backward only scaled the saved device gradient


def test_cuda_broadcast_input_reweights_on_the_device(stand_in_backend):
    calls = stand_in_backend
    rng = np.random.default_rng(7)
    q = cuda(rng.normal(size=4), requires_grad=True)
    t = cuda(rng.normal(size=(3, 4)))
    w = cuda(rng.uniform(size=(3, 1)))
    out = flt.huber(q, t, delta=0.5, weight=w, reduction="none")
    c = rng.normal(size=(3, 4))
    out.backward(cuda(c))
    assert len(calls) == 2 and isinstance(calls[1]["weight"], StandInCuda)
    with host_allowed(), signed_weights():  # the cotangents are signed
        wc = c * torch.Tensor.numpy(w.as_subclass(torch.Tensor))
        want = fl.huber.grad(q.detach().as_subclass(torch.Tensor).numpy(), t.as_subclass(torch.Tensor).numpy(),
                             delta=0.5, weight=wc, reduction="sum")
    np.testing.assert_allclose(q.grad.numpy(), want, rtol=1e-14)


def test_cuda_value_only_and_low_precision(stand_in_backend):
    calls = stand_in_backend
    p = cuda(np.linspace(-1, 1, 6))
    v = flt.mse(p, cuda(np.zeros(6)))  # no gradient wanted: one value-only call
    assert isinstance(v, StandInCuda) and not v.requires_grad and calls[-1]["need_grad"] is False
    h = cuda(np.linspace(-1, 1, 6)).to(torch.bfloat16).requires_grad_()
    out = flt.mse(h, cuda(np.zeros(6)).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and calls[-1]["inputs"][0].dtype == torch.float32  # computed in float32
    out.backward(cuda(np.ones(())).to(torch.bfloat16))
    assert h.grad.dtype == torch.bfloat16


def test_mixed_devices_raise(stand_in_backend):
    p = cuda(np.zeros(4), requires_grad=True)
    with pytest.raises(TypeError, match=r"different devices \(pred on cuda:0, target on cpu\)"):
        flt.mse(p, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="target is a host ndarray but the tensors are on cuda:0"):
        flt.mse(p, np.zeros(4))
    with pytest.raises(TypeError, match=r"different devices \(pred on cuda:0, weight on cpu\)"):
        flt.mse(p, cuda(np.zeros(4)), weight=torch.ones(4))
    meta = torch.zeros(4, device="meta", requires_grad=True)
    with pytest.raises(NotImplementedError, match="pred is a meta tensor"):
        flt.mse(meta, meta.detach())
    assert not stand_in_backend  # nothing reached the backend
    flt.mse(p, 0.5)  # a Python number beside CUDA tensors is fine


def test_cuda_tensors_reach_the_real_backend():
    """Without the stand-in, a CUDA tensor goes to fastloss's CUDA backend, whose own error (no usable
    GPU here, or no numba-cuda) reaches the user: the adapter neither copies it to the host nor refuses it."""
    p = cuda(np.zeros(4), requires_grad=True)
    with pytest.raises((RuntimeError, ImportError), match=r"CUDA is not usable|numba-cuda"):
        flt.mse(p, cuda(np.zeros(4)))


# -- CUDA kernels under the simulator ------------------------------------------------------------------


#: Losses run through the adapter on the simulator: some of each kind that has a CUDA driver.
SIMULATED = [n for n in ("huber", "gaussian_nll", "binary_cross_entropy", "cross_entropy", "multiclass_hinge",
                         "triplet_margin", "dice", "info_nce") if fl.get(n).spec.kind in _kinds.CUDA_MODULES]


def _simulated_kind(name, spec, inputs, params, weight, reduction, **flags):
    """The backend's real CUDA kind on simulated device copies of the stand-ins' memory."""
    from numba import cuda as nbcuda

    def dev(x):
        return nbcuda.to_device(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x

    def host(a):
        return a.copy_to_host() if hasattr(a, "copy_to_host") else a

    kind = _REAL_KIND_FOR(name)
    assert type(kind).__module__.endswith(".cuda"), type(kind)  # the backend's own kind (kinds/<kind>/cuda.py)
    value, grads = kind.run(spec, [dev(x) for x in inputs], params, dev(weight), reduction, out=None, **flags)[:2]
    return host(value), tuple(host(g) for g in grads)


@pytest.mark.cudasim
@pytest.mark.skipif(not SIMULATOR_ON, reason="needs NUMBA_ENABLE_CUDASIM=1 (run by test_cuda_simulator_suite)")
@pytest.mark.parametrize("name", SIMULATED)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cuda_kernels_through_the_adapter_under_the_simulator(monkeypatch, name, reduction):
    """The adapter's CUDA path with the backend's real CUDA kernels (one or two losses of each kind with
    a CUDA driver): values and gradients (the "none" rules included, and with them weights from
    grad_output, negative ones too) agree with the CPU adapter."""
    from fastloss.device import config, simulator

    monkeypatch.setattr(config, "THREADS", 8)
    monkeypatch.setattr(config, "MAX_BLOCKS", 4)
    monkeypatch.setattr(config, "ROW_THREADS", 8)
    interval = simulator.configure()
    calls = []
    monkeypatch.setattr(_kinds, "cuda_kind", lambda n, device=True: StandInKind(n, calls, _simulated_kind))
    try:
        rng = np.random.default_rng(8)
        xs = ac.inputs(name, rng)
        w = ac.weight(name, xs, rng)
        spec = fl.get(name).spec
        if spec.kind == "pointwise" and reduction == "none":
            xs[0] = xs[0][0]  # a broadcast prediction: backward reruns the kernel with grad_output as weights
        dev = [cuda(x, requires_grad=inp.differentiable) for x, inp in zip(xs, spec.inputs)]
        f = getattr(flt, name)
        out = f(*dev, weight=None if w is None else cuda(w), reduction=reduction)
        c = rng.normal(size=tuple(out.shape))
        out.backward(cuda(c))
        host = torch_inputs(name, xs)
        ref = f(*host, weight=None if w is None else torch.tensor(w), reduction=reduction)
        ref.backward(torch.tensor(c))
        with host_allowed():
            np.testing.assert_allclose(torch.Tensor.numpy(out.detach().as_subclass(torch.Tensor)),
                                       ref.detach().numpy(), rtol=1e-11, atol=1e-13)
        for k in ac.differentiable(name):
            np.testing.assert_allclose(dev[k].grad.numpy(), host[k].grad.numpy(), rtol=1e-11, atol=1e-13)
        rule = _kinds.KINDS[spec.kind].none_backward
        reweighted = reduction == "none" and (spec.kind == "pointwise" or rule != "scale")
        assert len(calls) == (2 if reweighted else 1)
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.cudasim
@pytest.mark.skipif(SIMULATOR_ON, reason="the simulator is on in this process: the tests run directly")
@pytest.mark.skipif(__import__("importlib").util.find_spec("numba_cuda") is None, reason="needs numba-cuda")
def test_cuda_simulator_suite():
    """Runs this module's simulator tests in a subprocess with NUMBA_ENABLE_CUDASIM=1."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-p", "no:cacheprovider",
         "-m", "cudasim", "-k", "not test_cuda_simulator_suite", "-W", "ignore::RuntimeWarning"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    tail = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    summary = re.search(r"(\d+) passed", proc.stdout)
    assert summary and int(summary.group(1)) == 3 * len(SIMULATED), tail
    assert "skipped" not in proc.stdout.splitlines()[-1], tail
