"""The registry of losses: declaring a spec here makes it public, tested, documented and benchmarked."""

from __future__ import annotations

from ._api import Loss
from ._spec import LossSpec

REGISTRY: dict[str, Loss] = {}
"""Every registered loss by name, in declaration order (the catalogue, tests and benchmarks iterate it)."""


def register(spec: LossSpec) -> Loss:
    """Build the public callable for ``spec`` and add it to the registry."""
    if spec.name in REGISTRY:
        raise ValueError(f"a loss named {spec.name!r} is already registered")
    loss = Loss(spec)
    REGISTRY[spec.name] = loss
    return loss


def get(name: str) -> Loss:
    """The registered loss called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no loss named {name!r}; available: {', '.join(sorted(REGISTRY))}") from None


def names(kind: str | None = None) -> list[str]:
    """Names of registered losses, optionally of one kind, in declaration order."""
    return [n for n, loss in REGISTRY.items() if kind is None or loss.spec.kind == kind]
