"""The kinds of loss: one package per kind, each owning its host side, CPU kernels and CUDA kernels.

* :mod:`~fastloss.kinds.pointwise`: elementwise losses over broadcast inputs (MSE, BCE, ...);
* :mod:`~fastloss.kinds.softmax`: losses over a softmax of a class axis (cross entropy, focal, ...);
* :mod:`~fastloss.kinds.rowsum`: losses of sums over each row's elements (dice, triplet, ...);
* :mod:`~fastloss.kinds.similarity`: softmax cross entropy over a similarity matrix (InfoNCE).

Importing this package registers the host side of every kind in :data:`~fastloss.kinds.base.KINDS`.
The CUDA side of a kind (``<kind>/cuda.py``) is imported only when a CUDA array arrives, so that
host-only use never loads ``numba.cuda``; :func:`select_kind` is the one dispatch point.
"""

from __future__ import annotations

import importlib

import numpy as np

from ..device import is_device_array, require_same_device
from . import pointwise, rowsum, similarity, softmax  # noqa: F401  (register the host kinds)
from .base import CUDA_KINDS, KINDS, Kind

__all__ = ["CUDA_KINDS", "CUDA_MODULES", "KINDS", "Kind", "cuda_kind", "loss_ptx", "select_kind"]

#: The module that registers the CUDA side of each kind, imported on first use.
CUDA_MODULES = {
    "pointwise": "fastloss.kinds.pointwise.cuda",
    "rowwise": "fastloss.kinds.softmax.cuda",
    "rowreduce": "fastloss.kinds.rowsum.cuda",
    "similarity": "fastloss.kinds.similarity.cuda",
}


def cuda_kind(name: str, *, device: bool = True) -> Kind:
    """The CUDA side of the kind called ``name``.

    With ``device=True`` (calls) numba-cuda and a GPU (or the simulator) are checked first, with a
    clear error; ``device=False`` (PTX compilation) needs neither a GPU nor the simulator.
    """
    kind = CUDA_KINDS.get(name)
    if kind is None or device:
        if device:
            from ..device import arrays

            arrays.load()  # raises a clear ImportError / RuntimeError
        module = CUDA_MODULES.get(name)
        if module is None:
            raise NotImplementedError(
                f"fastloss: losses of the {name!r} kind have no CUDA implementation yet; pass host (NumPy) arrays"
            )
        importlib.import_module(module)
        kind = CUDA_KINDS[name]
    return kind


def select_kind(kind: Kind, spec, inputs, weight, out) -> Kind:
    """``kind`` itself for host arrays; its CUDA side when any argument is a CUDA array.

    The one dispatch point between host and device (called by :class:`fastloss._api.Loss`); for
    NumPy arguments it costs one type check each.
    """
    args = list(inputs)
    args.append(weight)
    if out is not None:
        args.extend(out if isinstance(out, tuple) else (out,))
    for x in args:
        if type(x) is not np.ndarray and is_device_array(x):
            require_same_device(spec, inputs, weight, out)
            return cuda_kind(kind.name)
    return kind


def loss_ptx(loss, dtype, cc=None, threads: int = 256, labels=np.int64) -> dict[str, str]:
    """PTX of every kernel specific to ``loss`` for inputs of ``dtype`` (and class labels of dtype
    ``labels``, for the kinds that take them), by name; needs no GPU."""
    from ..device import ptx

    cc = ptx.DEFAULT_CC if cc is None else cc
    kind = cuda_kind(loss.spec.kind, device=False)
    with ptx.target(cc):
        return kind.ptx(loss, np.dtype(dtype), cc, threads, labels=np.dtype(labels))
