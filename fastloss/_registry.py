"""The registry of losses: declaring a spec here makes it public, tested, documented and benchmarked."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the losses are built by fastloss._api.register, which fills this registry
    from ._api import Loss

REGISTRY: dict[str, Loss] = {}
"""Every registered loss by name, in declaration order (the catalogue, tests and benchmarks iterate it)."""


def get(name: str) -> Loss:
    """The registered loss called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no loss named {name!r}; available: {', '.join(sorted(REGISTRY))}") from None


def names(kind: str | None = None) -> list[str]:
    """Names of registered losses, optionally of one kind, in declaration order."""
    return [n for n, loss in REGISTRY.items() if kind is None or loss.spec.kind == kind]
