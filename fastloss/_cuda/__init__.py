"""The CUDA backend: the same losses on CUDA arrays, compiled from the same declarations.

Nothing here is imported, and ``numba.cuda`` is not loaded, until an input exposes a CUDA array
(``__cuda_array_interface__``: CuPy arrays, PyTorch CUDA tensors, Numba device arrays) or
:func:`cuda_available` is called. :func:`fastloss._kinds.select_kind` routes such calls to the
CUDA implementation of the spec's kind, registered in :data:`fastloss._kinds.CUDA_KINDS` by

* :mod:`fastloss._cuda.pointwise` (the pointwise kind),
* :mod:`fastloss._cuda.rowwise` (the rowwise kind),
* :mod:`fastloss._cuda.rowreduce` (the rowreduce kind: embedding and overlap losses),
* :mod:`fastloss._cuda.similarity` (the similarity kind: InfoNCE, on top of the two above),

which share :mod:`fastloss._cuda.device` (array conversion, allocation, streams, errors),
:mod:`fastloss._cuda.kernels` (reductions, copies, label checks) and :mod:`fastloss._cuda.config`
(launch configuration). :mod:`fastloss._cuda.ptx` compiles and assembles every kernel of a loss
for a compute capability without a GPU, and :mod:`fastloss._cuda.simulator` makes the Numba CUDA
simulator fast and race-free for the tests: what CI checks.
"""

from __future__ import annotations

import importlib

import numpy as np

#: Modules that register the CUDA implementation of each kind, imported on first use.
KIND_MODULES = {
    "pointwise": "fastloss._cuda.pointwise",
    "rowwise": "fastloss._cuda.rowwise",
    "rowreduce": "fastloss._cuda.rowreduce",
    "similarity": "fastloss._cuda.similarity",
}

_SCALARS = (float, int, bool, np.generic)


def is_device_array(x) -> bool:
    """Whether ``x`` lives on a CUDA device (without importing ``numba.cuda``)."""
    cls = type(x)
    if cls is np.ndarray or x is None or isinstance(x, _SCALARS):
        return False
    if getattr(cls, "__cuda_ndarray__", False):  # Numba device arrays, also the simulator's
        return True
    try:
        return hasattr(x, "__cuda_array_interface__")
    except RuntimeError:  # PyTorch refuses the interface of a CUDA tensor that requires grad
        return True


def require_same_device(spec, inputs, weight, out) -> None:
    """Raise ``TypeError`` when host arrays are mixed with CUDA arrays (before any GPU is needed)."""
    named = list(zip((i.name for i in spec.inputs), inputs))
    named.append(("weight", weight))
    outs = out if isinstance(out, tuple) else (out,)
    named += [(f"out[{j}]" if len(outs) > 1 else "out", o) for j, o in enumerate(outs)]
    for name, x in named:
        if isinstance(x, (np.ndarray, list, tuple)):  # numbers are fine: broadcast on the device
            raise TypeError(
                f"{spec.name}: {name} is on the host ({type(x).__name__}) but other arguments are CUDA arrays; "
                "pass all inputs on the same device"
            )


def cuda_available() -> bool:
    """Whether CUDA arrays can be used: ``numba-cuda`` is installed and a GPU (or the simulator) answers."""
    from . import device

    try:
        device.load()
    except (ImportError, RuntimeError):
        return False
    return True


def kind_for(name: str):
    """The CUDA implementation of the kind called ``name`` (checking numba-cuda and the GPU first)."""
    from .. import _kinds
    from . import device

    kind = _kinds.CUDA_KINDS.get(name)
    if kind is None:
        device.load()  # raises a clear ImportError / RuntimeError
        module = KIND_MODULES.get(name)
        if module is None:
            raise NotImplementedError(
                f"fastloss: losses of the {name!r} kind have no CUDA implementation yet; pass host (NumPy) arrays"
            )
        importlib.import_module(module)
        kind = _kinds.CUDA_KINDS[name]
    return kind
