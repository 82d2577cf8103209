"""Telling CUDA arrays from host arrays without importing ``numba.cuda``."""

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
