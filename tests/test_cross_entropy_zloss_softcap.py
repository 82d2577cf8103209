"""Cross entropy's language-model options: PaLM z-loss, logit soft-capping and ``return_z_loss``.

The registry-parametrised tests of ``tests/test_rowwise.py`` already run both options through the
reference, finite differences, every target form, weights and ``ignore_index`` (they are declared
``special`` values); here: the ``(loss, z_loss_part)`` value, the PyTorch composition, extreme
logits, in-place and split-path bits, and bad values.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fastloss as fl
from fastloss.kinds.softmax import host as _rowwise
from fastloss.reference import REFERENCES, value_and_grad
from fastloss.reference.multiclass import cross_entropy_z_part

IGNORE = -100


def _data(rng, n=9, c=13, form="index"):
    x = rng.normal(0.0, 3.0, size=(n, c))
    if form == "index":
        t = rng.integers(0, c, n)
        t[1::4] = IGNORE
    else:
        t = rng.dirichlet(np.ones(c), n)
    return x, t


@pytest.mark.parametrize("form", ["index", "probs"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_return_z_loss_gives_the_z_part_reduced_like_the_loss(form, weighted, reduction, softcap):
    rng = np.random.default_rng(1)
    x, t = _data(rng, form=form)
    w = rng.uniform(0.3, 2.0, x.shape[1]) if weighted else None
    kw = dict(weight=w, ignore_index=IGNORE, z_loss=0.03, softcap=softcap, reduction=reduction)
    (v, zpart), g = fl.cross_entropy.value_and_grad(x, t, return_z_loss=True, **kw)
    v_plain, g_plain = fl.cross_entropy.value_and_grad(x, t, **kw)
    np.testing.assert_array_equal(v, v_plain)  # asking for the part changes nothing else
    np.testing.assert_array_equal(g, g_plain)
    assert fl.cross_entropy(x, t, return_z_loss=True, **kw)[1] == pytest.approx(zpart, rel=0, abs=0) \
        if reduction != "none" else np.array_equal(fl.cross_entropy(x, t, return_z_loss=True, **kw)[1], zpart)
    ref = dict(weight=w, ignore_index=IGNORE, z_loss=0.03, softcap=softcap)
    want, _ = value_and_grad("cross_entropy", x, t, reduction=reduction, **ref)
    part = cross_entropy_z_part(x, t, **ref)
    np.testing.assert_allclose(v, want, rtol=1e-13, atol=1e-15)
    if reduction == "none":
        np.testing.assert_allclose(zpart, part, rtol=1e-13, atol=1e-15)
    else:
        count = REFERENCES["cross_entropy"](x, t, **ref).count  # None: the mean is over rows
        d = 1.0 if reduction == "sum" else len(x) if count is None else count
        np.testing.assert_allclose(zpart, part.sum() / d, rtol=1e-13)
        assert 0.0 < zpart < v


def test_without_class_weights_the_z_part_is_the_mean_over_non_ignored_tokens():
    rng = np.random.default_rng(2)
    x, y = _data(rng, n=40, c=50)
    (_, zpart) = fl.cross_entropy(x, y, ignore_index=IGNORE, z_loss=1e-3, return_z_loss=True)
    keep = y != IGNORE
    m = x.max(axis=1)
    lse = m + np.log(np.exp(x - m[:, None]).sum(axis=1))
    np.testing.assert_allclose(zpart, 1e-3 * np.mean(lse[keep] ** 2), rtol=1e-13)


def test_z_loss_zero_and_softcap_none_are_plain_cross_entropy():
    rng = np.random.default_rng(3)
    x, y = _data(rng)
    v0, g0 = fl.cross_entropy.value_and_grad(x, y, ignore_index=IGNORE)
    v1, g1 = fl.cross_entropy.value_and_grad(x, y, ignore_index=IGNORE, z_loss=0.0, softcap=None)
    assert v0 == v1
    np.testing.assert_array_equal(g0, g1)
    (v2, z2), _ = fl.cross_entropy.value_and_grad(x, y, ignore_index=IGNORE, return_z_loss=True)
    assert v2 == v0 and z2 == 0.0


@pytest.mark.parametrize("form", ["index", "probs"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_matches_the_pytorch_composition(form, smoothing):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    x, t = _data(rng, form=form)
    cap, z = 3.0, 0.02
    xt = torch.tensor(x, requires_grad=True)
    c = cap * torch.tanh(xt / cap)
    lse = torch.logsumexp(c, dim=1)
    tt = torch.tensor(t)
    if form == "index":
        keep = tt != IGNORE
        ce = F.cross_entropy(c, tt, ignore_index=IGNORE, label_smoothing=smoothing)
        total = ce + z * lse[keep].square().mean()
    else:
        ce = F.cross_entropy(c, tt, label_smoothing=smoothing)
        total = ce + z * lse.square().mean()
    total.backward()
    v, g = fl.cross_entropy.value_and_grad(x, t, ignore_index=IGNORE, label_smoothing=smoothing, z_loss=z,
                                           softcap=cap)
    np.testing.assert_allclose(v, total.item(), rtol=1e-12)
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_soft_capping_keeps_extreme_and_infinite_logits_finite(dtype):
    x = np.array([[1e30, -1e30, 0.0, np.inf], [-np.inf, 3.0, -2.0, 1e4]], dtype=dtype)
    y = np.array([1, 3])
    v, g = fl.cross_entropy.value_and_grad(x, y, softcap=5.0, z_loss=1e-2)
    assert np.isfinite(v) and np.all(np.isfinite(g))
    want, (grad,) = value_and_grad("cross_entropy", x.astype(np.float64), y, softcap=5.0, z_loss=1e-2)
    np.testing.assert_allclose(v, want, rtol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(g, grad, rtol=1e-5, atol=1e-7 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("form", ["index", "probs"])
def test_in_place_soft_capped_gradient_is_bit_identical(form):
    rng = np.random.default_rng(5)
    x, t = _data(rng, n=33, c=257, form=form)
    x = x.astype(np.float32)
    t = t.astype(np.float32) if form == "probs" else t
    kw = dict(softcap=2.0, z_loss=1e-3, label_smoothing=0.1)
    v, g = fl.cross_entropy.value_and_grad(x, t, **kw)
    xi = x.copy()
    vi, gi = fl.cross_entropy.value_and_grad(xi, t, out=xi, **kw)
    assert gi is xi and vi == v
    np.testing.assert_array_equal(gi, g)


def test_soft_capping_allocates_no_logits_sized_buffer():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(256, 4096)).astype(np.float32)
    y = rng.integers(0, 4096, 256)
    kw = dict(softcap=30.0, z_loss=1e-4)
    fl.cross_entropy.value_and_grad(x.copy(), y, **kw)  # compile outside the measurement
    fl.cross_entropy(x, y, **kw)
    tracemalloc.start()
    try:
        fl.cross_entropy(x, y, **kw)
        fl.cross_entropy.value_and_grad(x, y, out=x, **kw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes / 16, peak


@pytest.mark.parametrize("form", ["index", "probs"])
def test_split_rows_and_serial_paths_give_identical_bits(form, monkeypatch):
    from fastloss.kinds.softmax import primitives as rowops

    rng = np.random.default_rng(7)
    c = 2 * rowops.SEGMENT + 77
    x, t = _data(rng, n=3, c=c, form=form)
    x = x.astype(np.float32)
    kw = dict(softcap=4.0, z_loss=1e-3, label_smoothing=0.05, ignore_index=IGNORE, return_z_loss=True)
    results = {}
    for mode in ("ser", "par", "split"):
        monkeypatch.setattr(_rowwise, "_mode", lambda n, nc, mode=mode: mode)
        (v, zpart), g = fl.cross_entropy.value_and_grad(x, t, **kw)
        results[mode] = (v, zpart, g)
    for mode in ("par", "split"):
        assert results[mode][:2] == results["ser"][:2], mode
        np.testing.assert_array_equal(results[mode][2], results["ser"][2])


@pytest.mark.parametrize("kw, match", [
    ({"softcap": 0.0}, "softcap"),
    ({"softcap": -1.0}, "softcap"),
    ({"softcap": np.inf}, "softcap"),
    ({"softcap": np.nan}, "softcap"),
    ({"softcap": "4"}, "softcap"),
    ({"z_loss": -1e-3}, "z_loss"),
    ({"z_loss": np.nan}, "z_loss"),
    ({"return_z_loss": 2}, "return_z_loss"),
])
def test_bad_option_values_raise(kw, match):
    x = np.zeros((2, 3))
    with pytest.raises((ValueError, TypeError), match=match):
        fl.cross_entropy(x, np.array([0, 1]), **kw)


def test_signature_and_docstring_show_the_options():
    import inspect

    sig = inspect.signature(fl.cross_entropy)
    assert sig.parameters["z_loss"].default == 0.0
    assert sig.parameters["softcap"].default is None
    assert sig.parameters["return_z_loss"].default is False
    doc = fl.cross_entropy.__doc__
    assert "softcap" in doc and "z_loss" in doc and "PaLM" in doc


def test_combine_and_scoring_refuse_a_pair_valued_term():
    from fastloss.scoring import ScoreError, score

    x = np.zeros((4, 3))
    y = np.array([0, 1, 2, 0])
    both = fl.combine({"ce": (fl.cross_entropy, 1.0, {"return_z_loss": True, "z_loss": 1e-3})})
    with pytest.raises(ValueError, match="return_z_loss=True"):
        both.value_and_grad({"ce": (x, y)})
    with pytest.raises(ScoreError, match="return_z_loss=True"):
        score(fl.cross_entropy, x, y, params={"return_z_loss": True})
    plain = fl.combine({"ce": (fl.cross_entropy, 1.0, {"z_loss": 1e-3, "softcap": 5.0})})
    total, _, _ = plain.value_and_grad({"ce": (x, y)})
    np.testing.assert_allclose(total, fl.cross_entropy(x, y, z_loss=1e-3, softcap=5.0), rtol=1e-15)
