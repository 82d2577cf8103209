"""The kind interface and registries. A kind turns validated arguments into a value and gradients.

Each kind's host side (``fastloss/kinds/<kind>/host.py``) defines a class implementing
:class:`Kind` and registers one instance in :data:`KINDS`; its CUDA side registers in
:data:`CUDA_KINDS` when first needed. :class:`fastloss._api.Loss` dispatches on ``spec.kind``
through :func:`fastloss.kinds.select_kind`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from .._call import Result
from .._spec import LossSpec, Param


class Kind(Protocol):
    """What the rest of fastloss asks of a kind: nothing outside ``fastloss/kinds`` switches on a
    kind's name. The host side of each kind (``<kind>/host.py``) implements all of it; the CUDA side
    (``<kind>/cuda.py``) implements ``name``, ``extra_params`` and ``run``."""

    #: registry key, ``LossSpec.kind``
    name: str
    #: one loss per element (scoring and Dask may cut inputs along any axis), or one per row
    elementwise: bool
    #: ``"scale"`` or ``"weight"``: how the framework adapters differentiate ``reduction="none"``
    #: (see :mod:`fastloss._adapters`)
    none_backward: str

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
    ) -> Result:
        """One call: checks, the fused driver, the reduction (see :mod:`fastloss._call`).

        Returns :class:`~fastloss._call.Result`: the value (None unless asked for), one gradient
        per differentiable input (empty unless asked for) and, with ``stats=True``, the
        statistics of the gradients computed in the same pass (see :mod:`fastloss._stats`).
        """

    def per_sample_shape(self, spec: LossSpec, params: dict, shapes) -> tuple[int, ...]:
        """Shape of the ``reduction="none"`` value for inputs of these shapes (None: omitted)."""

    def none_rule(self, spec: LossSpec, params: dict, shapes, wanted) -> str:
        """``none_backward`` refined for one call (``wanted``: inputs whose gradient is needed)."""

    def cotangent_shape(self, spec: LossSpec, params: dict, value_shape, grad_ndim: int) -> tuple[int, ...]:
        """A per-sample cotangent reshaped to broadcast over a gradient of ``grad_ndim`` axes."""


_L = TypeVar("_L")


class Layouts(Generic[_L]):
    """A kind's per-loss layout (what it reads from a declaration once), built on first use.

    ``layouts(spec)`` returns ``build(spec)``, memoised by the spec's identity. The memo keeps the
    spec alive with its layout, so that its id is never reused by another spec.
    """

    def __init__(self, build: Callable[[LossSpec], _L]) -> None:
        self._build = build
        self._memo: dict[int, tuple[LossSpec, _L]] = {}

    def __call__(self, spec: LossSpec) -> _L:
        hit = self._memo.get(id(spec))
        if hit is None:
            hit = self._memo[id(spec)] = (spec, self._build(spec))
        return hit[1]


class CudaKind:
    """What the CUDA sides of the kinds share: no keyword options of their own, and ``run``, which
    makes the device of the first input current (its context and stream, see
    :class:`fastloss.device.arrays.Placement`) for ``_run(pl, spec, inputs, params, weight, reduction,
    need_value, need_grad, out, stats)``."""

    def extra_params(self, spec: LossSpec) -> tuple[Param, ...]:
        return ()

    def run(self, spec, inputs, params, weight, reduction, *, need_value, need_grad, out, stats=False,
            need_hess=False, hess_out=None, hess_floor=None):
        from ..device import arrays as device  # imports numba.cuda: CUDA calls only

        pl = device.Placement(spec.name, spec.inputs[0].name, inputs[0])
        with pl.active():
            if need_hess:  # only kinds that declare ``hessians`` are asked (see Loss._hess_method)
                return self._run(pl, spec, inputs, params, weight, reduction, need_value, need_grad, out, stats,
                                 need_hess=True, hess_out=hess_out, hess_floor=hess_floor)
            return self._run(pl, spec, inputs, params, weight, reduction, need_value, need_grad, out, stats)


KINDS: dict[str, Kind] = {}

#: CUDA implementations of the kinds, by kind name. Registered by ``fastloss.device`` the first time
#: a CUDA array arrives, so that host-only use never imports ``numba.cuda``.
CUDA_KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    KINDS[kind.name] = kind
    return kind


def register_cuda_kind(kind: Kind) -> Kind:
    CUDA_KINDS[kind.name] = kind
    return kind
