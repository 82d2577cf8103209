"""Embedding losses (contrastive, triplet margin, cosine embedding, InfoNCE): values, gradients, bad inputs, PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
from rowcases import check_against_reference, check_finite_differences, check_weights, row_inputs

import fastloss as fl

EMBEDDING = ["contrastive", "triplet_margin", "cosine_embedding", "info_nce"]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", EMBEDDING)
def test_value_grad_and_fused_match_reference(name, reduction):
    check_against_reference(name, reduction)


@pytest.mark.parametrize("name", EMBEDDING)
def test_weighted_reductions(name):
    check_weights(name)


@pytest.mark.parametrize("name", EMBEDDING)
def test_every_gradient_matches_finite_differences(name):
    check_finite_differences(name)


@pytest.mark.parametrize("name", EMBEDDING)
def test_float32_close_to_float64(name):
    loss = fl.get(name)
    inputs = row_inputs(loss.spec, (200,), (16,), np.random.default_rng(2))
    v64, g64 = loss.value_and_grad(*inputs)
    v32, g32 = loss.value_and_grad(*[x.astype(np.float32) if x.ndim == 2 else x for x in inputs])
    assert v32.dtype == np.float32
    np.testing.assert_allclose(v32, v64, rtol=2e-5)
    for a, b in zip(g32, g64):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5 * np.max(np.abs(b)))


# -- shapes and bad inputs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["contrastive", "cosine_embedding", "triplet_margin", "info_nce"])
def test_mismatched_row_counts_raise(name):
    x = np.zeros((4, 3))
    args = [x, np.zeros((5, 3))] + ([np.zeros(4)] if name in ("contrastive", "cosine_embedding") else [])
    if name == "triplet_margin":
        args.append(x)
    with pytest.raises(ValueError, match="shape"):
        fl.get(name)(*args)


@pytest.mark.parametrize("name", ["contrastive", "cosine_embedding"])
def test_targets_need_one_value_per_row(name):
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="one value per row"):
        fl.get(name)(x, x, np.ones(5))
    with pytest.raises(ValueError, match="one value per row"):
        fl.get(name)(x, x, np.ones((4, 3)))


@pytest.mark.parametrize(("name", "bad"), [("contrastive", -1), ("contrastive", 0.5), ("cosine_embedding", 0)])
def test_wrong_target_values_raise_naming_the_first(name, bad):
    x = np.ones((4, 3))
    y = np.ones(4)
    y[2] = bad
    with pytest.raises(ValueError, match=r"target\[2\]"):
        fl.get(name)(x, x, y)


def test_leading_axes_index_rows_and_a_single_row_gives_a_scalar():
    rng = np.random.default_rng(3)
    x1, x2 = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    y = rng.integers(0, 2, (2, 3))
    per_row = fl.contrastive(x1, x2, y, reduction="none")
    assert per_row.shape == (2, 3)
    flat = fl.contrastive(x1.reshape(6, 5), x2.reshape(6, 5), y.reshape(6), reduction="none")
    np.testing.assert_array_equal(per_row.reshape(6), flat)
    one = fl.contrastive(x1[0, 0], x2[0, 0], y[0, 0], reduction="none")
    assert one.shape == () and one == per_row[0, 0]
    g1, _ = fl.contrastive.grad(x1, x2, 1)  # a scalar target applies to every row
    assert g1.shape == x1.shape


def test_zero_vectors_follow_pytorch():
    z = np.zeros((2, 3))
    x = np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    # cosine: 1e-12 in each squared norm makes a zero vector's cosine 0 and its gradient finite
    v, (g1, g2) = fl.cosine_embedding.value_and_grad(z, x, np.array([1, -1]), reduction="none")
    np.testing.assert_array_equal(v, [1.0, 0.0])
    assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))
    eps = float(np.float32(1e-12))
    np.testing.assert_allclose(g1[0], -x[0] / np.sqrt(eps * (9 + eps)))
    # contrastive at distance 0: the similar term is 0, the dissimilar hinge m^2/2 with a 0 gradient
    v, (g1, g2) = fl.contrastive.value_and_grad(x, x, np.array([1, 0]), margin=2.0, reduction="none")
    np.testing.assert_array_equal(v, [0.0, 2.0])
    assert not np.any(g1) and not np.any(g2)
    # triplet: a zero distance has a zero gradient (PyTorch's norm backward), never NaN
    g = fl.triplet_margin.grad(x, x, x + 1.0, eps=0.0)
    assert all(np.all(np.isfinite(gi)) for gi in g)
    # InfoNCE: a zero row normalises to zero (F.normalize's max(norm, eps)); finite everywhere
    v, (g1, g2) = fl.info_nce.value_and_grad(z, x)
    assert np.isfinite(v) and np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))


def test_info_nce_needs_matrices_of_the_same_shape():
    with pytest.raises(ValueError, match="2-D"):
        fl.info_nce(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="same rows"):
        fl.info_nce(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="temperature"):
        fl.info_nce(np.zeros((3, 2)), np.zeros((3, 2)), temperature=0.0)


def test_info_nce_out_buffers_and_in_place():
    rng = np.random.default_rng(4)
    z1, z2 = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
    v, (g1, g2) = fl.info_nce.value_and_grad(z1, z2)
    o1, o2 = np.empty_like(z1), np.empty_like(z2)
    v2, (r1, r2) = fl.info_nce.value_and_grad(z1, z2, out=(o1, o2))
    assert r1 is o1 and r2 is o2 and v2 == v
    np.testing.assert_array_equal(o1, g1)
    a, b = z1.copy(), z2.copy()
    fl.info_nce.value_and_grad(a, b, out=(a, b))
    np.testing.assert_array_equal(a, g1)
    np.testing.assert_array_equal(b, g2)
    with pytest.raises(ValueError, match="shares memory"):
        fl.info_nce.grad(z1, z2, out=(z2, np.empty_like(z2)))


def test_empty_batches_behave_like_numpy():
    for name in EMBEDDING:
        loss = fl.get(name)
        inputs = row_inputs(loss.spec, (0,), (3,), np.random.default_rng(0))
        assert np.isnan(loss(*inputs))
        assert loss(*inputs, reduction="sum") == 0.0
        assert loss(*inputs, reduction="none").shape == (0,)
        assert all(g.shape == (0, 3) for g in loss.grad(*inputs))


# -- PyTorch -------------------------------------------------------------------------------------


def _torch_case(name, params, inputs):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ts = [torch.tensor(x, dtype=torch.float64) for x in inputs]
    diff = [k for k, i in enumerate(fl.get(name).spec.inputs) if i.differentiable]
    for k in diff:
        ts[k].requires_grad_(True)
    if name == "contrastive":
        d = torch.linalg.vector_norm(ts[0] - ts[1], dim=-1)
        y = ts[2]
        out = 0.5 * (y * d**2 + (1 - y) * F.relu(params["margin"] - d) ** 2)
    elif name == "triplet_margin":
        out = F.triplet_margin_loss(*ts, margin=params["margin"], p=params["p"], eps=params["eps"],
                                    swap=params["swap"], reduction="none")
    elif name == "cosine_embedding":
        out = F.cosine_embedding_loss(ts[0], ts[1], ts[2].long(), margin=params["margin"], reduction="none")
    else:
        logits = F.normalize(ts[0], dim=1) @ F.normalize(ts[1], dim=1).T / params["temperature"]
        labels = torch.arange(logits.shape[0])
        out = F.cross_entropy(logits, labels, reduction="none")
        if params["symmetric"]:
            out = 0.5 * (out + F.cross_entropy(logits.T, labels, reduction="none"))
    grads = torch.autograd.grad(out.sum(), [ts[k] for k in diff])
    return out.detach().numpy(), [g.numpy() for g in grads]


TORCH_CASES = [
    ("contrastive", {"margin": 1.0}), ("contrastive", {"margin": 3.0}),
    ("triplet_margin", {"margin": 1.0, "p": 2.0, "eps": 1e-6, "swap": False}),
    ("triplet_margin", {"margin": 0.5, "p": 1.0, "eps": 1e-6, "swap": True}),
    ("triplet_margin", {"margin": 2.0, "p": 3.0, "eps": 0.1, "swap": True}),
    ("cosine_embedding", {"margin": 0.0}), ("cosine_embedding", {"margin": 0.5}),
    ("info_nce", {"temperature": 0.1, "symmetric": True}), ("info_nce", {"temperature": 0.7, "symmetric": False}),
]


@pytest.mark.parametrize(("name", "params"), TORCH_CASES)
def test_matches_pytorch(name, params):
    loss = fl.get(name)
    inputs = row_inputs(loss.spec, (9,), (6,), np.random.default_rng(5), params)
    want, want_g = _torch_case(name, params, inputs)
    v, g = loss.value_and_grad(*inputs, reduction="none", **params)
    np.testing.assert_allclose(v, want, rtol=1e-12, atol=1e-14)
    for a, b in zip(g, want_g):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_matches_pytorch_on_ties_and_zero_vectors():
    """The conventions at the edges: a swap tie splits the gradient, the hinge passes it at exactly 0."""
    a = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]])
    p = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0]])
    # row 0: d(a, n) = d(p, n), a swap tie; row 1: margin + d(a, p) - d(a, n) = 0 exactly;
    # row 2: every distance 0
    n = np.array([[0.5, 1.0], [2.0, 0.0], [1.0, 2.0]])
    params = {"margin": 1.0, "p": 2.0, "eps": 0.0, "swap": True}
    want, want_g = _torch_case("triplet_margin", params, [a, p, n])
    v, g = fl.triplet_margin.value_and_grad(a, p, n, reduction="none", **params)
    np.testing.assert_allclose(v, want)
    for x, y in zip(g, want_g):
        np.testing.assert_allclose(x, y)
    z = np.zeros((2, 3))
    x = np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    for y in (np.array([1, -1]), np.array([-1, 1])):
        want, want_g = _torch_case("cosine_embedding", {"margin": 0.0}, [z, x, y])
        v, g = fl.cosine_embedding.value_and_grad(z, x, y, reduction="none")
        np.testing.assert_allclose(v, want)
        for xg, yg in zip(g, want_g):
            np.testing.assert_allclose(xg, yg, rtol=1e-12)
    want, want_g = _torch_case("info_nce", {"temperature": 0.1, "symmetric": True}, [x, np.ones((2, 3))])
    v, g = fl.info_nce.value_and_grad(x, np.ones((2, 3)), reduction="none")
    np.testing.assert_allclose(v, want)
    for xg, yg in zip(g, want_g):
        np.testing.assert_allclose(xg, yg, atol=1e-12)
