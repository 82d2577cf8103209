"""The pointwise kind on CUDA arrays: one fused value-and-gradient kernel per loss, from its declaration.

The loss's scalar ``kernel(*inputs, *params) -> (value, *grads)`` (``math`` only) is compiled
with ``cuda.jit(device=True)`` and called from a grid-stride kernel generated for the loss's
arity (:data:`_TEMPLATE`): each thread reads its elements, writes the gradients already scaled
for the reduction (``1/n``, ``w_i / sum(w)`` or ``w_i``) and sums ``w_i * loss_i`` in float64;
blocks reduce in shared memory into one partial each and a one-block kernel adds the partials in
order (:mod:`fastloss.device.kernels`), so the loss is deterministic and never synchronises with
the host. Kernels are memoised per (loss kernel, compute type, block size); Numba specialises
them per storage dtypes and loads them per device.

Value checks (:mod:`fastloss.device.checks`: the host's rules and messages, one wait per call and
only when something needs checking). Discrete inputs, declared target domains
(:func:`fastloss._call.checked_domains`), negative weights, and the lower bounds a declaration lists
in its ``lower_bounds`` option (``{input name: low}``, e.g. ``gaussian_nll``'s ``var >= 0``, which
the CPU checks on the host in its ``adapt_inputs`` hook: such host checks never see device values).
With ``config.CHECK_LABELS`` off nothing waits, and an element below its bound gets a NaN loss and
NaN gradients, never a silently clamped value.

``out=`` follows :func:`fastloss._call.check_outs`: it may be its own input (the kernel reads each
element before writing its gradient) or overlap it (then the kernel writes a private buffer that
is copied into ``out`` at the end), never another input, the weight or another ``out``.

Inputs are read in their storage dtype and converted in registers: float16 and float32 to
float32, everything else to float64. Inputs of the full shape that are C-contiguous are read in
place; a one-element input is read through a zero stride; other broadcast or strided inputs are
first gathered into a contiguous buffer (one extra pass).
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import cuda, float32, float64

from ..._call import (
    Result,
    check_domain,
    check_outs,
    check_weight,
    checked_domains,
    grad_dtype,
    mean_scale,
    warn_column_broadcast,
)
from ..._flags import NEED_GRAD, PER_ELEMENT, SCALE_BY_WSUM
from ..._spec import Discrete, LossSpec
from ..._validate import broadcast_shape, check_weight_shape, compute_dtype
from ...device import arrays as device
from ...device import kernels
from ...device.arrays import U, device_stats, reduced_value, ushape
from ...device.checks import Checks
from .. import base as _kinds

_F64 = np.dtype(np.float64)

_TEMPLATE = '''
def pointwise(n, {inputs}, w, bw, {grads}, {hess_args}loss_out, {params}scale, wsum, flags, partials):
    """Value and gradients of elements i < n in one pass; x_k[i * b_k] (b_k = 0 broadcasts one value)."""
    s = scale
    if flags & SCALE_BY_WSUM:  # weighted mean: the weight sum was reduced on the device
        ws = wsum[0]
        s = 1.0 / ws if ws != 0.0 else math.inf
    weighted = w.size > 0
    need_grad = (flags & NEED_GRAD) != 0
    per_element = (flags & PER_ELEMENT) != 0
    acc = 0.0
    i = grid_start()
    step = grid_step()
    while i < n:
        res = _loss_kernel({args}){outside}
        wi = float64(w[i * bw]) if weighted else 1.0
        v = {value}
        acc += v
        if need_grad:
            sw = s * wi
{scatter}
{hess}
        if per_element:
            loss_out[i] = v
        i += step
    total = block_sum(acc)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = total
'''


def kernel_source(n_inputs: int, n_grads: int, n_params: int, real: str, bounds=(), hess: bool = False) -> str:
    """The fused kernel's source for a loss of this arity, computing in ``real`` (``float32``/``float64``).

    ``bounds``: ``(k, low)`` pairs, input ``k``'s declared lower bound (``lower_bounds`` option): an
    element below it gets a NaN loss and NaN gradients (values are checked before the kernel runs
    unless ``config.CHECK_LABELS`` is off, see :func:`check_lower_bound`). ``hess``: the kernel also
    takes one Hessian buffer per differentiable input (after the gradients) and writes the declared
    ``_hess_kernel``'s second derivatives into them, scaled as the gradients.
    """
    if bounds:
        cond = " or ".join(f"float64(x{k}[i * b{k}]) < {float(low)!r}" for k, low in bounds)
        outside = f"\n        outside = {cond}  # below a declared lower bound: NaN, never a silent clamp"
        value = "math.nan if outside else float64(res[0]) * wi"
        grad = "math.nan if outside else res[{j}] * sw"
    else:
        outside, value, grad = "", "float64(res[0]) * wi", "res[{j}] * sw"
    args = ", ".join([f"{real}(x{k}[i * b{k}])" for k in range(n_inputs)] + [f"p{j}" for j in range(n_params)])
    hess_lines = ""
    if hess:
        entry = ["hres"] if n_grads == 1 else [f"hres[{j}]" for j in range(n_grads)]
        nan = "math.nan if outside else " if bounds else ""
        hess_lines = "\n".join([f"        hres = _hess_kernel({args})", "        sh = s * wi"]
                                + [f"        h{j}[i] = {nan}{e} * sh" for j, e in enumerate(entry)])
    return _TEMPLATE.format(
        inputs=", ".join(f"x{k}, b{k}" for k in range(n_inputs)),
        grads=", ".join(f"g{j}" for j in range(n_grads)),
        hess_args="".join(f"h{j}, " for j in range(n_grads)) if hess else "",
        hess=hess_lines,
        params="".join(f"p{j}, " for j in range(n_params)),
        args=args,
        scatter="\n".join(f"            g{j}[i] = " + grad.format(j=j + 1) for j in range(n_grads)),
        outside=outside,
        value=value,
    )


class _Layout:
    def __init__(self, spec: LossSpec) -> None:
        self.names = [i.name for i in spec.inputs]
        self.diff = [k for k, i in enumerate(spec.inputs) if i.differentiable]
        self.discrete = [(k, i.domain.values) for k, i in enumerate(spec.inputs) if isinstance(i.domain, Discrete)]
        self.adapt = spec.options.get("adapt_inputs")
        # declared lower bounds of input values ({name: low}): the CPU's host-side checks (e.g. in
        # an adapt_inputs hook) do not see device values, these are checked on the device
        bounds = spec.options.get("lower_bounds", {})
        self.bounds = tuple((self.names.index(nm), float(low)) for nm, low in bounds.items())
        #: declared domains of targets that every call checks (None: they depend on parameters)
        self.domains = checked_domains(spec, {}) if spec.domains is None else None


class CudaPointwise(_kinds.CudaKind):
    """The pointwise kind for CUDA arrays (same contract as :class:`fastloss.kinds.pointwise.host.PointwiseKind`)."""

    name = "pointwise"
    #: ``run`` computes the Hessian diagonal (``need_hess``) of losses that declare ``hessian``
    hessians = True

    def __init__(self) -> None:
        self._kernels: dict[tuple, object] = {}
        self._layout = _kinds.Layouts(_Layout)
        self._lock = threading.Lock()

    def kernel(self, spec: LossSpec, real: str, n_params: int, hess: bool = False):
        """The fused kernel of ``spec`` computing in ``real``, compiled lazily and memoised (``hess``:
        the variant that also writes the Hessian diagonal)."""
        tk = kernels.shared()
        key = (spec.kernel, real, n_params, tk.threads, self._layout(spec).bounds, spec.hessian if hess else None)
        kern = self._kernels.get(key)
        if kern is None:
            with self._lock:
                kern = self._kernels.get(key)
                if kern is None:
                    kern = self._kernels[key] = cuda.jit(self.python_kernel(spec, real, n_params, tk, hess))
        return kern

    def python_kernel(self, spec: LossSpec, real: str, n_params: int, tk, hess: bool = False):
        """The fused kernel of ``spec`` as a Python function over ``tk``'s globals (to jit, or for PTX)."""
        layout = self._layout(spec)
        source = kernel_source(len(layout.names), len(layout.diff), n_params, real, layout.bounds, hess)
        scalar = getattr(spec.kernel, "py_func", spec.kernel)
        extra = {
            "_loss_kernel": cuda.jit(device=True)(scalar),
            **({"_hess_kernel": cuda.jit(device=True)(getattr(spec.hessian, "py_func", spec.hessian))} if hess else {}),
            "float32": float32,
            "float64": float64,
            "NEED_GRAD": NEED_GRAD,
            "PER_ELEMENT": PER_ELEMENT,
            "SCALE_BY_WSUM": SCALE_BY_WSUM,
        }
        return tk.define(source, "pointwise", f"<fastloss cuda pointwise {spec.name} {real}>", extra=extra)

    def ptx(self, loss, dtype: np.dtype, cc: tuple[int, int], threads: int, labels=None) -> dict[str, str]:
        """PTX of the fused kernel of ``loss`` for inputs of ``dtype`` (see :mod:`fastloss.device.ptx`)."""
        from numba.cuda import types
        from numba.cuda.np.numpy_support import from_dtype

        spec = loss.spec
        layout = self._layout(spec)
        real = compute_dtype(np.empty(0, dtype))
        n_params = len(spec.kernel_params({p.name: p.default for p in spec.params}))
        tk = kernels.Toolkit(threads)

        def arr(dt):
            return types.Array(from_dtype(np.dtype(dt)), 1, "C")

        i64, u64, f64 = types.int64, types.uint64, types.float64
        grads = [arr(grad_dtype(np.empty(0, dtype))) for _ in layout.diff]
        out = {}
        for hess in (False, True) if spec.hessian is not None else (False,):
            sig = [u64]
            for _ in layout.names:
                sig += [arr(dtype), u64]
            sig += [arr(real), u64, *grads, *(grads if hess else ()), arr(dtype)]
            sig += [from_dtype(real)] * n_params + [f64, arr(np.float64), i64, arr(np.float64)]
            fn = self.python_kernel(spec, real.name, n_params, tk, hess)
            out["pointwise_hess" if hess else "pointwise"] = cuda.compile_ptx(fn, tuple(sig), cc=cc)[0]
        return out

    # -- a call ----------------------------------------------------------------------------

    def _run(self, pl, spec, inputs, params, weight, reduction, need_value, need_grad, out, stats,
             need_hess=False, hess_out=None, hess_floor=None):
        name = spec.name
        layout = self._layout(spec)
        if need_hess and spec.hessian is None:
            raise NotImplementedError(f"{name}: no second derivative is declared for this loss")
        originals = [pl.first] + [pl.view(n, x) for n, x in zip(layout.names[1:], inputs[1:])]
        views = _adapt(spec, layout.adapt, originals) if layout.adapt is not None else originals
        shape = tuple(broadcast_shape(name, layout.names, views))
        warn_column_broadcast(name, layout.names, originals, shape, stacklevel=6)
        real = compute_dtype(views[0])
        n = math.prod(shape)

        # -- shapes and buffers (host checks), then values (queued; one wait, when any) ----------
        wview = None
        if weight is not None:
            wview = pl.view("weight", weight)
            check_weight_shape(name, wview, shape)
        outs = [None] * len(layout.diff)
        if need_grad:
            outs = check_outs(name, layout.names, layout.diff, out, originals, wview,
                              check=device.out_checker(name, pl))
        houts = [None] * len(layout.diff)
        if need_hess:
            houts = check_outs(name, layout.names, layout.diff, hess_out, originals, wview,
                               check=device.out_checker(name, pl))
            for h in houts:
                if h is not None and any(g is not None and device.overlap(h[1], g[1]) for g in outs):
                    raise ValueError(f"{name}: out= gives the gradient and the Hessian overlapping buffers")
        checks = Checks(pl, name)
        for k, values in layout.discrete:
            checks.discrete(layout.names[k], views[k], values)
        for k, low in layout.bounds:
            check_lower_bound(checks, layout.names[k], originals[k], low)
        for k, dom in layout.domains if layout.domains is not None else checked_domains(spec, params):
            if isinstance(inputs[k], device._SCALARS):  # a number: checked here, nothing to wait for
                check_domain(name, layout.names[k], np.asarray(inputs[k]), dom)
            else:
                checks.domain(layout.names[k], originals[k], dom)
        if isinstance(weight, device._SCALARS):
            check_weight(name, weight)
        else:
            checks.weight(wview)
        checks.raise_first()

        xs = [operand(pl, v, shape) for v in views]
        if wview is not None:
            w, bw = operand(pl, wview, shape)
        else:
            w, bw = pl.scratch(0, real), 0
        flags = (NEED_GRAD if need_grad else 0) | (PER_ELEMENT if need_value and reduction == "none" else 0)
        scale = mean_scale(reduction, float(n))
        wsum = pl.scratch(1, _F64)
        if reduction == "mean" and wview is not None:
            sum_weights(pl, w, bw, n, wsum)  # the weighted mean's denominator stays on the device
            flags |= SCALE_BY_WSUM

        # gradient buffers: the caller's out= when the kernel can write it directly, else ours
        gbufs = []  # (native or None, flat view, written straight into out=) per differentiable input
        for j, k in enumerate(layout.diff):
            gdtype = grad_dtype(originals[k])
            o = outs[j]
            if (o is not None and tuple(o[1].shape) == shape and device.c_contiguous(o[1])
                    and views[k] is originals[k] and device.writes_through(o[1], originals[k])):
                gbufs.append((None, device.flat(o[1]), True))
            elif need_grad:
                native, view = pl.empty(shape, gdtype)
                gbufs.append((native, device.flat(view), False))
            else:
                gbufs.append((None, pl.scratch(0, gdtype), False))
        # Hessian buffers: always ours (copied into hess_out= at the end, as an overlapping gradient is)
        hbufs = []
        if need_hess:
            for k in layout.diff:
                native, view = pl.empty(shape, grad_dtype(originals[k]))
                hbufs.append((native, device.flat(view), False))
        out_dtype = views[0].dtype if views[0].dtype.kind == "f" else real
        loss_native = None
        if flags & PER_ELEMENT:
            loss_native, lview = pl.empty(shape, out_dtype)
            loss_out = device.flat(lview)
        else:
            loss_out = pl.scratch(0, out_dtype)

        blocks, threads = pl.grid(n)
        partials = pl.scratch(blocks, _F64)
        if n:
            kparams = [real.type(p) for p in spec.kernel_params(params)]
            kern = self.kernel(spec, real.name, len(kparams), need_hess)
            args = [U(n)]
            for x, b in xs:
                args += [x, U(b)]
            args += [w, U(bw), *(g for _, g, _ in gbufs), *(h for _, h, _ in hbufs), loss_out, *kparams, scale,
                     wsum, flags, partials]
            kern[blocks, threads, pl.stream](*args)

        value = (reduced_value(pl, reduction, loss_native, partials, n, out_dtype, scale, wsum, flags)
                 if need_value else None)
        res = result(pl, value, gbufs if need_grad else [], shape, [views[k] for k in layout.diff],
                     [originals[k] for k in layout.diff], outs, stats)
        if need_hess:
            if hess_floor is not None:
                if any(tuple(views[k].shape) != shape for k in layout.diff):
                    raise NotImplementedError(
                        f"{name}: hess_floor with a broadcast differentiable input is not supported for CUDA arrays"
                    )
                if n:
                    blocks, threads = pl.grid(n)
                    for _, h, _ in hbufs:  # before the copy into hess_out=: the same clip as the CPU's
                        pl.kernels().clip_below[blocks, threads, pl.stream](U(n), h, float(hess_floor))
            hess = tuple(finish_grad(pl, native, h, shape, views[k], originals[k], o)
                         for (native, h, _), k, o in zip(hbufs, layout.diff, houts))
            res = res._replace(hess=hess)
        return res


def _adapt(spec: LossSpec, adapt, views):
    """Apply a declaration's host-side ``adapt_inputs`` hook to device arrays.

    The hook sees stand-ins of the right shapes and dtypes (zeros) and may change shapes only by
    adding or dropping axes of extent 1, which the device arrays then follow (no copy). Checks of
    values it makes on the host do not apply to device arrays.
    """
    standins = [np.lib.stride_tricks.as_strided(np.zeros(1, v.dtype), shape=tuple(v.shape),
                                                strides=(0,) * v.ndim, writeable=False) for v in views]
    adapted = adapt(standins)
    out = []
    for v, a in zip(views, adapted):
        try:
            out.append(device.with_shape(v, a.shape))
        except ValueError:
            raise NotImplementedError(
                f"{spec.name}: its input adapter turns shape {tuple(v.shape)} into {a.shape}, "
                "which CUDA arrays do not support"
            ) from None
    return out


def operand(pl, v, shape) -> tuple:
    """``(flat device array, stride multiplier)`` that the kernels read ``v`` broadcast to ``shape`` from."""
    if v.size == 1:
        return device.flat(v) if device.c_contiguous(v) else _gathered(pl, v, tuple(v.shape)), 0
    if tuple(v.shape) == shape and device.c_contiguous(v):
        return device.flat(v), 1
    return _gathered(pl, v, shape), 1


#: The gather kernel's launcher (the rowreduce and similarity kinds import it from here).
_gathered = device.gathered


def check_lower_bound(checks: Checks, name: str, v, low: float) -> None:
    """Queue: no element of ``v`` below ``low`` (NaN passes, as on the CPU), with the message of
    the CPU's own ``adapt_inputs`` check."""
    what = "negative entries" if low == 0.0 else f"entries below {low:g}"

    def error(where: str, value) -> ValueError:
        return ValueError(f"{checks.loss}: {name} has {what}; {name}{where or '[0]'} = {value.item()!r}")

    checks.interval(name, v, low, math.inf, (True, True), error=error)


def sum_weights(pl, w, bw, n, wsum) -> None:
    """``wsum[0] = sum of the n weights`` on the device (float64, ordered)."""
    tk = pl.kernels()
    blocks, threads = pl.grid(n)
    partials = pl.scratch(blocks, _F64)
    tk.sum_values[blocks, threads, pl.stream](U(n), w, U(bw), partials)
    tk.finalize[1, threads, pl.stream](partials, wsum, 1.0, wsum, 0)


def grad_stats(pl, g, n):
    """Per-block gradient statistics rows of ``g`` (left on the device)."""
    blocks, threads = pl.grid(n)
    rows = pl.empty((blocks, 3), _F64)[1]
    if n:
        pl.kernels().grad_stats[blocks, threads, pl.stream](U(n), g, rows)
    else:
        rows = pl.empty((0, 3), _F64)[1]
    return rows


def result(pl, value, gbufs, shape, adapted, originals, outs, stats: bool) -> Result:
    """A call's :class:`~fastloss._call.Result`: ``value`` and the gradients from the buffers the kernels wrote.

    ``gbufs``: ``(native or None, flat view, written straight into out=)`` per differentiable input
    (empty without gradients); ``adapted``, ``originals`` and ``outs``: each input as the kernels
    read it and as given, and its ``out=`` (see :func:`finish_grad`). With ``stats``, the
    gradients' statistics too.
    """
    grads, rows = [], []
    for (native, g, direct), a, o, out in zip(gbufs, adapted, originals, outs):
        if stats:
            rows.append(grad_stats(pl, g, int(g.size)))
        # direct: the kernel wrote straight into out=
        grads.append(out[0] if direct else finish_grad(pl, native, g, shape, a, o, out))
    return Result(value, tuple(grads), device_stats(pl, rows) if stats else None)


def finish_grad(pl, native, g, shape, adapted, original, out):
    """The gradient of one input from its full-shape buffer ``g`` (``native`` owns it).

    Summed over the axes the input was broadcast along, shaped like the input, and copied into
    ``out`` (the caller's ``(object, view)``, then returned as given) when there is one.
    """
    target = tuple(adapted.shape)
    if target != shape:
        m = math.prod(target)
        padded = (1,) * (len(shape) - len(target)) + target
        into_out = out is not None and device.c_contiguous(out[1])
        if into_out:
            dest = device.flat(out[1]) if out[1].ndim else device.with_shape(out[1], (1,))
        else:
            native, dest = pl.empty((m,), grad_dtype(original))
        if m:
            blocks, threads = pl.grid(m)
            pl.kernels().sum_to[blocks, threads, pl.stream](U(m), g, dest, ushape(shape), ushape(padded))
        if into_out:
            return out[0]
        g = dest
    if out is not None:
        n = int(g.size)
        view = out[1] if out[1].ndim else device.with_shape(out[1], (1,))
        if n:
            blocks, threads = pl.grid(n)
            pl.kernels().scatter(view.ndim)[blocks, threads, pl.stream](U(n), g, view, ushape(view.shape))
        return out[0]
    return pl.reshape(native, g, tuple(original.shape))


POINTWISE = _kinds.register_cuda_kind(CudaPointwise())
