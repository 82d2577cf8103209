"""Overlap losses (soft Dice, Jaccard, Tversky; generalised IoU): values, gradients, bad inputs, PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
from rowcases import check_against_reference, check_finite_differences, check_weights, row_inputs

import fastloss as fl

OVERLAP = ["dice", "jaccard", "tversky", "giou"]
MASKS = ["dice", "jaccard", "tversky"]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", OVERLAP)
def test_value_grad_and_fused_match_reference(name, reduction):
    check_against_reference(name, reduction)


@pytest.mark.parametrize("name", OVERLAP)
def test_weighted_reductions(name):
    check_weights(name)


@pytest.mark.parametrize("name", OVERLAP)
def test_every_gradient_matches_finite_differences(name):
    check_finite_differences(name)


@pytest.mark.parametrize("name", MASKS)
def test_one_value_per_sample_over_every_other_axis(name):
    loss = fl.get(name)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 3, 5, 6))
    t = (rng.random((4, 3, 5, 6)) < 0.3).astype(np.float64)
    per_sample = loss(x, t, reduction="none")
    assert per_sample.shape == (4,)
    np.testing.assert_array_equal(per_sample, loss(x.reshape(4, -1), t.reshape(4, -1), reduction="none"))
    g = loss.grad(x, t)
    assert g.shape == x.shape
    for i in range(4):  # each sample alone gives the same value
        np.testing.assert_allclose(loss(x[i:i + 1], t[i:i + 1]), per_sample[i], rtol=1e-15)


@pytest.mark.parametrize("name", MASKS)
def test_from_logits_false_takes_probabilities(name):
    loss = fl.get(name)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 7, 7))
    t = rng.random((3, 7, 7))
    p = 1.0 / (1.0 + np.exp(-x))
    np.testing.assert_allclose(loss(p, t, from_logits=False), loss(x, t), rtol=1e-13)
    # chain rule: d/dx = d/dp * p (1 - p)
    np.testing.assert_allclose(loss.grad(p, t, from_logits=False) * p * (1 - p), loss.grad(x, t), rtol=1e-10)


def test_perfect_and_disjoint_masks():
    t = np.zeros((2, 4, 4))
    t[0, :2] = 1.0
    t[1, 1:3, 1:3] = 1.0
    for name in MASKS:
        loss = fl.get(name)
        np.testing.assert_allclose(loss(t, t, from_logits=False, smooth=0.0, reduction="none"), 0.0, atol=1e-15)
        np.testing.assert_allclose(loss(t, 1 - t, from_logits=False, smooth=0.0, reduction="none"), 1.0)
    # empty prediction and empty target: 0 with smoothing, NaN (0/0) without
    empty = np.zeros((1, 3, 3))
    assert fl.dice(empty, empty, from_logits=False) == 0.0
    assert np.isnan(fl.dice(empty, empty, from_logits=False, smooth=0.0))


def test_tversky_reduces_to_dice_and_jaccard():
    rng = np.random.default_rng(5)
    x, t = rng.normal(size=(3, 20)), rng.random((3, 20))
    np.testing.assert_allclose(fl.tversky(x, t, alpha=1.0, beta=1.0, reduction="none"),
                               fl.jaccard(x, t, reduction="none"), rtol=1e-14)
    np.testing.assert_allclose(fl.tversky(x, t, smooth=2.0, reduction="none"),
                               fl.dice(x, t, smooth=4.0, reduction="none"), rtol=1e-14)  # same ratio, doubled


def test_extreme_logits_stay_finite():
    x = np.array([[-800.0, 800.0, 0.0, 50.0]], dtype=np.float64)
    t = np.array([[0.0, 1.0, 1.0, 0.0]])
    for name in MASKS:
        v, g = fl.get(name).value_and_grad(x, t)
        assert np.isfinite(v) and np.all(np.isfinite(g))
        v, g = fl.get(name).value_and_grad(x.astype(np.float32), t)
        assert np.isfinite(v) and np.all(np.isfinite(g))


# -- bad inputs ----------------------------------------------------------------------------------


def test_degenerate_boxes_raise_naming_the_first():
    pred = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 1.0, 1.0]])
    target = np.array([[0.0, 0.0, 1.0, 1.0]] * 3)
    with pytest.raises(ValueError, match=r"pred_boxes\[2\].*degenerate"):
        fl.giou(pred, target)
    bad_target = target.copy()
    bad_target[1] = [0.0, 1.0, 1.0, 0.5]
    with pytest.raises(ValueError, match=r"target_boxes\[1\].*degenerate"):
        fl.giou.grad(target, bad_target)
    zero_area = np.array([[1.0, 1.0, 1.0, 1.0]])  # x1 == x2 is allowed (torchvision asserts x2 >= x1)
    assert np.isfinite(fl.giou(zero_area, np.array([[0.0, 0.0, 2.0, 2.0]])))


def test_boxes_need_four_coordinates_and_the_same_shape():
    with pytest.raises(ValueError, match="length 4"):
        fl.giou(np.zeros((3, 5)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="same shape"):
        fl.giou(np.zeros((3, 4)), np.zeros((2, 4)))


@pytest.mark.parametrize("name", MASKS)
def test_masks_of_mismatched_shapes_raise(name):
    with pytest.raises(ValueError, match="same shape"):
        fl.get(name)(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="same shape"):
        fl.get(name)(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="0-d"):
        fl.get(name)(np.float64(1.0), np.float64(1.0))


def test_parameters_outside_their_range_raise():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="smooth"):
        fl.dice(x, x, smooth=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        fl.tversky(x, x, alpha=-0.1)
    with pytest.raises(TypeError, match="from_logits"):
        fl.jaccard(x, x, from_logits="yes")


# -- PyTorch -------------------------------------------------------------------------------------


def _torch_mask_loss(name, x, t, params):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(t)
    p = torch.sigmoid(xt) if params["from_logits"] else xt
    dims = tuple(range(1, xt.ndim))
    i, sp, st = (p * tt).sum(dims), p.sum(dims), tt.sum(dims)
    s = params["smooth"]
    if name == "dice":
        out = 1 - (2 * i + s) / (sp + st + s)
    elif name == "jaccard":
        out = 1 - (i + s) / (sp + st - i + s)
    else:
        out = 1 - (i + s) / (i + params["alpha"] * (sp - i) + params["beta"] * (st - i) + s)
    (g,) = torch.autograd.grad(out.sum(), [xt])
    return out.detach().numpy(), g.numpy()


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("name", MASKS)
def test_masks_match_pytorch_autograd(name, from_logits):
    loss = fl.get(name)
    params = {p.name: p.default for p in loss.spec.params} | {"from_logits": from_logits}
    if name == "tversky":
        params |= {"alpha": 0.7, "beta": 0.3}
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 2, 5, 5)) if from_logits else rng.random((3, 2, 5, 5))
    t = (rng.random((3, 2, 5, 5)) < 0.4).astype(np.float64)
    want, want_g = _torch_mask_loss(name, x, t, params)
    v, g = loss.value_and_grad(x, t, reduction="none", **params)
    np.testing.assert_allclose(v, want, rtol=1e-12)
    np.testing.assert_allclose(g, want_g, rtol=1e-10, atol=1e-14)


def _torch_giou(pred, target, eps=1e-7):
    """torchvision.ops.generalized_box_iou_loss's arithmetic, in PyTorch (autograd gives its gradient)."""
    torch = pytest.importorskip("torch")
    try:
        from torchvision.ops import generalized_box_iou_loss

        fn = generalized_box_iou_loss
    except ImportError:
        def fn(b1, b2, reduction="none", eps=1e-7):
            x1, y1, x2, y2 = b1.unbind(-1)
            a1, c1, a2, c2 = b2.unbind(-1)
            xk1, yk1, xk2, yk2 = torch.max(x1, a1), torch.max(y1, c1), torch.min(x2, a2), torch.min(y2, c2)
            inter = torch.zeros_like(x1)
            mask = (yk2 > yk1) & (xk2 > xk1)
            inter[mask] = (xk2[mask] - xk1[mask]) * (yk2[mask] - yk1[mask])
            union = (x2 - x1) * (y2 - y1) + (a2 - a1) * (c2 - c1) - inter
            iou = inter / (union + eps)
            area_c = (torch.max(x2, a2) - torch.min(x1, a1)) * (torch.max(y2, c2) - torch.min(y1, c1))
            return 1 - (iou - (area_c - union) / (area_c + eps))
    pt = torch.tensor(pred, requires_grad=True)
    out = fn(pt, torch.tensor(target), reduction="none", eps=eps)
    (g,) = torch.autograd.grad(out.sum(), [pt])
    return out.detach().numpy(), g.numpy()


def test_giou_matches_torchvision():
    rng = np.random.default_rng(7)
    pred, target = row_inputs(fl.giou.spec, (50,), (4,), rng)
    # ties of min / max and touching boxes: PyTorch's autograd splits tied gradients evenly
    pred[0], target[0] = [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]
    pred[1], target[1] = [0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0]
    pred[2], target[2] = [0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 2.0, 3.0]
    pred[3], target[3] = [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 7.0]
    want, want_g = _torch_giou(pred, target)
    v, g = fl.giou.value_and_grad(pred, target, reduction="none")
    np.testing.assert_allclose(v, want, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(g, want_g, rtol=1e-12, atol=1e-15)
