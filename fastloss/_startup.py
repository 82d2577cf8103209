"""Keep Numba's start-up light: the first kernel call should not import SciPy.

Numba builds its CPU target on the first call of any compiled function, and on the way imports
``numba.np.arraymath``, which asks whether a BLAS is available by *importing*
``scipy.linalg.cython_blas`` (``_HAVE_BLAS``). Where SciPy is installed (JAX and scikit-learn
bring it) that import is ~0.15 s: half of the first call of a loss loaded from the on-disk cache.
No fastloss kernel uses BLAS. :func:`defer_blas_check` answers Numba's question by looking for
SciPy without importing it; Numba still imports it, as before, the first time some compiled code
really calls a BLAS routine (``np.dot`` on arrays), so nothing changes for other Numba users in
the process except when SciPy is imported.
"""

from __future__ import annotations

import importlib.util
import sys


def _scipy_installed() -> None:
    """Numba's ``ensure_blas`` contract (raise ImportError without a BLAS), without the import."""
    try:
        found = importlib.util.find_spec("scipy.linalg") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ImportError("scipy 0.16+ is required for linear algebra")


def defer_blas_check() -> None:
    """Import ``numba.np.arraymath`` with its BLAS probe answered by :func:`_scipy_installed`.

    Does nothing when that module is already imported (its answer is then already computed).
    """
    if "numba.np.arraymath" in sys.modules:
        return
    import numba.np.linalg as linalg

    real = linalg.ensure_blas
    linalg.ensure_blas = _scipy_installed
    try:
        import numba.np.arraymath as arraymath
    finally:
        linalg.ensure_blas = real
    # arraymath bound the name at import ("from numba.np.linalg import ensure_blas"): give it back
    # the real check, which np.dot & co. call when they are compiled
    if getattr(arraymath, "ensure_blas", None) is _scipy_installed:
        arraymath.ensure_blas = real
