"""Ranking losses (pointwise pairs of scores): what the registry-wide pointwise tests do not cover.

Values, gradients, reductions, weights, layouts and dtypes of ``margin_ranking`` and ``bpr`` are
checked by ``test_pointwise_*.py`` and ``test_api_contract.py`` from their declarations.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastloss as fl


def test_margin_ranking_rejects_targets_other_than_plus_minus_one():
    x = np.zeros(4)
    with pytest.raises(ValueError, match=r"target\[1\]"):
        fl.margin_ranking(x, x, np.array([1, 0, -1, 1]))


def test_bpr_is_finite_for_any_score_difference():
    pos = np.array([-800.0, 0.0, 800.0])
    neg = np.zeros(3)
    v, (gp, gn) = fl.bpr.value_and_grad(pos, neg, reduction="none")
    np.testing.assert_allclose(v, [800.0, np.log(2.0), 0.0], rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(gp, [-1.0, -0.5, 0.0], atol=1e-300)
    np.testing.assert_array_equal(gn, -gp)
    v32 = fl.bpr(pos.astype(np.float32), neg.astype(np.float32), reduction="none")
    assert np.all(np.isfinite(v32))


def test_bpr_sampled_negatives_broadcast_and_sum_back():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=(5, 1)), rng.normal(size=(5, 7))
    gp, gn = fl.bpr.grad(pos, neg, reduction="sum")
    assert gp.shape == (5, 1) and gn.shape == (5, 7)
    np.testing.assert_allclose(gp[:, 0], -gn.sum(axis=1), rtol=1e-14)


@pytest.mark.parametrize("margin", [0.0, 0.3, -0.2])
def test_margin_ranking_matches_pytorch(margin):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=50), rng.normal(size=50)
    y = rng.choice([-1.0, 1.0], size=50)
    t1, t2 = torch.tensor(x1, requires_grad=True), torch.tensor(x2, requires_grad=True)
    for reduction in ("mean", "sum", "none"):
        out = torch.nn.functional.margin_ranking_loss(t1, t2, torch.tensor(y), margin=margin, reduction=reduction)
        g1, g2 = torch.autograd.grad(out.sum(), [t1, t2])
        v, (f1, f2) = fl.margin_ranking.value_and_grad(x1, x2, y, margin=margin, reduction=reduction)
        np.testing.assert_allclose(v, out.detach().numpy(), rtol=1e-14)
        np.testing.assert_allclose(f1, g1.numpy(), rtol=1e-14)
        np.testing.assert_allclose(f2, g2.numpy(), rtol=1e-14)


def test_bpr_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(0, 3, size=40), rng.normal(0, 3, size=40)
    tp, tn = torch.tensor(pos, requires_grad=True), torch.tensor(neg, requires_grad=True)
    out = -torch.nn.functional.logsigmoid(tp - tn).mean()
    gp, gn = torch.autograd.grad(out, [tp, tn])
    v, (fp, fn) = fl.bpr.value_and_grad(pos, neg)
    np.testing.assert_allclose(v, out.item(), rtol=1e-14)
    np.testing.assert_allclose(fp, gp.numpy(), rtol=1e-13)
    np.testing.assert_allclose(fn, gn.numpy(), rtol=1e-13)
