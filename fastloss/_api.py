"""The public callable built from a :class:`~fastloss._spec.LossSpec`.

``fl.huber(pred, target, *, delta=1.0, weight=None, reduction="mean")`` returns the loss,
``fl.huber.grad(...)`` the gradient(s), ``fl.huber.value_and_grad(...)`` both from one fused pass;
``hess``, ``grad_hess`` and ``value_grad_hess`` add the Hessian diagonal for losses that declare a
second derivative. Each carries a real :class:`inspect.Signature` and a numpydoc docstring generated from
the declaration.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from ._docs import render_docstring
from ._registry import REGISTRY, get
from ._spec import LossSpec, Param, is_array
from ._validate import check_reduction
from .kinds import KINDS, select_kind

_MISSING = object()


class Loss:
    """A fused loss-and-gradient function. Call it for the loss; see ``grad`` and ``value_and_grad``."""

    def __init__(self, spec: LossSpec):
        if spec.kind not in KINDS:
            raise ValueError(f"{spec.name}: unknown kind {spec.kind!r}; known: {sorted(KINDS)}")
        self.spec = spec
        self._kind = KINDS[spec.kind]
        self._params: tuple[Param, ...] = tuple(spec.params) + tuple(self._kind.extra_params(spec))
        self._input_names = tuple(i.name for i in spec.inputs)
        #: parameters that may be arrays, and the specs that run when some are (by their names)
        self._array_params = tuple(p.name for p in self._params if p.array)
        self._array_specs: dict[tuple[str, ...], LossSpec] = {}
        self.__name__ = self.__qualname__ = spec.name
        self.__module__ = "fastloss"
        self.__doc__ = render_docstring(spec, self._params, "value")
        self.__signature__ = self._signature(with_out=False)
        self.grad = self._method("grad", need_value=False, with_out=True)
        self.value_and_grad = self._method("value_and_grad", need_value=True, with_out=True)
        self.hess = self._hess_method("hess", need_value=False, need_grad=False)
        self.grad_hess = self._hess_method("grad_hess", need_value=False, need_grad=True)
        self.value_grad_hess = self._hess_method("value_grad_hess", need_value=True, need_grad=True)
        self._fast_value = self._fast_path(need_value=True, need_grad=False, with_out=False)

    # -- calls -------------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        """The loss: reduced to a NumPy scalar, or per element for ``reduction="none"``."""
        fast = self._fast_value
        if fast is not None and fast.kind is self._kind and not (self._array_params and self._arrays_in(kwargs)):
            result = fast(args, kwargs)
            if result is not NotImplemented:
                return result
        return self._run(args, kwargs, need_value=True, need_grad=False, with_out=False)[0][0]

    def _run(self, args: tuple, kwargs: dict[str, Any], *, need_value: bool, need_grad: bool, with_out: bool):
        """The general path of a call (every check, then the kind's ``run``): ``(result, stats)``."""
        inputs, params, weight, reduction, out, stats = self._bind(args, kwargs, with_out=with_out)
        spec, inputs, params = self._as_inputs(inputs, params)
        result = select_kind(self._kind, spec, inputs, weight, out).run(
            spec, inputs, params, weight, reduction,
            need_value=need_value, need_grad=need_grad, out=out, stats=bool(stats),
        )
        return result, stats

    def _method(self, name: str, *, need_value: bool, with_out: bool):
        single = len(self.spec.differentiable) == 1
        fast = self._fast_path(need_value=need_value, need_grad=True, with_out=with_out)

        def method(*args, **kwargs):
            if fast is not None and fast.kind is self._kind and not (self._array_params and self._arrays_in(kwargs)):
                result = fast(args, kwargs)
                if result is not NotImplemented:
                    return result
            result, stats = self._run(args, kwargs, need_value=need_value, need_grad=True, with_out=with_out)
            g = result[1][0] if single else tuple(result[1])
            head = (result[0], g) if need_value else (g,)
            if stats:
                return (*head, result[2])
            return head if need_value else g

        method.__name__ = name
        method.__qualname__ = f"{self.spec.name}.{name}"
        method.__doc__ = render_docstring(self.spec, self._params, name)
        method.__signature__ = self._signature(with_out=with_out)
        return method

    def _hess_method(self, name: str, *, need_value: bool, need_grad: bool):
        """``hess`` / ``grad_hess`` / ``value_grad_hess``: the Hessian diagonal, with the gradient and
        the value from the same pass. ``out=`` takes the Hessian buffer(s) for ``hess`` and a pair
        ``(gradient buffer(s), Hessian buffer(s))`` for the others (``None`` entries allocate)."""
        single = len(self.spec.differentiable) == 1
        loss = self.spec.name

        def method(*args, **kwargs):
            floor = _check_floor(loss, name, kwargs.pop("hess_floor", None))
            inputs, params, weight, reduction, out, stats = self._bind(args, kwargs, with_out=True)
            if stats is not False:
                raise TypeError(f"{loss}.{name}() does not take stats=")
            gout, hout = None, out
            if need_grad and out is not None:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise TypeError(f"{loss}.{name}(): out= must be a pair (gradient buffer, Hessian buffer)")
                gout, hout = out
            spec, inputs, params = self._as_inputs(inputs, params)
            kind = select_kind(self._kind, spec, inputs, weight, out)
            if not getattr(kind, "hessians", False):
                raise NotImplementedError(
                    f"{loss}.{name}(): Hessians are computed for the pointwise losses (CPU and CUDA) and for "
                    f"cross entropy (CPU); this call runs on the {kind.name} kind"
                    f"{'' if kind is self._kind else ' (CUDA)'}"
                )
            result = kind.run(spec, inputs, params, weight, reduction, need_value=need_value, need_grad=need_grad,
                              out=gout, need_hess=True, hess_out=hout, hess_floor=floor)
            h = result.hess[0] if single else tuple(result.hess)
            if not need_grad:
                return h
            g = result.grads[0] if single else tuple(result.grads)
            return (result.value, g, h) if need_value else (g, h)

        method.__name__ = name
        method.__qualname__ = f"{loss}.{name}"
        method.__doc__ = render_docstring(self.spec, self._params, name)
        method.__signature__ = self._signature(with_out=True, with_stats=False, hess_floor=True)
        return method

    def _fast_path(self, *, need_value: bool, need_grad: bool, with_out: bool):
        """The kind's shortcut for its common calls (see ``PointwiseKind.fast_path``), if it has one.

        The shortcut returns ``NotImplemented`` for any call it does not handle; it is used only
        while ``self._kind`` is the kind that made it (a wrapper installed later disables it).
        """
        make = getattr(self._kind, "fast_path", None)
        fast = None if make is None else make(
            self.spec, self._params, need_value=need_value, need_grad=need_grad, with_out=with_out
        )
        if fast is not None:
            fast.kind = self._kind
        return fast

    def _bind(self, args: tuple, kwargs: dict[str, Any], *, with_out: bool):
        name = self.spec.name
        names = self._input_names
        if len(args) > len(names):
            raise TypeError(
                f"{name}() takes {len(names)} positional arguments ({', '.join(names)}) but {len(args)} were given; "
                "hyper-parameters are keyword-only"
            )
        inputs = list(args)
        for inp in self.spec.inputs[len(args):]:
            v = kwargs.pop(inp.name, _MISSING)
            if v is _MISSING:
                if not inp.optional:
                    raise TypeError(f"{name}() missing required argument {inp.name!r}")
                v = None
            inputs.append(v)
        weight = kwargs.pop("weight", None)
        reduction = check_reduction(name, kwargs.pop("reduction", "mean"))
        out = kwargs.pop("out", None) if with_out else None
        stats = kwargs.pop("stats", False) if with_out else False
        params = {}
        for p in self._params:
            v = kwargs.pop(p.name, p.default)
            params[p.name] = v if v is p.default else p.check(name, v)
        if kwargs:
            raise TypeError(f"{name}() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        if self.spec.check is not None:
            self.spec.check(params)
        return inputs, params, weight, reduction, out, stats

    def _arrays_in(self, kwargs: dict[str, Any]) -> bool:
        """Whether an array parameter is given as an array (the fast paths take scalars only)."""
        return any(n in kwargs and is_array(kwargs[n]) for n in self._array_params)

    def _as_inputs(self, inputs: list, params: dict[str, Any]) -> tuple[LossSpec, list, dict[str, Any]]:
        """``(spec, inputs, params)`` to run: array parameters given as arrays become inputs.

        An array parameter gives one value per element: it must broadcast to the shape of the
        inputs without enlarging it (a per-class ``pos_weight`` of shape ``(C,)`` against
        ``(N, C)`` targets, like PyTorch's).
        """
        names = tuple(n for n in self._array_params if is_array(params[n]))
        if not names:
            return self.spec, inputs, params
        spec = self._array_specs.get(names)
        if spec is None:
            spec = self._array_specs[names] = self.spec.array_variant(names)
        try:
            shape = np.broadcast_shapes(*(tuple(np.shape(x)) for x in inputs if x is not None))
        except ValueError:
            shape = None  # the kind reports inputs that do not broadcast, naming them
        if shape is not None:
            for n in names:
                own = tuple(np.shape(params[n]))
                try:
                    ok = np.broadcast_shapes(own, shape) == shape
                except ValueError:
                    ok = False
                if not ok:
                    raise ValueError(
                        f"{self.spec.name}: {n} of shape {own} does not broadcast to the loss shape {shape}"
                    )
        rest = {k: v for k, v in params.items() if k not in names}
        return spec, [*inputs, *(params[n] for n in names)], rest

    # -- introspection -------------------------------------------------------------------------

    def _signature(self, *, with_out: bool, with_stats: bool = True, hess_floor: bool = False) -> inspect.Signature:
        P = inspect.Parameter
        ps = [
            P(i.name, P.POSITIONAL_OR_KEYWORD, default=None if i.optional else P.empty)
            for i in self.spec.inputs
        ]
        ps += [P(p.name, P.KEYWORD_ONLY, default=p.default) for p in self._params]
        ps += [P("weight", P.KEYWORD_ONLY, default=None), P("reduction", P.KEYWORD_ONLY, default="mean")]
        if hess_floor:
            ps.append(P("hess_floor", P.KEYWORD_ONLY, default=None))
        if with_out:
            ps += [P("out", P.KEYWORD_ONLY, default=None)]
        if with_out and with_stats:
            ps += [P("stats", P.KEYWORD_ONLY, default=False)]
        return inspect.Signature(ps)

    def __repr__(self) -> str:
        return f"<fastloss loss {self.spec.name}{self.__signature__}>"

    def __reduce__(self):  # picklable by name, e.g. for Dask tasks and multiprocessing
        return (get, (self.spec.name,))


def _check_floor(loss: str, method: str, floor):
    """``hess_floor``: None or a real number (not NaN)."""
    if floor is None:
        return None
    if isinstance(floor, (bool, np.bool_)) or not isinstance(floor, (int, float, np.integer, np.floating)):
        raise TypeError(f"{loss}.{method}(): hess_floor must be a number or None, got {type(floor).__name__}")
    if floor != floor:
        raise ValueError(f"{loss}.{method}(): hess_floor must not be NaN")
    return float(floor)


def register(spec: LossSpec) -> Loss:
    """Build the public callable for ``spec`` and add it to the registry: declaring a spec here
    makes it public, tested, documented and benchmarked."""
    if spec.name in REGISTRY:
        raise ValueError(f"a loss named {spec.name!r} is already registered")
    loss = Loss(spec)
    REGISTRY[spec.name] = loss
    return loss


def family(kind: str, **shared: Any) -> Callable[..., Loss]:
    """The declaration function of a family of losses: what its losses share is said once.

    ``family("pointwise", inputs=(PRED, TARGET))`` returns ``declare(name, kernel, **fields)``, which
    registers ``LossSpec(name=name, kind="pointwise", kernel=kernel, inputs=(PRED, TARGET), **fields)``
    and returns the public :class:`Loss`. A field is either the family's or the loss's own: giving a
    shared one again is a ``TypeError``.
    """

    def declare(name: str, kernel: Callable, **fields: Any) -> Loss:
        return register(LossSpec(name=name, kind=kind, kernel=kernel, **shared, **fields))

    return declare
