"""User-defined losses: a scalar Python function becomes a full :class:`fastloss.Loss`.

::

    import math
    import fastloss as fl

    @fl.pointwise
    def pseudo_huber(pred, target, delta=1.0):
        d = pred - target
        s = math.sqrt(1.0 + (d / delta) ** 2)
        return delta * delta * (s - 1.0), d / s      # value, d value / d pred

    pseudo_huber.value_and_grad(p, t, delta=0.5, reduction="sum")

The decorator reads the function's signature: arguments without a default are the loss's array
inputs (the first one is differentiable unless ``differentiable=`` says otherwise), arguments with
a default are keyword-only hyper-parameters. It declares a :class:`~fastloss._spec.LossSpec` of the
same kind as the built-in losses, so the result runs through the same compiled driver, with the
same dtypes, broadcasting, reductions, weights, ``out=``, ``stats=`` and determinism.

:func:`rowwise` does the same for per-sample losses over a class axis: the function receives one
row of logits, the row's target and a buffer for the row's gradient, and returns the row's loss.

The function is compiled (for float64 arguments) when it is decorated, so a function Numba cannot
compile, or one returning the wrong number of values, fails there with a message naming it.
Custom losses are not added to ``fastloss.REGISTRY`` unless ``register=True``.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numba.core import types as nbtypes
from numba.core.errors import NumbaError

from ._api import Loss
from ._compile import scalar_kernel
from ._registry import REGISTRY
from ._spec import Discrete, Input, Interval, LossSpec, Param

__all__ = ["CustomLoss", "Discrete", "Interval", "pointwise", "rowwise"]

#: Keyword names every loss already takes; a custom loss's arguments must not reuse them.
RESERVED = ("weight", "reduction", "out", "stats")
#: ... and the options the rowwise kind adds.
RESERVED_ROWWISE = (*RESERVED, "axis", "ignore_index")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class CustomLoss(Loss):
    """A :class:`~fastloss.Loss` built from a user's scalar function (see :func:`pointwise`).

    ``func`` is the original Python function, still callable on scalars. Custom losses pickle by
    reference to the module attribute the decorator bound them to (like functions do).
    """

    def __init__(self, spec: LossSpec, func: Callable):
        super().__init__(spec)
        self.func = func
        self.__module__ = func.__module__
        self.__qualname__ = func.__qualname__

    def __repr__(self) -> str:
        return f"<fastloss custom {self.spec.kind} loss {self.spec.name}{self.__signature__}>"

    def __reduce__(self):
        module, qualname = self.__module__, self.__qualname__
        try:
            found = _lookup(module, qualname)
        except Exception:  # any failure to import or resolve means: not picklable by reference
            found = None
        if found is not self:
            raise pickle.PicklingError(
                f"cannot pickle custom loss {self.spec.name!r}: it is not reachable as {module}.{qualname}. "
                "Define it at module level with the decorator (not a lambda, a local function or a renamed "
                "copy) so that other processes can import it."
            )
        return (_lookup, (module, qualname))


def _lookup(module: str, qualname: str) -> Any:
    """The object called ``qualname`` in ``module`` (what unpickling a custom loss calls)."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def pointwise(
    func: Callable | None = None,
    *,
    name: str | None = None,
    differentiable: Sequence[str] | None = None,
    domains: Mapping[str, Interval | Discrete | tuple[float, float]] | None = None,
    register: bool = False,
    cache: bool | None = None,
):
    """Turn a scalar function ``f(*inputs, *params) -> (value, *grads)`` into a fused loss.

    Use as ``@fl.pointwise`` or ``@fl.pointwise(name=..., differentiable=..., ...)``.

    Parameters
    ----------
    func : callable
        Written with :mod:`math` and plain arithmetic (compiled with Numba in nopython mode).
        Its arguments without a default are the array inputs, in order; arguments with a
        numeric or bool default are hyper-parameters (keyword-only on the loss; passed to
        ``func`` as floats). It returns the per-element value followed by its derivative with
        respect to each differentiable input.
    name : str, optional
        Public name (error messages, docstring); defaults to the function's name.
    differentiable : sequence of str, optional
        Names of the inputs that get a gradient, in the order ``func`` returns them
        (default: the first input).
    domains : mapping, optional
        ``{argument name: domain}`` for inputs or hyper-parameters: an :class:`Interval`, a
        ``(low, high)`` closed interval or a :class:`Discrete` set. Hyper-parameters are
        checked against their domain at call time, inputs with a ``Discrete`` domain too (e.g.
        labels in ``{0, 1}``).
    register : bool, default False
        Also add the loss to ``fastloss.REGISTRY`` (``fl.get(name)``, the docs catalogue); the
        name must not be taken.
    cache : bool, optional
        Cache the compiled driver on disk. Default: when the function comes from a source file
        (functions made by ``exec``, in a REPL or notebook cell are compiled in memory).

    Returns
    -------
    CustomLoss
        Call it for the loss; ``.grad`` and ``.value_and_grad`` as for every fastloss loss.

    Raises
    ------
    TypeError
        When the signature cannot describe a loss, when Numba cannot compile ``func`` for
        float64 arguments (the message names the function and includes Numba's), or when it
        does not return ``1 + len(differentiable)`` numbers.
    """
    options = dict(name=name, differentiable=differentiable, domains=domains, register=register, cache=cache)
    if func is None:
        return lambda f: _build_pointwise(f, **options)
    return _build_pointwise(func, **options)


# -- building the declaration --------------------------------------------------------------------


def _build_pointwise(func, *, name, differentiable, domains, register, cache) -> CustomLoss:
    if not callable(func) or not hasattr(func, "__code__"):
        raise TypeError(f"fastloss.pointwise expects a Python function, got {func!r}")
    name = _loss_name(func, name)
    input_names, params = _split_signature(func, name)
    diff = _differentiable(name, input_names, differentiable)
    doms = _domains(name, input_names, params, domains)
    inputs = tuple(
        Input(n, f"Argument ``{n}`` of :func:`{func.__qualname__}`.", doms.get(n, Interval()), differentiable=n in diff)
        for n in input_names
    )
    params = tuple(
        Param(p.name, p.default, f"Hyper-parameter ``{p.name}``", doms.get(p.name), type=p.type) for p in params
    )
    # gradients come back in the order of the inputs; a different order in ``differentiable`` is an error
    if list(diff) != [n for n in input_names if n in diff]:
        raise TypeError(f"{name}: differentiable={tuple(diff)} must list inputs in argument order {input_names}")
    returns = ["value", *(f"d value/d {d}" for d in diff)]
    _check_kernel(func, name, nargs=len(input_names) + len(params), returns=returns)
    spec = LossSpec(
        name=name,
        kind="pointwise",
        kernel=func,
        inputs=inputs,
        params=params,
        summary=_summary(func, name, "pointwise"),
        options={"cache": _cacheable(func) if cache is None else bool(cache)},
    )
    return _finish(spec, func, register)


def rowwise(
    func: Callable | None = None,
    *,
    name: str | None = None,
    targets: str = "index",
    ignore_index: bool = True,
    domains: Mapping[str, Interval | Discrete | tuple[float, float]] | None = None,
    register: bool = False,
    cache: bool | None = None,
):
    """Turn a per-row function ``f(row, target, grad, *params) -> value`` into a fused rowwise loss.

    Use as ``@fl.rowwise`` or ``@fl.rowwise(targets="probs", ...)``::

        @fl.rowwise
        def my_cross_entropy(logits, target, grad):
            m = logits.max()
            s = 0.0
            for j in range(logits.size):
                s += math.exp(logits[j] - m)
            for j in range(logits.size):
                grad[j] = math.exp(logits[j] - m) / s
            grad[target] -= 1.0
            return m + math.log(s) - logits[target]

    The loss then takes ``logits`` of any shape with the classes along ``axis`` (default -1),
    like the built-in rowwise losses (``fl.cross_entropy``, ...), and runs through their driver:
    rows in blocks in parallel, deterministic reductions, in-place ``out=``, ``stats=``.

    Parameters
    ----------
    func : callable
        Compiled with Numba in nopython mode. Its first argument is one row of the first input
        (a 1-D float array over the class axis; read only), its second the row's target (an
        integer class index, or a 1-D row of probabilities with ``targets="probs"``), its third
        a float64 buffer of the row's length, zeroed, to fill with ``d value / d row``. Arguments with a
        numeric or bool default are keyword-only hyper-parameters (passed as floats). It returns
        the row's loss. The driver scales the gradient by the reduction (and the class weight),
        so ``func`` writes the plain derivative.
    name : str, optional
        Public name; defaults to the function's name.
    targets : {"index", "probs"}, default "index"
        Class-index targets (integers, the shape of the first input without ``axis``) or
        probability targets (floats, its shape).
    ignore_index : bool, default True
        For index targets: add PyTorch's ``ignore_index=-100`` option (those rows count for
        nothing: zero loss, zero gradient, left out of the mean).
    domains, register, cache
        As for :func:`pointwise`.

    Returns
    -------
    CustomLoss

    Notes
    -----
    With index targets, ``weight=`` takes one weight per class: row ``i`` counts ``weight[target_i]``
    times and the mean divides by the summed weights (PyTorch's ``cross_entropy`` convention).
    Probability targets take no class weights.
    """
    options = dict(name=name, targets=targets, ignore_index=ignore_index, domains=domains, register=register,
                   cache=cache)
    if func is None:
        return lambda f: _build_rowwise(f, **options)
    return _build_rowwise(func, **options)


#: Names of the custom rowwise losses made in this process. The rowwise kind keeps one compiled
#: driver per loss *name* (the pointwise kind: per kernel), so a second custom rowwise loss with
#: the same name would run the first one's code; that is refused instead.
_ROWWISE_NAMES: dict[str, Callable] = {}


def _build_rowwise(func, *, name, targets, ignore_index, domains, register, cache) -> CustomLoss:
    if not callable(func) or not hasattr(func, "__code__"):
        raise TypeError(f"fastloss.rowwise expects a Python function, got {func!r}")
    name = _loss_name(func, name)
    if targets not in ("index", "probs"):
        raise ValueError(f"{name}: targets must be 'index' or 'probs', got {targets!r}")
    args, params = _split_signature(func, name, RESERVED_ROWWISE)
    if len(args) != 3:
        raise TypeError(
            f"{name}: a rowwise loss function takes (row, target, grad) before its hyper-parameters; "
            f"got {args}"
        )
    row, target, _ = args
    doms = _domains(name, [row, target], params, domains)
    inputs = (
        Input(row, f"Rows of scores (the classes along ``axis``) for :func:`{func.__qualname__}`.",
              doms.get(row, Interval()), differentiable=True),
        Input(target, "Class indices (integers, the shape of the first input without ``axis``)." if targets == "index"
              else "Class probabilities (the shape of the first input).",
              doms.get(target, Interval(0.0, math.inf) if targets == "index" else Interval(0.0, 1.0))),
    )
    params = tuple(
        Param(p.name, p.default, f"Hyper-parameter ``{p.name}``", doms.get(p.name), type=p.type) for p in params
    )
    previous = _ROWWISE_NAMES.get(name)
    if (previous is not None and previous is not func) or (name in REGISTRY and REGISTRY[name].spec.kind == "rowwise"):
        raise ValueError(
            f"{name}: a rowwise loss with this name already exists in this process; pass name= to choose "
            "another (compiled rowwise drivers are kept per name)"
        )
    _ROWWISE_NAMES[name] = func
    spec = LossSpec(
        name=name,
        kind="rowwise",
        kernel=_row_adapter(func, len(params), targets),
        inputs=inputs,
        params=params,
        summary=_summary(func, name, "rowwise"),
        options={
            "targets": (targets,),
            "ignore_index": bool(ignore_index) and targets == "index",
            "class_weight": targets == "index",
            "mean": "weight",
            "cache": _cacheable(func) if cache is None else bool(cache),
        },
    )
    row_type = nbtypes.float64[::1]
    target_type = nbtypes.int64 if targets == "index" else nbtypes.float64[::1]
    arg_types = (row_type, target_type, row_type) + (nbtypes.float64,) * len(params)
    loss = _finish(spec, func, register)
    # Typing array code takes Numba seconds, and a driver loaded from the disk cache needs none
    # of it: the function is checked when its driver fails to compile, not at decoration.
    loss._kind = _CheckOnFailure(
        loss._kind, func, lambda: _check_kernel(func, name, nargs=len(arg_types), returns=None, arg_types=arg_types)
    )
    return loss


class _CheckOnFailure:
    """A kind that explains a failure to compile a custom loss's driver in terms of the user's function."""

    def __init__(self, kind, func: Callable, check: Callable[[], None]):
        self.kind = kind
        self.name = kind.name
        self.func = func
        self.check = check

    def extra_params(self, spec: LossSpec):
        return self.kind.extra_params(spec)

    def run(self, spec, *args, **kwargs):
        try:
            return self.kind.run(spec, *args, **kwargs)
        except NumbaError as exc:
            self.check()  # raises a TypeError naming the function when it is the function's fault
            msg = _ANSI.sub("", str(exc)).strip()
            raise TypeError(f"{spec.name}: Numba cannot compile the driver around {_where(self.func)}:\n{msg}") from exc


_ROW_ADAPTER = """
def _row_adapter(x, y, t, w, g, scale, loss{params}):
    nr, nc = x.shape
    buf = np.empty(nc)
    need_grad = g.shape[0] > 0
    for r in range(nr):
        buf[:] = 0.0
        wr = 1.0
        if {by_index} and w.size:
            wr = w[y[r]]
        loss[r] = wr * _row_loss(x[r], {target}, buf{params})
        if need_grad:
            k = scale * wr
            gr = g[r]
            for j in range(nc):
                gr[j] = buf[j] * k
"""


def _row_adapter(func: Callable, nparams: int, targets: str) -> Callable:
    """The block kernel of the rowwise contract (see ``fastloss.kinds.softmax.cpu``) around ``func``.

    The user's function writes a private float64 buffer, so a gradient written over the logits
    (``out=logits``) cannot corrupt a row before the function has read it; the buffer is then
    scaled into the gradient row while both are in cache.
    """
    params = "".join(f", p{k}" for k in range(nparams))
    src = _ROW_ADAPTER.format(
        params=params, by_index="True" if targets == "index" else "False",
        target="y[r]" if targets == "index" else "t[r]",
    )
    # The adapter lives in the user's module (``__name__``), so that the rowwise kind compiles
    # the user's function with it and the cache key covers the function's source.
    ns: dict[str, Any] = {"np": np, "_row_loss": func, "__name__": func.__module__}
    exec(src, ns)  # generated for one parameter count; no user input in the text
    adapter = ns["_row_adapter"]
    adapter.__qualname__ = f"{func.__qualname__}.<row adapter>"
    return adapter


def _finish(spec: LossSpec, func: Callable, register: bool) -> CustomLoss:
    loss = CustomLoss(spec, func)
    if register:
        if spec.name in REGISTRY:
            raise ValueError(f"a loss named {spec.name!r} is already registered; pass name= to choose another")
        REGISTRY[spec.name] = loss
    return loss


def _loss_name(func: Callable, name: str | None) -> str:
    if name is None:
        name = func.__name__ if func.__name__.isidentifier() else "lambda"
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a loss name must be a Python identifier, got {name!r}")
    return name


class _ParamDecl:
    def __init__(self, name: str, default: Any):
        self.name = name
        self.default = default
        self.type = bool if isinstance(default, bool) else int if isinstance(default, int) else float


def _split_signature(func: Callable, name: str, reserved=RESERVED) -> tuple[list[str], list[_ParamDecl]]:
    """Inputs (no default) then hyper-parameters (numeric or bool default) from ``func``'s signature."""
    inputs: list[str] = []
    params: list[_ParamDecl] = []
    for p in inspect.signature(func).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{name}: a loss function cannot take *args or **kwargs")
        if p.name in reserved:
            raise TypeError(
                f"{name}: argument name {p.name!r} is reserved by the loss API ({', '.join(reserved)}); rename it"
            )
        if p.default is p.empty:
            if params:
                raise TypeError(f"{name}: array input {p.name!r} follows a hyper-parameter; inputs come first")
            inputs.append(p.name)
            continue
        d = p.default
        if not isinstance(d, (bool, int, float)) or (isinstance(d, float) and math.isnan(d)):
            raise TypeError(f"{name}: hyper-parameter {p.name!r} needs a numeric or bool default, got {d!r}")
        params.append(_ParamDecl(p.name, d))
    if not inputs:
        raise TypeError(f"{name}: the function needs at least one array input (an argument without a default)")
    return inputs, params


def _differentiable(name: str, inputs: list[str], differentiable: Sequence[str] | None) -> tuple[str, ...]:
    if differentiable is None:
        return (inputs[0],)
    if isinstance(differentiable, str):
        differentiable = (differentiable,)
    diff = tuple(differentiable)
    unknown = [d for d in diff if d not in inputs]
    if unknown or not diff or len(set(diff)) != len(diff):
        raise ValueError(f"{name}: differentiable={diff!r} must name distinct inputs among {inputs}")
    return diff


def _domains(name, inputs, params, domains) -> dict[str, Interval | Discrete]:
    out: dict[str, Interval | Discrete] = {}
    known = set(inputs) | {p.name for p in params}
    for key, dom in (domains or {}).items():
        if key not in known:
            raise ValueError(f"{name}: domains names {key!r}, which is not an argument of the function")
        if isinstance(dom, tuple) and len(dom) == 2:
            dom = Interval(float(dom[0]), float(dom[1]))
        if not isinstance(dom, (Interval, Discrete)):
            raise TypeError(f"{name}: the domain of {key!r} must be an Interval, a (low, high) pair or a Discrete")
        out[key] = dom
    for p in params:
        dom = out.get(p.name)
        if dom is not None and p.type is not bool and not dom.contains(float(p.default)):
            raise ValueError(f"{name}: the default {p.default!r} of {p.name!r} is outside its domain {dom}")
    return out


def _summary(func: Callable, name: str, kind: str) -> str:
    doc = inspect.getdoc(func)
    if doc:
        return doc
    return f"Custom {kind} loss ``{name}`` (from ``{func.__module__}.{func.__qualname__}``)."


def _where(func: Callable) -> str:
    code = func.__code__
    return f"{func.__qualname__} ({code.co_filename}:{code.co_firstlineno})"


def _cacheable(func: Callable) -> bool:
    """Whether ``func`` lives in a source file (so its compiled driver can be found again)."""
    return os.path.isfile(func.__code__.co_filename)


def _check_kernel(func: Callable, name: str, *, nargs: int, returns: list[str] | None, arg_types=None) -> None:
    """Compile ``func`` now (float64 scalars, or ``arg_types``) and check what it returns.

    ``returns`` names the numbers of the expected tuple; ``None`` means one number.
    """
    disp = scalar_kernel(func)
    sig = tuple(arg_types) if arg_types is not None else (nbtypes.float64,) * nargs
    try:
        disp.compile(sig)
    except Exception as exc:  # Numba raises many error types; all mean "cannot compile"
        msg = _ANSI.sub("", str(exc)).strip()
        what = ", ".join(str(t) for t in sig)
        raise TypeError(f"{name}: Numba cannot compile {_where(func)} for arguments ({what}):\n{msg}") from exc
    rt = disp.overloads[sig].signature.return_type
    number = (nbtypes.Float, nbtypes.Integer, nbtypes.Boolean)
    if returns is None:
        if not isinstance(rt, number):
            raise TypeError(f"{name}: {_where(func)} must return the row's loss (one number), but it returns {rt}")
        return
    ok = isinstance(rt, nbtypes.BaseTuple) and len(rt) == len(returns) and all(isinstance(t, number) for t in rt.types)
    if not ok:
        raise TypeError(
            f"{name}: {_where(func)} must return {len(returns)} numbers ({', '.join(returns)}), "
            f"but it returns {rt}"
        )
