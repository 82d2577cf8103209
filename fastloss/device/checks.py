"""Checks of the values in a call's CUDA arrays: the host's rules, run on the device, read back once.

The host kinds refuse values a loss cannot take (:mod:`fastloss._call`): negative weights, targets
outside their declared domain (``binary_cross_entropy``'s target in [0, 1]), discrete inputs outside
their set, class labels, rows a declaration's ``row_check`` rejects. On CUDA arrays each check is a
grid-stride kernel that records the first offending index with an integer atomic min (order-free,
so deterministic) into one slot of a small int64 array; a call queues all its checks, then
:meth:`Checks.raise_first` copies the slots back with one transfer and raises the error of the first
failing check, in the order the host makes its checks, with the host's message.

Synchronisation. Reading the slots waits for the kernels queued before them: one wait per call, and
only for calls whose arrays need checking (a weight outside :func:`fastloss._call.signed_weights`,
an input with a declared domain or a discrete set, class labels, a ``row_check``). A call with none
of these (``mse`` of two arrays, the framework adapters' backward passes) never waits. With
``config.CHECK_LABELS`` off nothing is queued and nothing waits; the values are used as given
(labels and rows the kernels cannot take still give NaN, never an out-of-bounds read).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import numpy as np

from .. import _call
from .._spec import Interval
from . import arrays as device
from . import config

#: What an untouched slot holds: larger than any index.
NONE_BAD = np.iinfo(np.int64).max

#: Slots allocated at once; a call with more checks reads the first ones back early (never seen).
CAPACITY = 8

_TRUSTED = contextvars.ContextVar("fastloss_device_trusted", default=False)


@contextlib.contextmanager
def trusted() -> Iterator[None]:
    """Skip the value checks of the calls made in this context (this thread or task only).

    For the package's own calls on arrays it built itself (the similarity kind's labels
    ``0 .. N-1``): checking them would only make the call wait for the device.
    """
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


class Checks:
    """The value checks of one call: queued on the call's stream, read back together."""

    def __init__(self, pl: device.Placement, loss: str) -> None:
        self.pl = pl
        self.loss = loss
        #: Whether checks run at all (``config.CHECK_LABELS``, outside :func:`trusted`).
        self.on = bool(config.CHECK_LABELS) and not _TRUSTED.get()
        self._slots = None
        self._reports: list[Callable[[int], None]] = []

    def slot(self, report: Callable[[int], None]):
        """A one-element int64 device array for a check to record its first bad index in
        (initialised to :data:`NONE_BAD`); ``report(index)`` raises that check's error."""
        if self._slots is not None and len(self._reports) == CAPACITY:
            self.raise_first()
        if self._slots is None:
            self._slots = self.pl.scratch(CAPACITY, np.int64)
        j = len(self._reports)
        bad = self._slots[j:j + 1]
        self.pl.kernels().fill[1, 1, self.pl.stream](bad, NONE_BAD)
        self._reports.append(report)
        return bad

    def raise_first(self) -> None:
        """Wait for the checks queued so far; raise the error of the first that failed (in queue order)."""
        reports, self._reports = self._reports, []
        if not reports:
            return
        found = self.pl.to_host(self._slots[:len(reports)])  # the one wait of the call
        self._slots = None
        for first, report in zip(found, reports):
            if first != NONE_BAD:
                report(int(first))

    # -- the checks ---------------------------------------------------------------------------

    def interval(self, name: str, v, low: float, high: float, closed=(True, True),
                 error: Callable[[str, object], Exception] | None = None) -> None:
        """Queue: no element of ``v`` outside the interval (NaN passes, as on the host).

        ``error(where, value)`` makes the exception (``where`` as :func:`fastloss._call.position`
        writes it); the default is the host's declared-domain message.
        """
        n = int(v.size)
        if not self.on or n == 0:
            return
        if error is None:
            dom = Interval(low, high, tuple(closed))

            def error(where, value):
                return _call.domain_error(self.loss, name, dom, where, value)

        x = self._flat(v)
        pl = self.pl
        shape = tuple(v.shape)

        def report(i: int) -> None:
            raise error(_call.position(i, shape), pl.to_host(x[i:i + 1])[0])

        bad = self.slot(report)
        blocks, threads = pl.grid(n)
        pl.kernels().first_outside[blocks, threads, pl.stream](
            device.U(n), x, float(low), float(high), bool(closed[0]), bool(closed[1]), bad)

    def domain(self, name: str, v, dom: Interval) -> None:
        """Queue: ``v`` lies in its declared domain ``dom`` (the host's :func:`fastloss._call.check_domain`)."""
        self.interval(name, v, dom.low, dom.high, dom.closed)

    def weight(self, wview) -> None:
        """Queue: no negative weight (the host's :func:`fastloss._call.check_weight`)."""
        if wview is None or not _call.weights_must_be_checked(wview.dtype):
            return
        dom = _call.WEIGHT_DOMAIN
        self.interval("weight", wview, dom.low, dom.high, dom.closed,
                      error=lambda where, value: _call.weight_error(self.loss, where, value))

    def discrete(self, name: str, v, values) -> None:
        """Queue: every element of ``v`` is one of ``values`` (the host's ``check_discrete`` message)."""
        n = int(v.size)
        if not self.on or n == 0:
            return
        x = self._flat(v)
        pl = self.pl
        shape = tuple(v.shape)

        def report(i: int) -> None:
            value = pl.to_host(x[i:i + 1])[0]
            index = np.unravel_index(i, shape) if len(shape) > 1 else (i,)
            allowed = ", ".join(f"{a:g}" for a in values)
            raise ValueError(
                f"{self.loss}: {name} must take values in {{{allowed}}}; "
                f"{name}[{', '.join(str(int(j)) for j in index)}] = {value.item()!r}"
            )

        bad = self.slot(report)
        blocks, threads = pl.grid(n)
        pl.kernels().first_not_in[blocks, threads, pl.stream](device.U(n), x, tuple(float(a) for a in values), bad)

    def _flat(self, v):
        """``v`` as a flat C-contiguous device array (a gathered copy when it is strided)."""
        if device.c_contiguous(v):
            return device.flat(v) if v.ndim else device.with_shape(v, (1,))
        return device.gathered(self.pl, v, tuple(v.shape))
