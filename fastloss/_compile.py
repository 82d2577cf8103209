"""Compilation helpers: one driver template, specialised per loss, cached on disk.

A driver template is an ordinary Python function whose body calls a module-level placeholder
(``_loss_kernel``). :func:`specialise` builds a new function object from the template's code with
that placeholder bound to the loss's compiled scalar kernel, and gives it a qualified name that
encodes the loss and a hash of the kernel's source. Numba's on-disk cache is keyed by the source
file of the template and that qualified name, so each loss gets its own cache entry, a changed
kernel gets a fresh one, and a second process loads machine code instead of compiling.
(Closures over a jitted function cannot be cached: the pickled dispatcher carries a per-process id.)

When no cache directory is writable Numba refuses ``cache=True`` at decoration time; we then
compile in memory and warn once, so ``import fastloss`` never fails for that reason.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import linecache
import threading
import types
import warnings
from collections.abc import Callable, Iterable

import numba
import numpy as np

from . import _config

_cache_warned = False


def _cache_failed(func: Callable, exc: Exception) -> None:
    global _cache_warned
    if not _cache_warned:
        _cache_warned = True
        warnings.warn(
            f"fastloss: compiled kernels cannot be cached on disk ({exc}); compiling in memory. "
            "Set NUMBA_CACHE_DIR to a writable directory to keep compiled kernels between runs.",
            RuntimeWarning,
            stacklevel=3,
        )


def njit(func: Callable | None = None, *, cache: bool = True, **options):
    """``numba.njit`` with on-disk caching that degrades to in-memory compilation."""

    def wrap(f: Callable):
        if cache:
            try:
                return numba.njit(cache=True, **options)(f)
            except RuntimeError as exc:  # "cannot cache function ...: no locator available"
                _cache_failed(f, exc)
        return numba.njit(**options)(f)

    return wrap if func is None else wrap(func)


def source_hash(*funcs: Callable) -> str:
    """A short stable hash of the source of ``funcs`` (falls back to bytecode) and of what they use.

    Numba freezes the globals and closure variables a function reads into its machine code, and
    compiles the functions it calls into it. They are therefore part of the identity of a cached
    driver: the hash covers the source of every function reached that way and the value of every
    constant, so editing a helper or a module-level constant of a (custom) loss recompiles it.
    """
    h = hashlib.sha1()
    seen: set[int] = set()
    for f in funcs:
        _hash_function(h, f, seen)
    return h.hexdigest()[:12]


def _python_function(f):
    """The Python function behind a dispatcher (``py_func``) or an intrinsic (``_defn``), else None."""
    for attr in ("py_func", "_defn"):
        inner = getattr(f, attr, None)
        if isinstance(inner, types.FunctionType):
            return inner
    return None


@functools.cache
def _own_text(code: types.CodeType) -> bytes:
    """The source of a function's code (falls back to bytecode), read once per process.

    Memoised by code object (every driver of every loss hashes the same kernels, helpers and
    templates), and read with ``linecache`` + ``inspect.getblock``, which is what
    ``inspect.getsource`` does after a search of ``sys.modules`` for the function's module that
    cost ~1-2 ms a function.
    """
    lines = linecache.getlines(code.co_filename)
    if lines and 0 < code.co_firstlineno <= len(lines):
        try:
            return "".join(inspect.getblock(lines[code.co_firstlineno - 1:])).encode()
        except (IndexError, SyntaxError, ValueError):  # tokenizer errors: use the bytecode
            pass
    consts = repr([c for c in code.co_consts if not isinstance(c, types.CodeType)]).encode()
    return code.co_code + consts


def _hash_function(h, f: Callable, seen: set[int]) -> None:
    f = _python_function(f) or f
    if id(f) in seen:
        return
    seen.add(id(f))
    h.update(_own_text(f.__code__))
    for name, value in _referenced(f):
        h.update(name.encode())
        if _python_function(value) is not None or (
            # plain functions only when they are the loss's own helpers (e.g. register_jitable);
            # NumPy's Python source is irrelevant to what Numba compiles for it
            isinstance(value, types.FunctionType) and value.__module__ == f.__module__
        ):
            _hash_function(h, value, seen)
        elif callable(value) and hasattr(value, "__qualname__"):
            h.update(f"{getattr(value, '__module__', '')}.{value.__qualname__}".encode())
        elif isinstance(value, types.ModuleType):
            h.update(value.__name__.encode())
        elif isinstance(value, (bool, int, float, complex, str, bytes, tuple, type(None))):
            h.update(repr(value).encode())
        elif isinstance(value, np.ndarray):
            h.update(f"{value.dtype}{value.shape}".encode())
            h.update(np.ascontiguousarray(value).tobytes())
        else:
            h.update(type(value).__qualname__.encode())


def _referenced(f: Callable):
    """``(name, value)`` of the globals and closure variables that ``f`` (and its nested code) reads."""
    names: set[str] = set()
    stack = [f.__code__]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    glb = getattr(f, "__globals__", {})
    for name in sorted(names):
        if name in glb:
            yield name, glb[name]
    for name, cell in zip(f.__code__.co_freevars, f.__closure__ or ()):
        try:
            yield name, cell.cell_contents
        except ValueError:  # an empty cell
            continue


def specialise(
    template: Callable,
    name: str,
    bindings: dict[str, object],
    *,
    parallel: bool,
    hashed: Iterable[Callable] = (),
    cache: bool = True,
):
    """Compile ``template`` with its placeholder globals replaced by ``bindings``.

    Parameters
    ----------
    template
        Driver function; its globals name the placeholders (for example ``_loss_kernel``).
    name
        Loss name, used in the qualified name and therefore in the cache file name.
    bindings
        Placeholder name -> compiled function.
    parallel
        Whether to compile a ``prange`` parallel driver or its serial twin.
    hashed
        Python functions whose source identifies this specialisation (the loss kernels).
    """
    # scalar_kernel's source too: its compile options (forceinline, flags) shape the machine code;
    # and the template's with the helpers it reaches: Numba's own cache check looks at the
    # template's file only, so an edited helper module would otherwise load stale machine code
    tag = source_hash(*hashed, scalar_kernel, template) if hashed else "0"
    suffix = "par" if parallel else "ser"
    qualname = f"{template.__name__}__{name}__{suffix}_{tag}"
    glb = dict(template.__globals__)
    glb.update(bindings)
    func = types.FunctionType(template.__code__, glb, qualname, template.__defaults__)
    func.__qualname__ = qualname
    func.__module__ = template.__module__
    return njit(func, cache=cache, **_config.jit_options(parallel))


def inline_helper(fastmath) -> Callable:
    """The ``njit`` decorator for a helper that compiled kernels call and always inline.

    No C wrapper and no CPython wrapper (each is code compiled on every cold start for nothing),
    except that the CUDA simulator runs device code as Python and calls such helpers from it: under
    ``NUMBA_ENABLE_CUDASIM=1`` the CPython wrapper stays.
    """
    return njit(cache=False, error_model="numpy", fastmath=fastmath, forceinline=True, no_cfunc_wrapper=True,
                no_cpython_wrapper=not numba.core.config.ENABLE_CUDASIM)


def scalar_kernel(func: Callable):
    """Compile a loss's scalar ``loss_grad`` function for inlining into drivers."""
    if isinstance(func, numba.core.registry.CPUDispatcher):
        return func
    # forceinline (LLVM ``alwaysinline``): a kernel that calls exp/log grows past LLVM's inlining
    # threshold, and a call left in the driver loop keeps it scalar (measured: 6x slower)
    # no Python or C wrapper: the kernel is only ever called (inlined) from drivers, and each
    # wrapper is code that would be generated and compiled to machine code for nothing
    return njit(func, cache=False, error_model="numpy", fastmath=set(_config.FASTMATH), forceinline=True,
                no_cpython_wrapper=True, no_cfunc_wrapper=True)


_readonly_lock = threading.Lock()


def readonly_dispatcher(dispatcher):
    """``dispatcher`` made to compile only through :func:`compile_readonly` (returns it).

    A dispatcher that may compile on a call compiles a new specialisation for a writable array
    even when it holds one for the read-only array type; one that may not looks for a safe
    conversion instead (writable -> read-only is one), so writable and read-only calls share
    the read-only compilation.
    """
    dispatcher._can_compile = False  # disable_compile() refuses a dispatcher with no signature yet
    return dispatcher


def compile_readonly(dispatcher, args: tuple, readonly: Iterable[int]) -> bool:
    """Compile a :func:`readonly_dispatcher` for the types of ``args``, the arrays at ``readonly`` read-only.

    Returns False when it already holds that signature (a call that still found no match failed
    for another reason). Loads from the disk cache like any compilation.
    """
    positions = set(readonly)
    sig = tuple(numba.typeof(a).copy(readonly=True) if k in positions else numba.typeof(a)
                for k, a in enumerate(args))
    with _readonly_lock:
        if sig in dispatcher.overloads:
            return False
        dispatcher._can_compile = True  # as Numba's own Dispatcher.recompile does
        try:
            dispatcher.compile(sig)
        finally:
            dispatcher._can_compile = False
    return True
