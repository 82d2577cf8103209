"""Loss declarations, one module per family. Importing a family registers its losses."""

from __future__ import annotations

from . import classification, probabilistic, regression  # noqa: F401  (registration order = catalogue order)
