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

from .detect import is_device_array, require_same_device

__all__ = ["cuda_available", "is_device_array", "require_same_device"]

def cuda_available() -> bool:
    """Whether CUDA arrays can be used: ``numba-cuda`` is installed and a GPU (or the simulator) answers."""
    from . import arrays

    try:
        arrays.load()
    except (ImportError, RuntimeError):
        return False
    return True
