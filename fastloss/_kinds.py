"""The registry of loss kinds. A kind turns validated arguments into a value and gradients.

Each kind module (``_pointwise.py``, ``_rowwise.py``, ...) defines a class implementing
:class:`Kind` and registers one instance here under its name; :class:`fastloss._api.Loss`
dispatches on ``spec.kind``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ._cuda import is_device_array
from ._spec import LossSpec, Param


class Kind(Protocol):
    name: str

    def extra_params(self, spec: LossSpec) -> tuple[Param, ...]:
        """Keyword options the kind adds to every loss of that kind (e.g. ``axis``)."""

    def run(
        self,
        spec: LossSpec,
        inputs: list[Any],
        params: dict[str, Any],
        weight: Any,
        reduction: str,
        *,
        need_value: bool,
        need_grad: bool,
        out: Any,
        stats: bool = False,
    ) -> tuple:
        """Return ``(value or None, gradients)``, one gradient per differentiable input.

        With ``stats=True`` return ``(value, gradients, GradStats)``, the statistics computed in
        the same pass as the gradients (see :mod:`fastloss._stats`).
        """


KINDS: dict[str, Kind] = {}

#: CUDA implementations of the kinds, by kind name. Registered by ``fastloss._cuda`` the first time
#: a CUDA array arrives, so that host-only use never imports ``numba.cuda``.
CUDA_KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    KINDS[kind.name] = kind
    return kind


def register_cuda_kind(kind: Kind) -> Kind:
    CUDA_KINDS[kind.name] = kind
    return kind


def select_kind(kind: Kind, spec: LossSpec, inputs, weight, out) -> Kind:
    """``kind`` itself for host arrays; its CUDA implementation when any argument is a CUDA array.

    The one dispatch point between host and device (called by :class:`fastloss._api.Loss`); for
    NumPy arguments it costs one type check each.
    """
    for x in inputs:
        if type(x) is not np.ndarray and is_device_array(x):
            return _cuda_kind(kind, spec, inputs, weight, out)
    if weight is not None and type(weight) is not np.ndarray and is_device_array(weight):
        return _cuda_kind(kind, spec, inputs, weight, out)
    if out is not None:
        for x in out if isinstance(out, tuple) else (out,):
            if type(x) is not np.ndarray and is_device_array(x):
                return _cuda_kind(kind, spec, inputs, weight, out)
    return kind


def _cuda_kind(kind: Kind, spec: LossSpec, inputs, weight, out) -> Kind:
    from ._cuda import kind_for, require_same_device

    require_same_device(spec, inputs, weight, out)
    return kind_for(kind.name)
