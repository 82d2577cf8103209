"""Choice and verification of Numba's threading layer.

Numba's layers differ in safety (see ``docs/performance.md``):

* ``tbb``: safe with concurrent Python threads and with ``fork``.
* ``omp`` (GNU OpenMP): thread safe, but a forked child that calls a parallel kernel hangs or dies.
* ``workqueue``: fork safe, but aborts the process when two threads enter parallel code at once.

fastloss prefers TBB (the ``tbb`` wheel is a dependency). pip's wheel puts ``libtbb.so.12`` in
``sys.prefix/lib``, which the dynamic loader does not search, so it is loaded here first with
``RTLD_GLOBAL``. When TBB cannot be loaded we fall back to ``workqueue`` and serialise parallel
calls with a lock: slower under contention, never a crash.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from contextlib import nullcontext
from pathlib import Path

import numba

_TBB_NAMES = ("libtbb.so.12", "libtbb.12.dylib", "tbb12.dll")
_lock = threading.Lock()
_state: dict[str, object] = {"layer": None}


def _candidate_dirs() -> list[Path]:
    dirs = [Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib", Path(sys.prefix) / "Library" / "bin"]
    for var in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):
        dirs += [Path(p) for p in os.environ.get(var, "").split(os.pathsep) if p]
    return dirs


def _load_tbb() -> bool:
    for d in _candidate_dirs():
        for name in _TBB_NAMES:
            path = d / name
            if path.exists():
                try:
                    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                    return True
                except OSError:
                    continue
    for name in _TBB_NAMES:  # maybe on the default search path
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            return True
        except OSError:
            continue
    return False


def configure() -> None:
    """Select the threading layer before Numba's parallel backend starts.

    A layer named explicitly with ``NUMBA_THREADING_LAYER`` is respected.
    """
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    if _load_tbb():
        numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]
        numba.config.THREADING_LAYER = "tbb"
    else:
        # Never let Numba pick OpenMP implicitly: it breaks forked children.
        numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]
        numba.config.THREADING_LAYER = "workqueue"


def threading_layer() -> str:
    """The threading layer in use, or the one that will be used by the first parallel call."""
    layer = _state["layer"]
    if layer is None:
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            return str(numba.config.THREADING_LAYER)
        _state["layer"] = layer
    return str(layer)


def guard():
    """Context manager around a parallel kernel call: a lock for ``workqueue``, nothing otherwise."""
    layer = _state["layer"]
    if layer is None:
        # Before the first launch the layer is unknown; be safe until it is.
        try:
            layer = _state["layer"] = numba.threading_layer()
        except ValueError:
            return _lock
    return _lock if layer == "workqueue" else nullcontext()
