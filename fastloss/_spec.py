"""The declaration of a loss: everything the package, its tests, docs and benchmarks need to know.

A loss is declared once, in ``fastloss/losses/<family>.py``, as a :class:`LossSpec`. The kind's
driver compiles ``spec.kernel``; :mod:`fastloss._api` builds the public callable, its signature
and its docstring from the spec; tests generate data from ``Input.domain`` and parameters from
``Param.domain``; the docs catalogue and the benchmark iterate over the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

@dataclass(frozen=True)
class Interval:
    """A real interval; ``closed`` says which ends belong to it."""

    low: float = -math.inf
    high: float = math.inf
    closed: tuple[bool, bool] = (True, True)

    def contains(self, x: float) -> bool:
        """Whether ``x`` lies in the interval."""
        lo_ok = x >= self.low if self.closed[0] else x > self.low
        hi_ok = x <= self.high if self.closed[1] else x < self.high
        return bool(lo_ok and hi_ok)

    def __str__(self) -> str:
        left = "[" if self.closed[0] else "("
        right = "]" if self.closed[1] else ")"
        return f"{left}{_fmt(self.low)}, {_fmt(self.high)}{right}"


@dataclass(frozen=True)
class Discrete:
    """A finite set of allowed values (class labels, ``{-1, +1}`` targets, ...)."""

    values: tuple[float, ...]

    def contains(self, x: float) -> bool:
        """Whether ``x`` is one of the values."""
        return x in self.values

    def __str__(self) -> str:
        return "{" + ", ".join(_fmt(v) for v in self.values) + "}"


def _fmt(x: float) -> str:
    if x == math.inf:
        return "inf"
    if x == -math.inf:
        return "-inf"
    return f"{x:g}"


@dataclass(frozen=True)
class Input:
    """A positional array argument of a loss.

    ``domain`` is where the loss is defined (used to generate test data; a :class:`Discrete`
    domain is also validated at call time). ``differentiable`` inputs get a gradient.
    """

    name: str
    doc: str
    domain: Interval | Discrete = Interval()
    differentiable: bool = False
    #: Whether the input may be omitted (``None``), e.g. an optional variance.
    optional: bool = False


@dataclass(frozen=True)
class Param:
    """A keyword-only hyper-parameter."""

    name: str
    default: Any
    doc: str
    domain: Interval | Discrete | None = None
    #: ``float``, ``bool`` or ``int``; bools and ints are passed to kernels as floats.
    type: type = float
    #: Values with their own code path (limits, special cases) that tests must cover.
    special: tuple = ()
    #: Whether ``None`` is accepted (the option is off, e.g. ``softcap=None``); kernels receive it as 0.0.
    optional: bool = False
    #: Whether an array is accepted too (a float ``type`` only): one value per element, broadcast
    #: to the inputs' shape without enlarging it, e.g. PyTorch's per-class ``pos_weight``. A call
    #: that passes an array runs :meth:`LossSpec.array_variant`, where the parameter is an input;
    #: scalars keep the compiled fast path of ordinary parameters.
    array: bool = False

    def check(self, loss: str, value: Any) -> Any:
        """Validate and normalise ``value``; raise ``TypeError`` / ``ValueError`` naming the loss.

        bool parameters take Python or NumPy bools (and the integers 0 and 1); int parameters
        Python or NumPy integers (not bools, not floats: ``axis=1.0`` is a mistake) that fit in
        int64; float parameters real numbers that fit in float64 (``10**400`` does not).
        """
        if value is None and self.optional:
            return None
        if self.array and is_array(value):
            return self._check_array(loss, value)
        if self.type is bool:
            if not isinstance(value, (bool, np.bool_, int, np.integer)) or value not in (0, 1):
                raise TypeError(f"{loss}: {self.name} must be a bool, got {value!r}")
            return bool(value)
        if self.type is int:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{loss}: {self.name} must be an integer, got {value!r}")
            converted = int(value)
            if not _INT64_MIN <= converted <= _INT64_MAX:
                raise ValueError(f"{loss}: {self.name} must fit in a 64-bit integer, got {value!r}")
        else:
            try:
                if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
                    raise TypeError
                converted = self.type(value)
            except (TypeError, ValueError):
                raise TypeError(f"{loss}: {self.name} must be a {self.type.__name__}, got {value!r}") from None
            except OverflowError:  # an int beyond the float64 range
                raise ValueError(f"{loss}: {self.name} is outside the float64 range, got {value!r}") from None
        if self.type is float and math.isnan(converted):
            raise ValueError(f"{loss}: {self.name} must not be NaN")
        if self.domain is not None and not self.domain.contains(converted):
            raise ValueError(f"{loss}: {self.name} must be in {self.domain}, got {value!r}")
        return converted

    def _check_array(self, loss: str, value: Any) -> Any:
        """A host array's dtype and values (a device array's values stay unchecked: reading them waits)."""
        from .device import is_device_array  # imports no numba.cuda

        if is_device_array(value):
            return value
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{loss}: {self.name} must be a real number or array, got dtype {arr.dtype}")
        if self.domain is not None:
            inside = _within(self.domain, arr)
            if not inside.all():
                i = np.unravel_index(int(np.argmin(inside)), arr.shape)
                raise ValueError(f"{loss}: {self.name} must be in {self.domain}; "
                                 f"{self.name}[{', '.join(str(int(j)) for j in i)}] = {arr[i].item()!r}")
        return arr


def is_array(value: Any) -> bool:
    """Whether ``value`` is an array of at least one dimension (host, device, or a sequence)."""
    from .device import is_device_array

    if is_device_array(value):
        return len(value.shape) > 0
    return not isinstance(value, (str, bytes)) and np.ndim(value) > 0


def _within(domain: Interval | Discrete, arr: np.ndarray) -> np.ndarray:
    """Element-wise :meth:`Interval.contains` / :meth:`Discrete.contains` (NaN is outside)."""
    if isinstance(domain, Discrete):
        return np.isin(arr, domain.values)
    lo = arr >= domain.low if domain.closed[0] else arr > domain.low
    hi = arr <= domain.high if domain.closed[1] else arr < domain.high
    return lo & hi


@dataclass(frozen=True)
class Properties:
    """What the docs catalogue shows to help users choose a loss."""

    problem: str  # "regression", "binary classification", ...
    outliers: str  # sensitivity to outliers: "high", "low", ...
    gradient: str  # gradient behaviour, e.g. "linear in the residual", "bounded"
    use: str  # typical use
    cost: str  # relative compute cost: "low", "medium", "high"


@dataclass(frozen=True)
class LossSpec:
    """The single declaration of a loss.

    Attributes
    ----------
    name
        Public name (``fastloss.<name>``).
    kind
        Name of the driver kind (``"pointwise"``, ``"rowwise"``, ...).
    kernel
        Scalar function written with :mod:`math` only. For the pointwise kind:
        ``kernel(*inputs, *params) -> (value, *grads)`` with one gradient per differentiable input.
    inputs, params
        Positional array arguments and keyword-only hyper-parameters.
    summary, formula, gradient
        One-line description and LaTeX for the value and the gradient (docs and docstring).
    reference
        Literature reference.
    equivalents
        ``{"PyTorch": "torch.nn.functional.huber_loss", ...}``; ``semantics`` says how they match.
    properties
        Catalogue properties.
    example
        A doctest snippet (without the ``>>>``-free lines stripped) that runs in CI.
    prepare
        Optional ``prepare(params: dict) -> tuple[float, ...]`` turning checked parameters into the
        kernel's parameter tuple (defaults to the values in declaration order, as floats).
    check
        Optional ``check(params: dict)`` for constraints between parameters.
    fd_safe
        Optional ``fd_safe(inputs: tuple[np.ndarray], params: dict, h: float) -> bool mask``:
        where a finite-difference check of the gradient is meaningful (away from kinks).
    domains
        Optional ``domains(params) -> {input name: domain}``: input domains that depend on the
        parameters (e.g. rates must be positive unless given as logs).
    options
        Kind-specific options (e.g. rowwise: target forms, ``ignore_index`` support).
    hessian
        Optional scalar second derivative (pointwise kind): ``hessian(*inputs, *params) -> h`` with
        ``h = d^2 value / d x^2`` for the one differentiable input, or a tuple with one such diagonal
        entry per differentiable input. Written with :mod:`math` only, like ``kernel``.
    hessian_formula
        LaTeX for the Hessian (docs and docstring).
    hessian_note
        What the Hessian is where the true second derivative is not usable (zero almost
        everywhere, a kink, a negative value), and which library's convention it follows.
    """

    name: str
    kind: str
    kernel: Callable
    inputs: Sequence[Input]
    params: Sequence[Param] = ()
    summary: str = ""
    formula: str = ""
    gradient: str = ""
    reference: str = ""
    equivalents: Mapping[str, str] = field(default_factory=dict)
    semantics: str = ""
    properties: Properties | None = None
    example: str = ""
    prepare: Callable[[dict], tuple] | None = None
    check: Callable[[dict], None] | None = None
    fd_safe: Callable | None = None
    domains: Callable[[dict], dict] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    hessian: Callable | None = None
    hessian_formula: str = ""
    hessian_note: str = ""

    @property
    def differentiable(self) -> tuple[Input, ...]:
        return tuple(i for i in self.inputs if i.differentiable)

    def input_domains(self, params: Mapping[str, Any]) -> dict[str, Interval | Discrete]:
        """Each input's domain for these parameter values."""
        doms = {i.name: i.domain for i in self.inputs}
        if self.domains is not None:
            doms.update(self.domains(dict(params)))
        return doms

    def array_variant(self, names: Sequence[str]) -> LossSpec:
        """This loss with the parameters ``names`` (declared ``array=True``) as extra inputs.

        What runs when they are given as arrays: they follow the declared inputs, in declaration
        order, as non-differentiable inputs with the parameters' domains, and the kernel is the
        ``array_kernel`` option, ``kernel(*inputs, *arrays, *other parameters)``, and the Hessian
        the ``array_hessian`` option (same arguments).
        """
        if self.prepare is not None or "array_kernel" not in self.options:
            raise TypeError(f"{self.name}: array parameters need an 'array_kernel' option and no 'prepare'")
        by_name = {p.name: p for p in self.params}
        extra = tuple(Input(n, by_name[n].doc, by_name[n].domain or Interval()) for n in names)
        return replace(
            self,
            kernel=self.options["array_kernel"],
            hessian=self.options.get("array_hessian"),
            inputs=(*self.inputs, *extra),
            params=tuple(p for p in self.params if p.name not in names),
            check=None,
            options={k: v for k, v in self.options.items() if k not in ("array_kernel", "array_hessian")},
        )

    def kernel_params(self, params: Mapping[str, Any]) -> tuple[float, ...]:
        if self.prepare is not None:
            return tuple(float(v) for v in self.prepare(dict(params)))
        return tuple(0.0 if params[p.name] is None else float(params[p.name]) for p in self.params)
