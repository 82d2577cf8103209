"""References for the regularisation penalties (one input: the parameter array)."""

import numpy as np


def l1(x):
    return np.abs(x), (np.sign(x),)


def l2(x):
    return 0.5 * x**2, (x,)


REFERENCES = {"l1": l1, "l2": l2}
