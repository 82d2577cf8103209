"""Small valid inputs for every registered loss, by kind, for the framework adapters' tests.

A loss is tested through ``fastloss.torch`` and ``fastloss.jax`` by being declared: its kind picks
the data here. A kind unknown here fails those tests (``inputs`` raises) until it is added.
"""

from __future__ import annotations

import numpy as np
from cases import pointwise_inputs
from rowcases import default_shape, row_inputs

import fastloss as fl

NAMES = fl.names()


def inputs(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """float64 inputs (integer class labels where a rowwise loss takes indices), a few samples each."""
    spec = fl.get(name).spec
    if spec.kind == "pointwise":
        return pointwise_inputs(spec, (3, 4), rng)
    if spec.kind == "rowwise":
        x = rng.normal(0.0, 1.5, size=(4, 5))
        if "index" in spec.options.get("targets", ("index",)):
            return [x, rng.integers(0, 5, size=4)]
        return [x, rng.dirichlet(np.ones(5), size=4)]
    if spec.kind in ("rowreduce", "similarity"):
        lead, row = default_shape(spec)
        if spec.kind == "rowreduce" and spec.options.get("rows", "last") == "first":
            lead, row = (2,), (2, 3)  # masks: keep the finite differences few
        else:
            lead = (min(lead[0], 4),)
        return row_inputs(spec, lead, row, rng)
    raise AssertionError(f"{name}: no adapter test data for the {spec.kind!r} kind; add it to tests/adaptercases.py")


def weight(name: str, xs: list[np.ndarray], rng: np.random.Generator) -> np.ndarray | None:
    """A weight with the loss's own semantics: per element (pointwise, broadcast over the last axis),
    per class (rowwise, where the loss takes class weights), per row / per pair (rowreduce, similarity)."""
    spec = fl.get(name).spec
    if spec.kind == "pointwise":
        return rng.uniform(0.5, 2.0, size=(xs[0].shape[0], 1))
    if spec.kind == "rowwise":
        return rng.uniform(0.5, 2.0, size=xs[0].shape[-1]) if spec.options.get("class_weight", True) else None
    if spec.kind == "rowreduce":
        per_row = spec.options.get("row_inputs", ())
        first = next(x for x, i in zip(xs, spec.inputs) if i.name not in per_row)
        lead = first.shape[:1] if spec.options.get("rows", "last") == "first" else first.shape[:-1]
        return rng.uniform(0.5, 2.0, size=lead)
    if spec.kind == "similarity":
        return rng.uniform(0.5, 2.0, size=xs[0].shape[:1])
    raise AssertionError(f"{name}: no adapter weight for the {spec.kind!r} kind")


def differentiable(name: str) -> list[int]:
    return [k for k, i in enumerate(fl.get(name).spec.inputs) if i.differentiable]


def as_tuple(g):
    return g if isinstance(g, tuple) else (g,)
