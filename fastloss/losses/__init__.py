"""Loss declarations, one module per family. Importing a family registers its losses."""

from __future__ import annotations

from . import (  # noqa: F401  (registration order = catalogue order)
    classification,
    embedding,
    multiclass,
    overlap,
    probabilistic,
    ranking,
    regression,
    regularization,
)
