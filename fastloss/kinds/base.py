"""The registry of loss kinds. A kind turns validated arguments into a value and gradients.

Each kind module (``_pointwise.py``, ``_rowwise.py``, ...) defines a class implementing
:class:`Kind` and registers one instance here under its name; :class:`fastloss._api.Loss`
dispatches on ``spec.kind``.
"""

from __future__ import annotations

from typing import Any, Protocol

from .._spec import LossSpec, Param


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

#: CUDA implementations of the kinds, by kind name. Registered by ``fastloss.device`` the first time
#: a CUDA array arrives, so that host-only use never imports ``numba.cuda``.
CUDA_KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    KINDS[kind.name] = kind
    return kind


def register_cuda_kind(kind: Kind) -> Kind:
    CUDA_KINDS[kind.name] = kind
    return kind
