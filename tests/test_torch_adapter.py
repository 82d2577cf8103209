"""``fastloss.torch``: autograd wrappers that keep the fused kernel (CPU tensors, zero-copy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from cases import POINTWISE, defaults, pointwise_inputs  # noqa: E402

import fastloss as fl  # noqa: E402
import fastloss.torch as flt  # noqa: E402

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


@pytest.mark.parametrize("name", POINTWISE)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_every_registered_pointwise_loss_gives_the_numpy_gradient(name, reduction):
    loss = fl.get(name)
    inputs = pointwise_inputs(loss.spec, (9, 4), np.random.default_rng(1))
    tensors = [leaf(x) if inp.differentiable else torch.tensor(x) for x, inp in zip(inputs, loss.spec.inputs)]
    out = getattr(flt, name)(*tensors, reduction=reduction)
    (2.5 * out).backward()  # a grad_output other than 1
    v, g = loss.value_and_grad(*inputs, reduction=reduction)
    np.testing.assert_array_equal(out.detach().numpy(), v)
    diff = [t for t, inp in zip(tensors, loss.spec.inputs) if inp.differentiable]
    for tensor, want in zip(diff, g if isinstance(g, tuple) else (g,)):
        np.testing.assert_allclose(tensor.grad.numpy(), 2.5 * want, rtol=1e-15, atol=0)


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


def test_cuda_tensors_raise_clearly():
    class FakeDevice:
        type = "cuda"

    class CudaLike(torch.Tensor):  # a CPU tensor that reports a CUDA device
        @property
        def device(self):
            return FakeDevice()

    p = torch.randn(4).as_subclass(CudaLike)
    with pytest.raises(NotImplementedError, match="CUDA backend is not available"):
        flt.mse(p, torch.zeros(4))


def test_defaults_come_from_the_declaration():
    import inspect

    assert inspect.signature(flt.huber) == inspect.signature(fl.huber)
    assert defaults(fl.huber.spec) == {"delta": 1.0}
