"""CUDA infrastructure shared by the kinds' CUDA sides: nothing here knows a loss or a kind.

Nothing is imported, and ``numba.cuda`` is not loaded, until an input exposes a CUDA array
(``__cuda_array_interface__``: CuPy arrays, PyTorch CUDA tensors, Numba device arrays) or
:func:`cuda_available` is called; :func:`fastloss.kinds.select_kind` then routes the call to the
CUDA side of the loss's kind (``fastloss/kinds/<kind>/cuda.py``).

* :mod:`~fastloss.device.arrays`: array conversion, allocation, streams, errors;
* :mod:`~fastloss.device.kernels`: ordered reductions, copies, label checks;
* :mod:`~fastloss.device.checks`: the host's value checks (weights, domains, labels) run on the device, read back once;
* :mod:`~fastloss.device.config`: launch configuration;
* :mod:`~fastloss.device.matmul`: dense products through the arrays' framework (cuBLAS);
* :mod:`~fastloss.device.ptx`: compiling and assembling kernels for a compute capability without a GPU;
* :mod:`~fastloss.device.simulator`: a fast, race-free Numba CUDA simulator for the tests.
"""

from __future__ import annotations

import numpy as np

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
    from . import arrays

    try:
        arrays.load()
    except (ImportError, RuntimeError):
        return False
    return True
