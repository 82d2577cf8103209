"""References for the regularisation penalties (``fastloss.losses.regularization``): one input."""

from __future__ import annotations

import numpy as np

from ._common import Reference, elementwise, reference


@reference
def l1(x, *, xp=np):
    return elementwise(xp.abs(x), xp.sign(x))


@reference
def l2(x, *, xp=np):
    return Reference(0.5 * x * x, lambda cot: (cot * x,))
