"""Input checks shared by every kind. Everything here raises before any kernel runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._compile import njit

REDUCTIONS = ("mean", "sum", "none")


def as_array(loss: str, name: str, x) -> np.ndarray:
    """``np.asarray`` that rejects non-numeric data with a clear ``TypeError``."""
    if x is None:
        raise TypeError(f"{loss}: {name} is required, got None")
    # before any other probe: torch refuses numpy() and __cuda_array_interface__ on such a tensor
    if getattr(x, "requires_grad", False) is True and type(x).__module__.split(".")[0] == "torch":
        raise TypeError(
            f"{loss}: {name} is a PyTorch tensor that requires grad; use fastloss.torch.{loss} for autograd, "
            f"or pass {name}.detach() for the value alone"
        )
    if hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray):
        raise TypeError(
            f"{loss}: {name} is a CUDA array but another input is on the host; "
            "pass all inputs on the same device"
        )
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{loss}: {name} is a masked array; fastloss does not read masks. Pass the data with masked "
            "entries weighted out instead, e.g. weight=~np.ma.getmaskarray(a) and np.ma.getdata(a)"
        )
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{loss}: {name} must be a real numeric array, got dtype {arr.dtype}")
    return native_byte_order(arr)


def native_byte_order(arr: np.ndarray) -> np.ndarray:
    """``arr`` itself, or a copy in the machine's byte order when it is stored in the other one.

    Numba's kernels cannot read non-native data (a ``TypingError``); big-endian arrays come from
    files (``'>f8'`` in FITS, HDF5, network formats) and are valid input.
    """
    if arr.dtype.isnative:
        return arr
    return arr.astype(arr.dtype.newbyteorder("="))


_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_COMPUTE = {"f": _F32, "e": _F32}


def compute_dtype(arr: np.ndarray) -> np.dtype:
    """float32 / float64 natively, float16 via float32, integers and bools via float64."""
    return _COMPUTE.get(arr.dtype.char, _F64)


def check_reduction(loss: str, reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{loss}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def broadcast_shape(loss: str, names: Sequence[str], arrays: Sequence[np.ndarray]) -> tuple[int, ...]:
    first = arrays[0].shape
    if all(a.shape == first for a in arrays):
        return first
    try:
        return np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        shapes = ", ".join(f"{n}{a.shape}" for n, a in zip(names, arrays))
        raise ValueError(f"{loss}: shapes do not broadcast: {shapes}") from None


def check_weight_shape(loss: str, weight: np.ndarray, shape: tuple[int, ...]) -> None:
    try:
        ok = np.broadcast_shapes(weight.shape, shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{loss}: weight of shape {weight.shape} does not broadcast to the loss shape {shape}")


def overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays share memory (exactly, with a bounded search; undecided counts as yes)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=1_000_000))
    except np.exceptions.TooHardError:
        return True


def check_out(
    loss: str,
    name: str,
    out,
    shape: tuple[int, ...],
    dtype: np.dtype,
    forbidden: Sequence[tuple[str, np.ndarray]],
) -> np.ndarray:
    """Validate a user-supplied gradient buffer."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{loss}: {name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{loss}: {name} has shape {out.shape}, expected {tuple(shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{loss}: {name} has dtype {out.dtype}, expected {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{loss}: {name} is read-only")
    for other_name, other in forbidden:
        if overlaps(out, other):
            raise ValueError(f"{loss}: {name} shares memory with {other_name}; it may only alias its own input")
    return out


#: Elements scanned per block by :func:`_first_not_in` before it looks at whether one was invalid.
_SCAN_BLOCK = 4096


@njit(nogil=True, error_model="numpy")
def _first_not_in(flat, allowed):
    """Index of the first element of ``flat`` not in the tuple ``allowed``, or -1.

    Each block is first *counted* without a branch (``allowed`` is a tuple, so the comparisons
    unroll and LLVM vectorises the count: ~0.25 ns per element instead of ~7 for an early-exit
    search); only a block that holds an invalid element is searched for its first one.
    """
    n = flat.size
    for lo in range(0, n, _SCAN_BLOCK):
        hi = lo + _SCAN_BLOCK
        if hi > n:
            hi = n
        blk = flat[lo:hi]
        bad = 0
        for i in range(blk.size):
            v = blk[i]
            ok = False
            for a in allowed:
                ok |= v == a
            bad += not ok
        if bad:
            for i in range(blk.size):
                v = blk[i]
                ok = False
                for a in allowed:
                    ok |= v == a
                if not ok:
                    return lo + i
    return -1


def check_discrete(loss: str, name: str, arr: np.ndarray, allowed: Sequence[float]) -> None:
    """Raise ``ValueError`` naming the first element of ``arr`` not in ``allowed``."""
    if arr.size == 0:
        return
    flat = np.ascontiguousarray(native_byte_order(arr)).reshape(-1)
    if flat.dtype.kind == "b":
        flat = flat.view(np.uint8)
    elif flat.dtype == np.float16:  # Numba has no float16 on the CPU; float32 holds every value exactly
        flat = flat.astype(np.float32)
    i = _first_not_in(flat, tuple(float(a) for a in allowed))
    if i >= 0:
        index = np.unravel_index(i, arr.shape) if arr.ndim > 1 else (i,)
        allowed_s = ", ".join(f"{a:g}" for a in allowed)
        raise ValueError(
            f"{loss}: {name} must take values in {{{allowed_s}}}; "
            f"{name}[{', '.join(str(int(j)) for j in index)}] = {flat[i].item()!r}"
        )


@njit(nogil=True, error_model="numpy")
def _first_outside(flat, low, high, low_closed, high_closed):
    """Index of the first element of ``flat`` outside the interval, or -1; NaN is inside.

    Counted branch-free per block first (vectorised), as :func:`_first_not_in`.
    """
    n = flat.size
    for lo in range(0, n, _SCAN_BLOCK):
        hi = min(lo + _SCAN_BLOCK, n)
        bad = 0
        for i in range(lo, hi):
            v = flat[i]
            bad += (v < low) | (v > high) | ((v == low) & (not low_closed)) | ((v == high) & (not high_closed))
        if bad:
            for i in range(lo, hi):
                v = flat[i]
                if (v < low) | (v > high) | ((v == low) & (not low_closed)) | ((v == high) & (not high_closed)):
                    return i
    return -1


def outside(arr: np.ndarray, low: float, high: float, low_closed: bool, high_closed: bool) -> int:
    """Flat index of the first element of ``arr`` outside the interval (NaN counts as inside), or -1."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.dtype.kind == "b":
        flat = flat.view(np.uint8)
    elif flat.dtype.kind == "f" and flat.dtype.itemsize < 4:
        flat = flat.astype(np.float32)
    elif not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    if not flat.flags.writeable:  # one compilation for read-only and writable arrays
        flat = flat.copy() if flat.size <= _SCAN_BLOCK else flat
    return int(_first_outside(flat, float(low), float(high), bool(low_closed), bool(high_closed)))
