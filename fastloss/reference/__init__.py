"""One plain reference per registered loss: its per-sample values and gradients, in array code.

A reference is the textbook formula of its loss written with whole-array operations of an array
namespace ``xp`` (NumPy by default; CuPy and ``jax.numpy`` work too), numerically stable forms
(``logaddexp``, ``log1p``, ``expm1``, shifted softmax) and nothing modified in place. It is used

* by the tests, in float64, as the independent answer every kernel must give;
* by the benchmark, at the input's dtype and with the ``mean`` reduction, as the naive NumPy
  (and CuPy) peer that the speedups are measured against (:mod:`fastloss.bench.naive`), and as
  the function JAX differentiates for its peer.

``REFERENCES[name](*inputs, xp=numpy, **params)`` returns a :class:`Reference`: the per-sample
losses (one per element for pointwise losses, one per row otherwise) and ``vjp(cot)``, the
gradients of ``sum(cot * loss)``. :func:`value_and_grad` applies a reduction (``none``, ``sum``,
``mean``, sample weights) the way the kernels do, once for every loss. The modules mirror
``fastloss.losses``; every registered loss must have a reference here (a test checks it).
"""

from __future__ import annotations

# the family modules register their references when imported
from . import classification, embedding, multiclass, overlap, probabilistic, ranking, regression, regularization  # noqa: F401
from ._common import REFERENCES, Reference, value_and_grad

__all__ = ["REFERENCES", "Reference", "value_and_grad"]
