"""Exact, order-independent summation of float64 values (a "superaccumulator").

Every finite float64 is an integer multiple of ``2**-1074``. We keep the running sum as that
integer, spread over ``NDIG`` int64 digits of 32 bits each (digit ``k`` weighs ``2**(32 k - 1074)``),
so additions are exact integer additions: the result does not depend on the order of the values,
on how they were split into chunks, or on how partial sums were combined (a Dask tree reduction
gives the same bits as one sequential pass). Converting the integer back to a float with CPython's
correctly rounded ``int / int`` gives the correctly rounded sum (the same value as ``math.fsum``),
and a correctly rounded mean ``sum / n`` in one rounding.

Each value adds three non-negative parts below ``2**33`` to three consecutive digits, so a digit
absorbs ``2**30`` additions before it can overflow; :func:`normalize` propagates carries and is
called at least every ``NORMALIZE_EVERY`` additions.
"""

from __future__ import annotations

import math

import numpy as np

from ._compile import njit

#: Digits of 32 bits: the largest finite float64 (``< 2**1024``) needs ``(2045 + 84) / 32`` of them,
#: plus headroom for carries.
NDIG = 68
#: Additions allowed between two normalisations (each digit then stays below ``2**62``).
NORMALIZE_EVERY = 1 << 28
_SCALE = 1 << 1074


@njit(nogil=True)
def _add_bits(digits, b):
    """Add the float64 whose bit pattern is the int64 ``b`` (finite) to ``digits``."""
    ef = (b >> 52) & 0x7FF
    m = b & 0xFFFFFFFFFFFFF
    p = 0
    if ef != 0:
        m = m | 0x10000000000000
        p = ef - 1
    k = p >> 5
    s = p & 31
    lo = (m & 0xFFFFFFFF) << s  # < 2**63
    hi = (m >> 32) << s  # < 2**52
    d0 = lo & 0xFFFFFFFF
    d1 = (lo >> 32) + (hi & 0xFFFFFFFF)
    d2 = hi >> 32
    if b < 0:
        digits[k] -= d0
        digits[k + 1] -= d1
        digits[k + 2] -= d2
    else:
        digits[k] += d0
        digits[k + 1] += d1
        digits[k + 2] += d2


@njit(nogil=True)
def add_values(bits, digits):
    """Add every value of ``bits`` (an int64 view of finite float64 values) to ``digits``."""
    for i in range(bits.size):
        _add_bits(digits, bits[i])


@njit(nogil=True)
def add_grouped(bits, groups, digits2d, counts):
    """Add value ``i`` to row ``groups[i]`` of ``digits2d`` (skipped when the group is negative)."""
    for i in range(bits.size):
        g = groups[i]
        if g < 0:
            continue
        counts[g] += 1
        _add_bits(digits2d[g], bits[i])


@njit(nogil=True)
def normalize(digits2d):
    """Propagate carries so that every digit but the last lies in ``[0, 2**32)`` (rows independently)."""
    nd = digits2d.shape[1]
    for r in range(digits2d.shape[0]):
        carry = 0
        for k in range(nd - 1):
            v = digits2d[r, k] + carry
            digits2d[r, k] = v & 0xFFFFFFFF
            carry = v >> 32
        digits2d[r, nd - 1] += carry


def as_bits(values: np.ndarray) -> np.ndarray:
    """A contiguous int64 view of ``values`` converted to float64."""
    return np.ascontiguousarray(values, dtype=np.float64).view(np.int64)


def to_int(digits: np.ndarray) -> int:
    """The exact sum as an integer multiple of ``2**-1074``."""
    total = 0
    for k in range(digits.shape[0] - 1, -1, -1):
        total = (total << 32) + int(digits[k])
    return total


def ratio(num: int, den: int) -> float:
    """``num / den`` correctly rounded to float64 (``inf`` on overflow, ``nan`` for ``0 / 0``)."""
    if den == 0:
        return math.nan if num == 0 else (math.inf if num > 0 else -math.inf)
    if den < 0:
        num, den = -num, -den
    try:
        return num / den  # CPython's int / int is correctly rounded
    except OverflowError:
        return math.inf if num > 0 else -math.inf


def to_float(digits: np.ndarray) -> float:
    """The correctly rounded float64 value of the exact sum held in ``digits``."""
    return ratio(to_int(digits), _SCALE)


def mean(digits: np.ndarray, n: int) -> float:
    """The exact sum divided by ``n``, rounded once."""
    return ratio(to_int(digits), _SCALE * n)
