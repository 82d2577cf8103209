"""Naive value-and-gradient implementations: the NumPy code a user would write without fastloss.

Each loss's peer is its reference (:mod:`fastloss.reference`) at the input's dtype with the
``mean`` reduction: plain, idiomatic whole-array expressions, temporaries and all, and the gradient
of that mean with respect to each differentiable input. They are the baseline of the benchmark's
speedup column and are tested against fastloss in ``tests/test_bench.py``.

Each function takes an array namespace ``xp`` (NumPy by default). The references use only
functions that NumPy, CuPy and ``jax.numpy`` share and modify nothing in place, so the same code is
the "naive CuPy" peer on a GPU and, differentiated by JAX, the body of the JAX peer.

Signature: ``fn(*inputs, xp=numpy, **params) -> (value, grad)``, or ``(value, (grad, ...))`` for
losses with several differentiable inputs (in argument order).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..reference import REFERENCES, value_and_grad


def _peer(name: str) -> Callable:
    def peer(*inputs, xp=np, **params):
        value, grads = value_and_grad(name, *inputs, xp=xp, **params)
        return value, grads[0] if len(grads) == 1 else grads

    peer.__name__ = peer.__qualname__ = name
    peer.__doc__ = f"The mean of :func:`fastloss.reference.{name}` and its gradient."
    return peer


#: ``name -> peer`` for every loss that has a reference.
NAIVE: dict[str, Callable] = {name: _peer(name) for name in REFERENCES}
