"""``binary_cross_entropy(pos_weight=array)``: PyTorch's per-class (or per-element) positive weights (issue #20)."""

from __future__ import annotations

import numpy as np
import pytest

import fastloss as fl
from fastloss._api import Loss

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _torch(x, y, pw, reduction, weight=None):
    xt = torch.tensor(x, requires_grad=True)
    w = None if weight is None else torch.tensor(weight)
    loss = F.binary_cross_entropy_with_logits(xt, torch.tensor(y), weight=w, pos_weight=torch.tensor(pw),
                                              reduction=reduction)
    loss.sum().backward()
    return loss.detach().numpy(), xt.grad.numpy()


def _data(rng, shape=(64, 5), soft=False):
    x = rng.normal(0.0, 3.0, shape)
    y = rng.uniform(0.0, 1.0, shape) if soft else (rng.uniform(size=shape) < 0.3).astype(np.float64)
    return x, y


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("pw_shape", [(5,), (1, 5), (64, 1), (64, 5), ()])
def test_array_pos_weight_matches_torch(pw_shape, reduction):
    rng = np.random.default_rng(0)
    x, y = _data(rng, soft=pw_shape == (64, 5))
    pw = rng.uniform(0.0, 4.0, pw_shape)
    want_v, want_g = _torch(x, y, pw, reduction)
    v, g = fl.binary_cross_entropy.value_and_grad(x, y, pos_weight=pw, reduction=reduction)
    np.testing.assert_allclose(v, want_v, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(g, want_g, rtol=1e-12, atol=1e-15)  # torch cancels differently
    np.testing.assert_array_equal(fl.binary_cross_entropy(x, y, pos_weight=pw, reduction=reduction), v)
    np.testing.assert_array_equal(fl.binary_cross_entropy.grad(x, y, pos_weight=pw, reduction=reduction), g)


def test_array_pos_weight_with_weights_float32_and_out():
    rng = np.random.default_rng(1)
    x, y = _data(rng)
    pw = rng.uniform(0.5, 3.0, 5)
    w = rng.uniform(0.0, 1.0, (64, 1))
    want_v, want_g = _torch(x, y, pw, "mean", weight=np.broadcast_to(w, x.shape).copy())
    v, g = fl.binary_cross_entropy.value_and_grad(x, y, pos_weight=pw, weight=w)
    # fastloss's weighted mean divides by the weight sum (its documented reduction), torch's by the count
    np.testing.assert_allclose(v * w.sum() * 5 / x.size, want_v, rtol=1e-13)
    np.testing.assert_allclose(g * w.sum() * 5 / x.size, want_g, rtol=1e-12, atol=1e-17)
    out = np.empty_like(x)
    assert fl.binary_cross_entropy.grad(x, y, pos_weight=pw, weight=w, out=out) is out
    np.testing.assert_array_equal(out, g)
    v32, g32 = fl.binary_cross_entropy.value_and_grad(x.astype(np.float32), y.astype(np.float32),
                                                      pos_weight=pw.astype(np.float32))
    assert v32.dtype == np.float32 and g32.dtype == np.float32
    np.testing.assert_allclose(v32, _torch(x, y, pw, "mean")[0], rtol=1e-5)


def test_scalar_forms_are_unchanged():
    rng = np.random.default_rng(2)
    x, y = _data(rng)
    want = fl.binary_cross_entropy.value_and_grad(x, y, pos_weight=2.5)
    for pw in (np.float64(2.5), np.array(2.5), np.full(5, 2.5), [2.5] * 5, np.full((64, 5), 2.5)):
        v, g = fl.binary_cross_entropy.value_and_grad(x, y, pos_weight=pw)
        np.testing.assert_allclose(v, want[0], rtol=1e-15)
        np.testing.assert_allclose(g, want[1], rtol=1e-15)
    # the scalar form's compiled fast path is the one used for scalars
    assert isinstance(fl.binary_cross_entropy(x, y, pos_weight=np.array(2.5)), np.float64)


@pytest.mark.parametrize("bad,exc,match", [
    (np.array([1.0, -1.0, 2.0, 1.0, 1.0]), ValueError, r"pos_weight must be in \[0, inf\]; pos_weight\[1\] = -1\.0"),
    (np.array([1.0, np.nan, 2.0, 1.0, 1.0]), ValueError, r"pos_weight\[1\] = nan"),
    (np.ones(4), ValueError, r"pos_weight of shape \(4,\) does not broadcast to the loss shape \(64, 5\)"),
    (np.ones((2, 64, 5)), ValueError, "does not broadcast"),
    (np.array(["a", "b"]), TypeError, "pos_weight must be a real number or array"),
])
def test_bad_array_pos_weights(bad, exc, match):
    x, y = _data(np.random.default_rng(3))
    with pytest.raises(exc, match=match):
        fl.binary_cross_entropy(x, y, pos_weight=bad)
    with pytest.raises(exc, match=match):
        fl.binary_cross_entropy.value_and_grad(x, y, pos_weight=bad)


def test_array_variant_declaration():
    spec = fl.binary_cross_entropy.spec
    variant = spec.array_variant(["pos_weight"])
    assert [i.name for i in variant.inputs] == ["pred", "target", "pos_weight"]
    assert not variant.inputs[-1].differentiable and variant.params == ()
    assert "array_like" in fl.binary_cross_entropy.__doc__
    # a loss without an array kernel has no array variant
    with pytest.raises(TypeError, match="array_kernel"):
        fl.huber.spec.array_variant(["delta"])
    assert isinstance(Loss(variant)(np.zeros(2), np.ones(2), np.full(2, 3.0)), np.floating)


def test_batch_scorer_takes_an_array_pos_weight(tmp_path, capsys):
    import json

    from fastloss.__main__ import main
    from fastloss.scoring import per_sample, score

    rng = np.random.default_rng(4)
    x, y = _data(rng, (500, 3))
    np.save(tmp_path / "p.npy", x)
    np.save(tmp_path / "t.npy", y)
    rc = main(["score", "binary_cross_entropy", "--pred", str(tmp_path / "p.npy"), "--target", str(tmp_path / "t.npy"),
               "--param", "pos_weight=1,2.5,4", "--per-sample", str(tmp_path / "ps.npy"),
               "--summary", str(tmp_path / "s.json"), "--chunk-size", "64", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    got = json.loads((tmp_path / "s.json").read_text())
    pw = [1.0, 2.5, 4.0]
    assert got["params"] == {"pos_weight": pw}
    assert {k: v for k, v in got.items() if k not in ("loss", "params")} == score(
        "binary_cross_entropy", x, y, pos_weight=np.array(pw)).to_dict()
    np.testing.assert_array_equal(np.load(tmp_path / "ps.npy"), per_sample("binary_cross_entropy", x, y, pos_weight=pw))
    assert got["mean"] != score("binary_cross_entropy", x, y).to_dict()["mean"]
    # a wrong number of classes is refused before scoring
    rc = main(["score", "binary_cross_entropy", "--pred", str(tmp_path / "p.npy"), "--target", str(tmp_path / "t.npy"),
               "--param", "pos_weight=1,2", "--no-progress"])
    assert rc != 0 and "pos_weight of shape (2,)" in capsys.readouterr().err
