"""The rowwise kind on CUDA arrays: the declaration's own row kernel, compiled for the device.

A rowwise declaration's ``kernel(x, y, t, w, g, scale, loss, *params)`` (the contract of
:mod:`fastloss.kinds.softmax.cpu`) does per-row scalar math and leaves the passes over the
class axis to the row primitives ``R`` (:mod:`fastloss.kinds.softmax.primitives`). The CUDA driver compiles
that same function with ``cuda.jit(device=True)`` after rebinding two names in its globals (and in
those of the helpers it calls from its module), as the CPU driver rebinds ``R`` for its split mode:

``R``
    Block-cooperative primitives (below): the threads of a block share one row, each takes every
    ``THREADS``-th class, reductions run through shared memory in a fixed tree (float64, no
    atomics, no warp shuffles), and primitives that write synchronise the block before and after,
    so that a kernel may write its gradient over its logits (``out=logits``) as on the CPU.
    Exponentials run in float32 for float16/float32 logits, in float64 otherwise.
``np``
    A device stand-in whose ``empty``/``zeros``/``ones`` return one-element local arrays: the driver
    hands the kernel one row at a time (a ``(1, classes)`` block), so its per-row vectors have one
    entry. Allocations sized otherwise are refused when the kernel is compiled (see :func:`analyse`).

A kernel that stores into arrays itself rather than through the primitives (found by reading its
source: any subscript store other than into its own per-row vectors or ``loss``) cannot share a
row between threads; it runs in *thread mode*, one thread per row with serial primitives: correct
(also in place), but the class axis is then not spread over threads.

Rows are handed out grid-stride (block ``b`` takes rows ``b, b + blocks, ...``); thread 0 of a
block adds its rows' losses in row order into one partial per block, and the shared one-block
:func:`~fastloss.device.kernels.finalize` adds the partials: deterministic, no host synchronisation.
Class labels are checked on the device first (:func:`~fastloss.device.kernels.check_labels`, which
also sums the mean's denominator); the driver never indexes with an invalid label.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
import textwrap
import threading
import types

import numpy as np
from numba import cuda, float32, float64, int64

from ..._call import Result, check_outs, checked_domains, grad_dtype, mean_scale
from ..._flags import NEED_AUX, NEED_GRAD, PER_ROW, SCALE_BY_DENOM
from ..._spec import LossSpec
from ..._validate import compute_dtype
from ...device import arrays as device
from ...device import config, kernels
from ...device.arrays import U, device_stats
from ...device.checks import Checks
from .. import base as _kinds
from . import primitives as rowops
from .host import RowwiseKind

_F64 = np.dtype(np.float64)

THREADS = 0  # placeholders of the primitive templates, bound per build
REAL = float64


# -- device primitives, generated from the row primitives' table ----------------------------------
#
# ``rowops.TABLE`` holds each primitive's element (what it does with class ``j`` of a row) and how the
# elements combine; the two device forms are built from it here:
#
# ``_b_<name>`` (block mode)
#     The threads of a block share the row: thread ``t`` takes classes ``t, t + THREADS, ...``,
#     reductions end in :func:`~fastloss.device.kernels.block_sum` / ``block_max`` (fixed tree order),
#     and a primitive that writes synchronises the block before (its output may be the logits, which
#     the other threads may still be reading) and, for maps, after.
# ``_s_<name>`` (thread mode)
#     One thread runs the whole row.
#
# The driver hands the kernel a one-row block, so an element's ``x[j]`` becomes ``x[0, j]`` and a
# per-row vector's entry is ``m[0]``. ``f64``, ``exp``, ``log`` and ``tanh`` of the element notation
# are ``float64`` and :mod:`math`'s here; ``REAL`` is the build's exponential type (float32 for
# float16/float32 logits).


def device_source(name: str, entry, mode: str) -> str:
    """The source of the device form ``_b_<name>`` (``mode="block"``) or ``_s_<name>`` of a
    ``rowops.TABLE`` entry."""
    block = mode == "block"
    roles = rowops.roles(entry)
    element = entry.element
    params = []
    pre = []
    for a, role in roles:
        if role in ("rows", "rows?", "out", "out?"):
            element = re.sub(rf"\b{a}\[j\]", f"{a}[0, j]", element)
        if role.endswith("?"):
            pre.append(f"has_{a} = {a}.size > 0")
        if role == "each":
            params.append(f"{a}_")
            pre.append(f"{a} = {a}_[0]")
        else:
            params.append(a)
    first = roles[0][0]
    span = f"cuda.threadIdx.x, {first}.shape[1], THREADS" if block else f"{first}.shape[1]"
    loop = f"for j in range({span}):\n" + textwrap.indent(element, "    ")
    if entry.combine == "map":
        body = [f"if {first}.size > 0:", textwrap.indent("\n".join([*pre, loop]), "    ")]
        if block:  # the output may be the logits: every thread has read what it needs first
            body = ["cuda.syncthreads()", *body, "cuda.syncthreads()"]
    else:
        outs = [a for a, role in roles if role == "out?"]
        sync = [f"if has_{a}:  # {a} may be x: every thread has read what it needs (gather) first\n"
                "    cuda.syncthreads()" for a in outs] if block else []
        init, step, fold = (("0.0", "s += v", "block_sum") if entry.combine == "sum"
                            else ("-math.inf", "s = max(s, v)", "block_max"))
        body = [*pre, *sync, f"s = {init}", loop + f"\n    {step}", "out = cuda.local.array(1, float64)",
                f"out[0] = {fold}(s)" if block else "out[0] = s", "return out"]
    prefix = "_b_" if block else "_s_"
    return f"def {prefix}{name}({', '.join(params)}):\n" + textwrap.indent("\n".join(body), "    ") + "\n"


#: What the element notation's names are on the device.
ELEMENT_NAMES = {"f64": float64, "exp": math.exp, "log": math.log, "tanh": math.tanh}


def _b_gather(x, y):
    out = cuda.local.array(1, float64)
    out[0] = float64(x[0, y[0]])
    return out


def _b_shifted(v, m):
    out = cuda.local.array(1, float64)
    out[0] = v[0] - m[0]
    return out


def _b_add_at(g, y, b):
    cuda.syncthreads()
    if g.size > 0 and cuda.threadIdx.x == 0:
        g[0, y[0]] += b[0]
    cuda.syncthreads()


def _s_add_at(g, y, b):
    if g.size > 0:
        g[0, y[0]] += b[0]


def _device_forms() -> dict[str, dict[str, object]]:
    """The device primitives of each mode, by the name of the :mod:`rowops` primitive they replace
    (Python functions; each build binds them to its own globals)."""
    namespace = {**globals(), **ELEMENT_NAMES}
    forms: dict[str, dict[str, object]] = {
        "block": {"gather": _b_gather, "shifted": _b_shifted, "add_at": _b_add_at},
        "thread": {"gather": _b_gather, "shifted": _b_shifted, "add_at": _s_add_at},
    }
    for name, entry in rowops.TABLE.items():
        for mode in forms:
            forms[mode][name] = rowops.define(device_source(name, entry, mode), namespace, __file__)
    return forms


#: The device primitives of each mode, by the name of the :mod:`rowops` primitive they replace.
PRIMITIVES = _device_forms()


# -- the numpy stand-in ------------------------------------------------------------------------------


def _empty(n):
    return cuda.local.array(1, float64)


def _zeros(n):
    a = cuda.local.array(1, float64)
    a[0] = 0.0
    return a


def _ones(n):
    a = cuda.local.array(1, float64)
    a[0] = 1.0
    return a


_ALLOCATORS = ("empty", "zeros", "ones")


def _numpy_standin(name: str):
    mod = types.ModuleType(f"fastloss.kinds.softmax.cuda.{name}")
    for fn in (_empty, _zeros, _ones):
        setattr(mod, fn.__name__[1:], cuda.jit(device=True, inline="always")(fn))
    mod.float64, mod.float32, mod.int64 = float64, float32, int64
    mod.inf, mod.nan, mod.pi, mod.e = math.inf, math.nan, math.pi, math.e
    return mod


# -- reading a kernel's source ---------------------------------------------------------------------


class KernelSourceError(NotImplementedError):
    """A rowwise kernel does something the CUDA driver cannot run."""


def analyse(func, loss_name: str) -> str:
    """``"block"`` or ``"thread"``: the mode a rowwise kernel (and its helpers) can run in on CUDA.

    Raises :class:`KernelSourceError` when the source is unavailable or allocates arrays that are
    not per-row vectors (``np.empty(rows)``; the device stand-in has room for one row).
    """
    writes = _Analysis(loss_name).visit_function(func, top=True)
    return "thread" if writes else "block"


class _Analysis:
    def __init__(self, loss_name: str) -> None:
        self.loss_name = loss_name
        self.seen: set[int] = set()

    def visit_function(self, func, top: bool, owned: frozenset = frozenset()) -> bool:
        """Whether ``func`` (or a local helper) stores into arrays that are not its own row vectors.

        ``owned`` names parameters of a helper that receive its caller's own vectors (the loss
        vector of the contract, or per-row vectors the caller allocated): stores into them are
        stores into per-thread memory too.
        """
        key = (id(func), owned)
        if key in self.seen:
            return False
        self.seen.add(key)
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
        except (OSError, TypeError, SyntaxError) as exc:
            raise KernelSourceError(
                f"{self.loss_name}: the CUDA driver reads the source of rowwise kernels and cannot get "
                f"that of {func.__qualname__} ({exc})"
            ) from None
        fdef = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
        params = [a.arg for a in fdef.args.args]
        allowed = set(owned)
        if top and len(params) > 6:
            allowed.add(params[6])  # the loss vector of the contract
        numpy_names = {k for k, v in func.__globals__.items() if v is np}
        rows = set()
        writes = False
        for node in ast.walk(fdef):
            if isinstance(node, ast.Assign):
                self._bind_rows(node, rows)
        for node in ast.walk(fdef):
            if isinstance(node, ast.Call) and _is_alloc(node, numpy_names):
                if not node.args or not _is_row_count(node.args[0], rows):
                    raise KernelSourceError(
                        f"{self.loss_name}: {func.__qualname__} allocates {ast.unparse(node)}; on CUDA a rowwise "
                        "kernel may only allocate per-row vectors (np.empty(rows), rows = x.shape[0])"
                    )
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                    and _is_alloc(node.value, numpy_names):
                allowed.update(t.id for t in node.targets if isinstance(t, ast.Name))
        for node in ast.walk(fdef):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AugAssign) else [])
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Subscript) and isinstance(sub.ctx, ast.Store):
                        base = _base_name(sub)
                        if base not in allowed:
                            writes = True
        called = set()
        for node in ast.walk(fdef):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                helper = func.__globals__.get(node.func.id)
                if _is_local_helper(helper, func):
                    hparams = list(inspect.signature(helper).parameters)
                    passed = frozenset(hparams[i] for i, a in enumerate(node.args[:len(hparams)])
                                       if isinstance(a, ast.Name) and a.id in allowed)
                    called.add(id(helper))
                    writes |= self.visit_function(helper, top=False, owned=passed)
        for name in sorted(n.id for n in ast.walk(fdef) if isinstance(n, ast.Name)):
            helper = func.__globals__.get(name)
            if _is_local_helper(helper, func) and id(helper) not in called:  # passed around, not called here
                writes |= self.visit_function(helper, top=False)
        return writes

    @staticmethod
    def _bind_rows(node: ast.Assign, rows: set) -> None:
        for t in node.targets:
            if isinstance(t, ast.Name) and _is_row_count(node.value, rows):
                rows.add(t.id)
            if isinstance(t, ast.Tuple) and t.elts and isinstance(t.elts[0], ast.Name) \
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "shape":
                rows.add(t.elts[0].id)


def _is_alloc(call: ast.Call, numpy_names: set) -> bool:
    f = call.func
    return isinstance(f, ast.Attribute) and f.attr in (*_ALLOCATORS, "empty_like", "zeros_like", "full") \
        and isinstance(f.value, ast.Name) and f.value.id in numpy_names


def _is_row_count(node, rows: set) -> bool:
    if isinstance(node, ast.Name):
        return node.id in rows
    return (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "shape" and isinstance(node.slice, ast.Constant) and node.slice.value == 0)


def _base_name(node) -> str | None:
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_local_helper(value, func) -> bool:
    return isinstance(value, types.FunctionType) and value.__module__ == func.__module__ and value is not func


# -- building the device code --------------------------------------------------------------------------


_TEMPLATE_HEAD = '''
def rowwise(x, y, t, w, g, loss_rows, {params}scale, denom, ignore_index, flags, partials):
    # with NEED_AUX, loss_rows and partials are twice as long: the auxiliary parts follow
    """Row losses (and gradients, scaled for the reduction) of rows r < n; see the module docstring."""
    n = x.shape[0]
    nc = x.shape[1]
    s = scale
    if flags & SCALE_BY_DENOM:  # mean over labels: the denominator was reduced on the device
        d = denom[0]
        s = 1.0 / d if d != 0.0 else math.inf
    has_index = y.size > 0
    has_probs = t.shape[0] > 0
    need_grad = (flags & NEED_GRAD) != 0
    per_row = (flags & PER_ROW) != 0
    need_aux = (flags & NEED_AUX) != 0
    tid = cuda.threadIdx.x
    yk = cuda.local.array(1, int64)
    lb2 = cuda.local.array(2, float64)
    lb = lb2 if need_aux else lb2[0:1]  # the kernel writes an auxiliary part only into a longer vector
    acc = 0.0
    acc_aux = 0.0
'''

_TEMPLATE_ROW = '''
        state = 0  # 1: ignored (zero loss and gradient), 2: invalid label (NaN; only with CHECK_LABELS off)
        yk[0] = 0
        if has_index:
            yr = int64(y[r])
            if yr == ignore_index:
                state = 1
            elif yr < 0 or yr >= nc:
                state = 2
            else:
                yk[0] = yr
        yb = yk if has_index else yk[0:0]  # the contract's empty y for probability targets
        tb = t[r:r + 1] if has_probs else t[0:0]
        gb = g[r:r + 1] if need_grad else g[0:0]
        _row_kernel(x[r:r + 1], yb, tb, w, gb, s, lb, {args})
        if state != 0:
            v = 0.0 if state == 1 else math.nan
            {sync}
            if need_grad:
                for j in range({first}, nc, {stride}):
                    g[r, j] = v
            lb[0] = v
            if need_aux:
                lb[1] = v
'''

#: a finished row's loss (and auxiliary part) added to the thread's sums and, per row, stored
_ROW_TOTALS = '''acc += lb[0]
if per_row:
    loss_rows[r] = lb[0]
if need_aux:
    acc_aux += lb[1]
    if per_row:
        loss_rows[n + r] = lb[1]'''

_BLOCK = _TEMPLATE_HEAD + '''    for r in range(cuda.blockIdx.x, n, cuda.gridDim.x):
{row}
        if tid == 0:
{totals}
    if tid == 0:
        partials[cuda.blockIdx.x] = acc
        if need_aux:
            partials[cuda.gridDim.x + cuda.blockIdx.x] = acc_aux
'''

_THREAD = _TEMPLATE_HEAD + '''    r = int64(cuda.blockIdx.x) * THREADS + tid
    step = int64(cuda.gridDim.x) * THREADS
    while r < n:
{row}
{totals}
        r += step
    total = block_sum(acc)
    if tid == 0:
        partials[cuda.blockIdx.x] = total
    if need_aux:  # the same for every thread of the launch: all of them take part in the block sum
        total = block_sum(acc_aux)
        if tid == 0:
            partials[cuda.gridDim.x + cuda.blockIdx.x] = total
'''


def _softmax_pass(prims):
    """``rowops.softmax_pass`` from the mode's own primitives: maximum, target logit, exponentials.

    (On the CPU that primitive mostly saves the pass that finds the maximum, a memory-bound one; a
    block reads its row from device memory in either case, so the device keeps the exact maximum.)
    """
    row_max, gather, shifted, exp_sum = prims.row_max, prims.gather, prims.shifted, prims.exp_sum

    def softmax_pass(x, y, e):
        m = row_max(x)
        xy = shifted(gather(x, y), m)  # before exp_sum writes e, which may be x
        return xy, m, exp_sum(x, m, e)

    return cuda.jit(device=True, inline="always")(softmax_pass)


def driver_source(mode: str, n_params: int) -> str:
    """The driver kernel's source for a kernel with ``n_params`` hyper-parameters."""
    names = [f"p{j}" for j in range(n_params)]
    block = mode == "block"
    row = _TEMPLATE_ROW.format(args=", ".join(names), sync="cuda.syncthreads()" if block else "pass",
                               first="tid" if block else "0", stride="THREADS" if block else "1")
    totals = textwrap.indent(_ROW_TOTALS, " " * (12 if block else 8))
    return (_BLOCK if block else _THREAD).format(params="".join(f"{p}, " for p in names), row=row, totals=totals)


class _Build:
    """The device functions of one (mode, compute type, block size): primitives, stand-ins, kernels."""

    def __init__(self, mode: str, real: str, threads: int, fresh: bool = False) -> None:
        self.mode = mode
        self.tk = kernels.Toolkit(threads) if fresh else kernels.toolkit(threads)
        glb = {**self.tk.globals, **ELEMENT_NAMES, "REAL": float32 if real == "float32" else float64,
               "THREADS": threads}
        self.globals = glb
        prims = types.ModuleType(f"fastloss.kinds.softmax.cuda.{mode}")
        for name, fn in PRIMITIVES[mode].items():
            bound = types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__)
            setattr(prims, name, cuda.jit(device=True, inline="always")(bound))
        prims.softmax_pass = _softmax_pass(prims)
        self.primitives = prims
        self.numpy = _numpy_standin(mode)
        self._by_id = {id(pair[0]): name for name, pair in rowops.PRIMITIVES.items()}
        self._compiled: dict[int, object] = {}

    def device_kernel(self, func):
        """``func`` (a rowwise kernel or one of its helpers) compiled for the device, names rebound."""
        key = id(func)
        if key not in self._compiled:
            glb = dict(func.__globals__)
            for name in func.__code__.co_names:
                v = glb.get(name)
                if v is rowops:
                    glb[name] = self.primitives
                elif v is np:
                    glb[name] = self.numpy
                elif id(v) in self._by_id:
                    glb[name] = getattr(self.primitives, self._by_id[id(v)])
                elif _is_local_helper(v, func):
                    glb[name] = self.device_kernel(v)
            fn = types.FunctionType(func.__code__, glb, func.__name__, func.__defaults__, func.__closure__)
            fn.__qualname__ = func.__qualname__
            self._compiled[key] = cuda.jit(device=True, inline="always")(fn)
        return self._compiled[key]

    def driver(self, spec: LossSpec, n_params: int):
        """The driver kernel of ``spec`` as a Python function (to jit, or to compile to PTX)."""
        extra = {
            "_row_kernel": self.device_kernel(getattr(spec.kernel, "py_func", spec.kernel)),
            "SCALE_BY_DENOM": SCALE_BY_DENOM, "NEED_GRAD": NEED_GRAD, "PER_ROW": PER_ROW, "NEED_AUX": NEED_AUX,
            "int64": int64, "float64": float64, "math": math,
        }
        source = driver_source(self.mode, n_params)
        glb = {**self.globals, **extra}
        ns: dict = {}
        exec(compile(source, f"<fastloss cuda rowwise {spec.name} {self.mode}>", "exec"), glb, ns)  # generated
        fn = ns["rowwise"]
        return types.FunctionType(fn.__code__, glb, "rowwise", fn.__defaults__)


def launch_bounds(threads: int) -> tuple[int, int]:
    """``(threads, blocks per SM)`` promised to the compiler, so that it keeps registers for
    ``config.ROW_SM_THREADS`` resident threads per SM: a row kernel inlines every branch of its
    loss (label smoothing, probability targets, ...) and would otherwise take up to ~190 registers
    per thread, one block per SM."""
    return threads, max(1, config.ROW_SM_THREADS // threads)


def row_threads(nc: int) -> int:
    """Threads per row in block mode: a warp for short rows, up to ``config.ROW_THREADS``."""
    want = 32
    while want < config.ROW_THREADS and want * 8 < nc:
        want *= 2
    return min(want, config.ROW_THREADS)


class CudaRowwise(_kinds.CudaKind):
    """The rowwise kind for CUDA arrays (same contract as :class:`fastloss.kinds.softmax.host.RowwiseKind`)."""

    name = "rowwise"

    def __init__(self) -> None:
        self._modes: dict[int, str] = {}
        self._builds: dict[tuple, _Build] = {}
        self._kernels: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def mode(self, spec: LossSpec) -> str:
        func = getattr(spec.kernel, "py_func", spec.kernel)
        mode = self._modes.get(id(func))
        if mode is None:
            mode = self._modes[id(func)] = analyse(func, spec.name)
        return mode

    def _build(self, mode: str, real: str, threads: int) -> _Build:
        key = (mode, real, threads)
        if key not in self._builds:
            self._builds[key] = _Build(mode, real, threads)
        return self._builds[key]

    def kernel(self, spec: LossSpec, real: str, threads: int, n_params: int):
        mode = self.mode(spec)
        key = (spec.kernel, mode, real, threads, n_params)
        kern = self._kernels.get(key)
        if kern is None:
            with self._lock:
                kern = self._kernels.get(key)
                if kern is None:
                    fn = self._build(mode, real, threads).driver(spec, n_params)
                    opts = {} if device.simulated() else {"launch_bounds": launch_bounds(threads)}
                    kern = self._kernels[key] = cuda.jit(fn, **opts)
        return kern

    def ptx(self, loss, dtype: np.dtype, cc: tuple[int, int], threads: int, labels=np.int64) -> dict[str, str]:
        """PTX of the driver of ``loss`` for logits of ``dtype`` and class labels of dtype ``labels``
        (see :mod:`fastloss.device.ptx`)."""
        from numba.cuda import types as nbt
        from numba.cuda.np.numpy_support import from_dtype

        spec = loss.spec
        mode = self.mode(spec)
        real = compute_dtype(np.empty(0, dtype))
        n_params = len(spec.kernel_params({p.name: p.default for p in spec.params}))
        fn = _Build(mode, real.name, threads, fresh=True).driver(spec, n_params)

        def arr(dt, nd=1):
            return nbt.Array(from_dtype(np.dtype(dt)), nd, "C")

        sig = (arr(dtype, 2), arr(labels), arr(dtype, 2), arr(np.float64), arr(dtype, 2), arr(dtype),
               *([nbt.float64] * n_params), nbt.float64, arr(np.float64), nbt.int64, nbt.int64, arr(np.float64))
        return {f"rowwise_{mode}": cuda.compile_ptx(fn, sig, cc=cc, launch_bounds=launch_bounds(threads))[0]}

    # -- a call ----------------------------------------------------------------------------------

    def _run(self, pl, spec, inputs, params, weight, reduction, need_value, need_grad, out, stats):
        name = spec.name
        xname, tname = spec.inputs[0].name, spec.inputs[1].name
        tk = pl.kernels()
        logits = pl.first
        target = pl.view(tname, inputs[1], scalars=False)
        if logits.ndim == 0:
            raise ValueError(f"{name}: {xname} needs a class axis; got a 0-d array")
        axis = params["axis"]
        if not -logits.ndim <= axis < logits.ndim:
            raise ValueError(f"{name}: axis {axis} is out of range for {xname} of shape {tuple(logits.shape)}")
        axis %= logits.ndim
        shape = tuple(logits.shape)
        nc = shape[axis]
        if nc == 0:
            raise ValueError(f"{name}: the class axis (axis {axis}) of {xname} of shape {shape} is empty")
        lead = shape[:axis] + shape[axis + 1:]
        n = math.prod(lead)
        form = RowwiseKind._target_form(spec, logits, target, lead, axis)
        real = compute_dtype(logits)
        gdtype = grad_dtype(logits)
        out_dtype = gdtype

        # -- class weights, out=, then the values (labels, probabilities, weights: one wait) -----
        wview = None
        if weight is not None:
            if not spec.options.get("class_weight", True):
                raise TypeError(f"{name}: takes no class weights (weight=)")
            wview = pl.view("weight", weight, scalars=False)
            if tuple(wview.shape) != (nc,):
                raise ValueError(f"{name}: weight must hold one weight per class, shape ({nc},); "
                                 f"got {tuple(wview.shape)}")
        outs = None
        if need_grad and out is not None:
            outs = check_outs(name, (xname, tname), (0,), out, (logits, target), wview,
                              check=device.out_checker(name, pl))[0]
        checks = Checks(pl, name)
        if wview is not None:
            w = _contiguous(pl, wview, np.float64)
        else:
            w = pl.scratch(0, np.float64)
        use_ignore = "ignore_index" in params
        ignore_index = int(params["ignore_index"]) if use_ignore else -1
        flags = (NEED_GRAD if need_grad else 0) | (PER_ROW if need_value and reduction == "none" else 0)
        aux = need_value and bool(params.get(spec.options.get("aux", ""), False))
        parts = 2 if aux else 1
        if aux:
            flags |= NEED_AUX
        scale = 1.0
        denom = pl.scratch(1, np.float64)
        if form == "index":
            y = device.reshaped(_contiguous(pl, target, None), (n,))
            weighted_mean = wview is not None and spec.options.get("mean", "weight") == "weight"
            self._check_labels(checks, tname, target, y, nc, ignore_index, use_ignore, w, weighted_mean, denom)
            if reduction == "mean":
                flags |= SCALE_BY_DENOM  # the count of non-ignored labels stays on the device
        else:
            for k, dom in checked_domains(spec, params):  # probabilities in their declared domain
                checks.domain(spec.inputs[k].name, (logits, target)[k], dom)
            y = pl.scratch(0, np.int64)
            scale = mean_scale(reduction, float(n))
        checks.weight(wview)
        checks.raise_first()

        # -- rows: (n, classes) C-contiguous views, copying only when the layout requires it -----
        xm = device.moveaxis(logits, axis, -1)
        private = None  # our own contiguous copy of the logits (the gradient may overwrite it)
        if device.c_contiguous(xm):
            x2 = device.reshaped(xm, (n, nc))
        else:
            private = pl.empty(xm.shape, logits.dtype)
            _copy_into(pl, xm, private[1])
            x2 = device.reshaped(private[1], (n, nc))
        if form == "probs":
            t2 = device.reshaped(_contiguous(pl, device.moveaxis(target, axis, -1), None), (n, nc))
        else:
            t2 = _empty_rows(pl, logits.dtype, nc)
        g_native = None
        if need_grad:
            om = None
            if outs is not None:
                om = device.moveaxis(outs[1], axis, -1)
                if device.c_contiguous(om):
                    g2 = device.reshaped(om, (n, nc))  # straight into out= (in place when it is the logits)
                    if not device.writes_through(g2, x2):  # a shifted view of the logits: read a copy
                        copy = pl.empty(xm.shape, logits.dtype)
                        _copy_into(pl, xm, copy[1])
                        x2 = device.reshaped(copy[1], (n, nc))
                else:
                    om = None
            if om is None:
                if private is not None and private[1].dtype == gdtype:
                    g_native, g2 = private[0], x2  # overwrite our own copy
                else:
                    g_native, gv = pl.empty(xm.shape, gdtype)
                    g2 = device.reshaped(gv, (n, nc))
        else:
            g2 = _empty_rows(pl, gdtype, nc)

        loss_native = None
        if flags & PER_ROW:
            loss_native, lview = pl.empty((parts, *lead) if aux else lead, out_dtype)
            loss_rows = device.flat(lview)
        else:
            loss_rows = pl.scratch(0, out_dtype)

        mode = self.mode(spec)
        threads = row_threads(nc) if mode == "block" else config.THREADS
        if mode == "block":
            blocks = max(1, min(n, config.MAX_BLOCKS))
        else:
            blocks = max(1, min(-(-n // threads), config.MAX_BLOCKS))
        partials = pl.scratch(parts * blocks, np.float64)
        if n:
            kparams = [float(p) for p in spec.kernel_params(params)]
            kern = self.kernel(spec, real.name, threads, len(kparams))
            kern[blocks, threads, pl.stream](x2, y, t2, w, g2, loss_rows, *kparams, scale, denom,
                                             ignore_index, flags, partials)

        value = None
        if need_value:
            values = []
            for part in range(parts):  # the loss, then its auxiliary part
                if reduction == "none":
                    values.append(loss_native[part:part + 1].reshape(lead) if aux else loss_native)
                    continue
                native, vview = pl.empty((1,), out_dtype)
                if n:
                    fin_flags = flags & SCALE_BY_DENOM if reduction == "mean" else 0
                    fin_scale = scale if reduction == "mean" else 1.0
                    tk.finalize[1, tk.threads, pl.stream](partials[part * blocks:(part + 1) * blocks], vview,
                                                          fin_scale, denom, fin_flags)
                else:
                    tk.fill[1, 1, pl.stream](vview, math.nan if reduction == "mean" else 0.0)
                values.append(pl.scalar(native, vview))
            value = tuple(values) if aux else values[0]

        grads = ()
        rows = []
        if need_grad:
            if stats:
                flat_g = device.reshaped(g2, (n * nc,))
                rows.append(_stat_rows(pl, flat_g))
            if outs is not None and g_native is None:
                grad = outs[0]  # written in place (or straight into out=)
            elif outs is not None:
                _copy_into(pl, device.reshaped(g2, xm.shape), device.moveaxis(outs[1], axis, -1))
                grad = outs[0]
            else:
                grad = pl.moveaxis(g_native, device.reshaped(g2, xm.shape), -1, axis)
            grads = (grad,)
        return Result(value, grads, device_stats(pl, rows) if stats else None)

    @staticmethod
    def _check_labels(checks, tname, target, y, nc, ignore_index, use_ignore, w, weighted_mean, denom):
        """Queue the label check (read back with the call's other checks) and reduce the mean's
        denominator into ``denom[0]`` (on the device, checked or not)."""
        pl = checks.pl
        tk = pl.kernels()
        n = int(y.size)
        blocks, threads = pl.grid(n)
        partials = pl.scratch(blocks, np.float64)

        def report(i: int) -> None:
            value = int(pl.to_host(y[i:i + 1])[0])
            where = ", ".join(map(str, np.unravel_index(i, tuple(target.shape)))) if target.ndim else ""
            also = f" or ignore_index={ignore_index}" if use_ignore else ""
            raise ValueError(f"{checks.loss}: {tname}[{where}] = {value} is not a class index in [0, {nc}){also}")

        if checks.on and n:
            bad = checks.slot(report)
        else:  # unchecked: the row kernel still never indexes with an invalid label (NaN rows)
            bad = pl.scratch(1, np.int64)
            tk.fill[1, 1, pl.stream](bad, n)
        tk.check_labels[blocks, threads, pl.stream](U(n), y, nc, ignore_index, use_ignore, w, weighted_mean,
                                                    bad, partials)
        tk.finalize[1, threads, pl.stream](partials, denom, 1.0, denom, 0)


def _empty_rows(pl, dtype, nc: int):
    """An empty ``(0, classes)`` device array (the contract's "not given")."""
    return device.reshaped(pl.scratch(0, dtype), (0, nc))


def _copy_into(pl, src, dst) -> None:
    """``dst[...] = src`` for device arrays of one shape (any strides), by a gather kernel."""
    n = int(src.size)
    if n == 0:
        return
    flat_dst = dst if dst.ndim == 1 and device.c_contiguous(dst) else None
    blocks, threads = pl.grid(n)
    shape = tuple(src.shape)
    if flat_dst is not None or device.c_contiguous(dst):
        target = flat_dst if flat_dst is not None else device.flat(dst)
        keep = (U(1),) * len(shape)
        pl.kernels().gather(src.ndim, len(shape))[blocks, threads, pl.stream](U(n), src, target, device.ushape(shape),
                                                                              keep)
    elif device.c_contiguous(src):
        pl.kernels().scatter(dst.ndim)[blocks, threads, pl.stream](U(n), device.flat(src), dst, device.ushape(shape))
    else:
        tmp = pl.scratch(n, dst.dtype)
        _copy_into(pl, src, device.reshaped(tmp, shape))
        _copy_into(pl, device.reshaped(tmp, shape), dst)


def _contiguous(pl, v, dtype):
    """``v`` as a C-contiguous device array of ``dtype`` (itself when it already is)."""
    dtype = v.dtype if dtype is None else np.dtype(dtype)
    if device.c_contiguous(v) and v.dtype == dtype:
        return v
    buf = device.reshaped(pl.scratch(int(v.size), dtype), tuple(v.shape))
    _copy_into(pl, v, buf)
    return buf


def _stat_rows(pl, g):
    n = int(g.size)
    blocks, threads = pl.grid(n)
    rows = pl.empty((blocks, 3), _F64)[1]
    if n:
        pl.kernels().grad_stats[blocks, threads, pl.stream](U(n), g, rows)
    return rows


ROWWISE = _kinds.register_cuda_kind(CudaRowwise())
