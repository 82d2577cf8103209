"""Plain float64 NumPy references, independent of the package, one module per loss family.

Each module defines ``REFERENCES: dict[str, callable]``. A pointwise reference takes the inputs
(already broadcast, float64) and the loss's parameters as keywords and returns
``(per_element_loss, (grad_input_0, ...))`` for the *unreduced* loss (gradients of the sum).
Other kinds document their own convention in their module. Every registered loss must have one.
"""

from __future__ import annotations

import importlib
import pkgutil

REFERENCES: dict = {}

for _info in pkgutil.iter_modules(__path__):
    _mod = importlib.import_module(f"{__name__}.{_info.name}")
    for _name, _fn in _mod.REFERENCES.items():
        assert _name not in REFERENCES, f"duplicate reference for {_name}"
        REFERENCES[_name] = _fn
