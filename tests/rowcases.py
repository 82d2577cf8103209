"""Test data and checks for losses with one value per row (the rowreduce and similarity kinds).

Inputs come from the declarations: row-aligned inputs of shape ``lead + row``, per-row inputs
(targets) of shape ``lead``, values from each input's domain (or the loss's ``sample_inputs``
option where domains cannot say what is valid, e.g. boxes).
"""

from __future__ import annotations

import numpy as np
from cases import defaults, fd_gradient, param_variants, sample

import fastloss as fl
from fastloss._spec import Interval
from fastloss.reference import value_and_grad

ROWREDUCE = fl.names("rowreduce")
SIMILARITY = fl.names("similarity")

H = 1e-4


def default_shape(spec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(lead, row)``: a few rows of a few elements, in the loss's layout."""
    if spec.kind == "similarity":
        return (6,), (5,)
    if spec.options.get("row_length"):
        return (7,), (spec.options["row_length"],)
    if spec.options.get("rows", "last") == "first":
        return (3,), (2, 3, 4)
    return (6,), (5,)


def row_inputs(spec, lead, row, rng, params=None) -> list[np.ndarray]:
    """Valid float64 inputs with ``lead`` rows of shape ``row``.

    Where every row-aligned input ranges over the reals (embeddings), the later ones are made
    close to the first on every other row, so that both sides of each hinge are exercised.
    """
    params = defaults(spec) if params is None else params
    sampler = spec.options.get("sample_inputs")
    if sampler is not None:
        return [np.asarray(a, dtype=np.float64) for a in sampler(lead, rng)]
    doms = spec.input_domains(params)
    per_row = spec.options.get("row_inputs", ())
    arrays = [sample(doms[i.name], lead if i.name in per_row else lead + row, rng) for i in spec.inputs]
    aligned = [k for k, i in enumerate(spec.inputs) if i.name not in per_row]
    real = all(doms[spec.inputs[k].name] == Interval() for k in aligned)
    if real and len(aligned) > 1 and lead:
        first = arrays[aligned[0]]
        for k in aligned[1:]:
            arrays[k][::2] = first[::2] + rng.normal(0.0, 0.4, first[::2].shape)
    return arrays


def reduced_reference(name, inputs, params, reduction, weight=None):
    """Reference value and gradients of the reduced loss, in float64."""
    xs = [np.asarray(x, dtype=np.float64) for x in inputs]
    return value_and_grad(name, *xs, reduction=reduction, sample_weight=weight, **params)


def as_tuple(g):
    return g if isinstance(g, tuple) else (g,)


def check_against_reference(name: str, reduction: str, seed: int = 0) -> None:
    """Value, gradient and fused results agree with the reference for every parameter variant."""
    loss = fl.get(name)
    rng = np.random.default_rng(seed)
    lead, row = default_shape(loss.spec)
    for params in param_variants(loss.spec):
        inputs = row_inputs(loss.spec, lead, row, rng, params)
        want_v, want_g = reduced_reference(name, inputs, params, reduction)
        v = loss(*inputs, reduction=reduction, **params)
        g = as_tuple(loss.grad(*inputs, reduction=reduction, **params))
        fv, fg = loss.value_and_grad(*inputs, reduction=reduction, **params)
        assert len(g) == len(loss.spec.differentiable) == len(want_g)
        np.testing.assert_allclose(v, want_v, rtol=1e-11, atol=1e-13, err_msg=f"{name} {params}")
        np.testing.assert_array_equal(fv, v)
        for got, gf, want in zip(g, as_tuple(fg), want_g):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=f"{name} grad {params}")
            np.testing.assert_array_equal(got, gf)  # grad and value_and_grad run the same pass


def check_weights(name: str, seed: int = 1) -> None:
    loss = fl.get(name)
    rng = np.random.default_rng(seed)
    lead, row = default_shape(loss.spec)
    params = defaults(loss.spec)
    inputs = row_inputs(loss.spec, lead, row, rng)
    for weight in (rng.uniform(0.1, 2.0, size=lead), np.float64(3.0)):
        for reduction in ("mean", "sum", "none"):
            want_v, want_g = reduced_reference(name, inputs, params, reduction, weight)
            v, g = loss.value_and_grad(*inputs, weight=weight, reduction=reduction)
            np.testing.assert_allclose(v, want_v, rtol=1e-11, atol=1e-13)
            for got, want in zip(as_tuple(g), want_g):
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def check_finite_differences(name: str, seed: int = 10) -> None:
    """Every gradient agrees with a 4th-order central difference of the loss, on rows away from kinks."""
    loss = fl.get(name)
    rng = np.random.default_rng(seed)
    lead, row = default_shape(loss.spec)
    diff = [k for k, i in enumerate(loss.spec.inputs) if i.differentiable]
    checked = 0
    for params in param_variants(loss.spec):
        inputs = row_inputs(loss.spec, lead, row, rng, params)
        grads = as_tuple(loss.grad(*inputs, reduction="sum", **params))
        safe = np.ones(lead, bool) if loss.spec.fd_safe is None else loss.spec.fd_safe(inputs, params, 2 * H)
        for k, g in zip(diff, grads):
            want = fd_gradient(loss, inputs, k, params, H)
            np.testing.assert_allclose(g[safe], want[safe], rtol=1e-6, atol=1e-7, err_msg=f"{name} {params} input {k}")
            checked += int(np.sum(safe))
    assert checked > 0, f"{name}: no row was away from a kink"
