"""The implementations the benchmark compares: fastloss and its peers.

Each :class:`Provider` says whether it can run here (its package is installed, the device
exists), whether it implements a given loss, and turns a :class:`~fastloss.bench.cases.Case`
into a zero-argument callable that computes the ``mean`` loss and its gradient(s), plus a
``sync`` for asynchronous devices. Converting inputs to the provider's array type happens in
``prepare`` and is not timed. Every peer is imported lazily: a missing package only skips it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cases import Case
from .naive import NAIVE


@dataclass
class Prepared:
    """A provider's callable for one case.

    ``run()`` computes value and gradients; ``sync()`` waits for the device; ``to_host(result)``
    returns ``(float value, tuple of NumPy gradients)`` for the correctness check.
    """

    run: Callable[[], Any]
    sync: Callable[[], None]
    to_host: Callable[[Any], tuple[float, tuple[np.ndarray, ...]]]


def _noop() -> None:
    return None


#: Threads a peer with its own thread pool may use (``None``: as many as Numba would use).
THREADS: int | None = None


def threads() -> int:
    """The thread count given to peers: the same as fastloss's (read without starting Numba's pool)."""
    import numba

    return THREADS or numba.config.NUMBA_NUM_THREADS


def _diff_indices(case: Case) -> list[int]:
    return [k for k, inp in enumerate(case.spec.inputs) if inp.differentiable]


def dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Provider:
    """Base class: override :meth:`supports` and :meth:`prepare`."""

    #: Name shown in tables, JSON rows and plots.
    name: str = ""
    #: Importable module the provider needs (``None``: nothing beyond fastloss).
    module: str | None = None
    #: Distribution whose version is recorded.
    dist: str | None = None
    devices: tuple[str, ...] = ("cpu",)
    #: Whether this is the naive baseline of the speedup column on its device.
    baseline: bool = False
    #: Whether this is a fastloss variant (the targets are evaluated on these).
    ours: bool = False
    #: Whether the peer runs its own thread pool (OpenMP, XLA, ...). Such peers are measured in a
    #: child process of their own: in a process where Numba's TBB workers exist, a 2-thread OpenMP
    #: loop can stall for a scheduler time slice at its barriers (measured: scikit-learn's 6 µs
    #: ``loss_gradient`` took 68 ms at the 90th percentile), which would be unfair to the peer.
    isolate: bool = False

    def unavailable(self, device: str) -> str | None:
        """``None`` when the provider can run on ``device``, else the reason it is skipped."""
        if device not in self.devices:
            return f"{self.name} does not run on {device}"
        if self.module is not None and not _installed(self.module):
            return f"{self.name} is not installed (pip install {self.dist or self.module})"
        return None

    def version(self) -> str | None:
        return dist_version(self.dist) if self.dist else None

    def supports(self, case: Case) -> bool:
        raise NotImplementedError

    def prepare(self, case: Case, device: str) -> Prepared:
        raise NotImplementedError


# -- fastloss ------------------------------------------------------------------------------------


def cuda_array_library() -> str:
    """Which library makes CUDA arrays here: ``"cupy"``, ``"torch"`` (a CUDA build) or ``"numba"``."""
    if _installed("cupy"):
        import cupy as cp

        try:
            if cp.cuda.runtime.getDeviceCount() > 0:
                return "cupy"
        except cp.cuda.runtime.CUDARuntimeError:
            pass
    if _installed("torch"):
        import torch

        if torch.cuda.is_available():
            return "torch"
    return "numba"


def _device_arrays(arrays: tuple[np.ndarray, ...]) -> tuple[tuple[Any, ...], Callable[[], None]]:
    """Host arrays -> CUDA arrays (CuPy, else PyTorch, else Numba) and the matching sync."""
    lib = cuda_array_library()
    if lib == "cupy":
        import cupy as cp

        return tuple(cp.asarray(a) for a in arrays), cp.cuda.Device().synchronize
    if lib == "torch":
        import torch

        return tuple(torch.from_numpy(a).cuda() for a in arrays), torch.cuda.synchronize
    from numba import cuda

    return tuple(cuda.to_device(a) for a in arrays), cuda.synchronize


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "get"):  # CuPy
        return x.get()
    if hasattr(x, "copy_to_host"):  # Numba device array
        return x.copy_to_host()
    if hasattr(x, "detach"):  # PyTorch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _host_result(result: Any) -> tuple[float, tuple[np.ndarray, ...]]:
    value, grads = result
    grads = grads if isinstance(grads, tuple) else (grads,)
    return float(_to_numpy(value)), tuple(_to_numpy(g) for g in grads)


class Fastloss(Provider):
    """``fastloss.<loss>.value_and_grad`` as a user calls it: the gradient is a new array."""

    name = "fastloss"
    dist = "fastloss"
    devices = ("cpu", "cuda")
    ours = True

    def unavailable(self, device: str) -> str | None:
        if device == "cuda":
            import fastloss

            available = getattr(fastloss, "cuda_available", None)
            if available is None:
                return "this fastloss has no CUDA backend"
            if not available():
                return "fastloss.cuda_available() is False (no GPU, or the cuda extra is missing)"
        return super().unavailable(device)

    def supports(self, case: Case) -> bool:
        return True

    def _outs(self, case: Case, device: str):
        return None

    def prepare(self, case: Case, device: str) -> Prepared:
        from .. import get

        fn = get(case.loss).value_and_grad
        params = case.params
        if device == "cuda":
            inputs, sync = _device_arrays(case.inputs)
        else:
            inputs, sync = case.inputs, _noop
        out = self._outs(case, device)
        if out is None:
            return Prepared(lambda: fn(*inputs, **params), sync, _host_result)
        return Prepared(lambda: fn(*inputs, out=out, **params), sync, _host_result)


class FastlossOut(Fastloss):
    """``value_and_grad(..., out=buffer)``: the gradient goes into a preallocated buffer.

    The usual training-loop pattern; it also shows how much of a call is the allocation (and
    first-touch page faults) of a large gradient array.
    """

    name = "fastloss-out"

    def _outs(self, case: Case, device: str):
        bufs = tuple(np.empty(shape, dtype) for shape, dtype in case.grad_shapes)
        if device == "cuda":
            bufs, _ = _device_arrays(bufs)
        return bufs[0] if len(bufs) == 1 else bufs


# -- naive NumPy / CuPy --------------------------------------------------------------------------


class NaiveNumpy(Provider):
    """The plain NumPy implementation of :mod:`fastloss.bench.naive` (the speedup baseline)."""

    name = "numpy"
    dist = "numpy"
    baseline = True

    def supports(self, case: Case) -> bool:
        return case.loss in NAIVE

    def prepare(self, case: Case, device: str) -> Prepared:
        fn, inputs, params = NAIVE[case.loss], case.inputs, case.params
        return Prepared(lambda: fn(*inputs, **params), _noop, _host_result)


class NaiveCupy(Provider):
    """The same naive code with ``xp=cupy``: the GPU baseline."""

    name = "cupy"
    module = dist = "cupy"
    devices = ("cuda",)
    baseline = True

    def unavailable(self, device: str) -> str | None:
        reason = super().unavailable(device)
        if reason is None:
            import cupy as cp

            try:
                cp.cuda.runtime.getDeviceCount()
            except cp.cuda.runtime.CUDARuntimeError:
                return "cupy finds no CUDA device"
        return reason

    def supports(self, case: Case) -> bool:
        return case.loss in NAIVE

    def prepare(self, case: Case, device: str) -> Prepared:
        import cupy as cp

        fn, params = NAIVE[case.loss], case.params
        inputs = tuple(cp.asarray(a) for a in case.inputs)
        return Prepared(lambda: fn(*inputs, xp=cp, **params), cp.cuda.Device().synchronize, _host_result)


# -- PyTorch -------------------------------------------------------------------------------------


def _torch_forwards() -> dict[str, Callable]:
    """``forward(x..., **params) -> scalar tensor`` per loss: ``torch.nn.functional`` where it
    has the loss, otherwise the short tensor expression a PyTorch user would write."""
    import torch
    import torch.nn.functional as F

    def signs(t, dtype):
        return torch.where(t > 0, 1.0, -1.0).to(dtype)

    def robust(x, y, alpha=1.0, scale=1.0):
        z = ((x - y) / scale) ** 2
        if alpha == 2.0:
            return (0.5 * z).mean()
        if alpha == 0.0:
            return torch.log1p(0.5 * z).mean()
        if alpha == -math.inf:
            return (-torch.expm1(-0.5 * z)).mean()
        b = abs(alpha - 2.0)
        return (b / alpha * torch.expm1(0.5 * alpha * torch.log1p(z / b))).mean()

    def sigmoid_focal(x, y, alpha=0.25, gamma=2.0):  # torchvision.ops.sigmoid_focal_loss
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        loss = ce * (1 - p_t) ** gamma
        if alpha >= 0:
            loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
        return loss.mean()

    def softmax_focal(x, t, gamma=2.0):
        logp = F.log_softmax(x, -1)
        return F.nll_loss((1 - logp.exp()) ** gamma * logp, t)

    def bce(x, y, pos_weight=1.0):
        pw = None if pos_weight == 1.0 else torch.tensor(pos_weight, dtype=x.dtype, device=x.device)
        return F.binary_cross_entropy_with_logits(x, y, pos_weight=pw)

    def overlap(x, t, from_logits, finish):  # Dice / Jaccard / Tversky per sample over its other axes
        p = torch.sigmoid(x) if from_logits else x
        dims = tuple(range(1, x.ndim))
        return finish((p * t).sum(dims), p.sum(dims), t.sum(dims)).mean()

    def dice(x, t, smooth=1.0, from_logits=True):
        return overlap(x, t, from_logits, lambda i, p, q: 1 - (2 * i + smooth) / (p + q + smooth))

    def jaccard(x, t, smooth=1.0, from_logits=True):
        return overlap(x, t, from_logits, lambda i, p, q: 1 - (i + smooth) / (p + q - i + smooth))

    def tversky(x, t, alpha=0.5, beta=0.5, smooth=1.0, from_logits=True):
        return overlap(x, t, from_logits, lambda i, p, q: 1 - (i + smooth) / (
            i + alpha * (p - i) + beta * (q - i) + smooth))

    def info_nce(z1, z2, temperature=0.1, symmetric=True):
        logits = F.normalize(z1) @ F.normalize(z2).T / temperature
        labels = torch.arange(z1.shape[0], device=z1.device)
        if not symmetric:
            return F.cross_entropy(logits, labels)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def cross_entropy(x, t, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None):
        if softcap:
            x = softcap * torch.tanh(x / softcap)
        loss = F.cross_entropy(x, t, ignore_index=ignore_index, label_smoothing=label_smoothing)
        if z_loss:
            kept = t != ignore_index
            loss = loss + z_loss * torch.logsumexp(x, -1)[kept].square().mean()
        return loss

    forwards = {
        "mse": lambda x, y: F.mse_loss(x, y),
        "mae": lambda x, y: F.l1_loss(x, y),
        "huber": lambda x, y, delta=1.0: F.huber_loss(x, y, delta=delta),
        "smooth_l1": lambda x, y, beta=1.0: F.smooth_l1_loss(x, y, beta=beta),
        "log_cosh": lambda x, y: (torch.nn.functional.softplus(-2.0 * (x - y)) + (x - y) - math.log(2.0)).mean(),
        "quantile": lambda x, y, q=0.5: torch.maximum(q * (y - x), (q - 1.0) * (y - x)).mean(),
        "robust": robust,
        "binary_cross_entropy": bce,
        "sigmoid_focal": sigmoid_focal,
        "hinge": lambda x, t, margin=1.0: F.relu(margin - signs(t, x.dtype) * x).mean(),
        "squared_hinge": lambda x, t, margin=1.0: F.relu(margin - signs(t, x.dtype) * x).square().mean(),
        "poisson_nll": lambda x, y, log_input=True, full=False, eps=1e-8: F.poisson_nll_loss(
            x, y, log_input=log_input, full=full, eps=eps),
        "gaussian_nll": lambda x, y, v, full=False, eps=1e-6: F.gaussian_nll_loss(x, y, v, full=full, eps=eps),
        "l1": lambda x: x.abs().mean(),
        "l2": lambda x: (0.5 * x.square()).mean(),
        "cross_entropy": cross_entropy,
        # the compositions named in the declarations' ``equivalents``
        "softmax_focal": softmax_focal,
        "multiclass_hinge": lambda x, t, margin=1.0, p=1: F.multi_margin_loss(x, t, p=p, margin=margin),
        "kl_divergence": lambda x, t: F.kl_div(F.log_softmax(x, -1), t, reduction="batchmean"),
        "generalized_cross_entropy": lambda x, t, q=0.7: (
            (1 - F.softmax(x, -1).gather(-1, t[..., None]) ** q) / q).mean(),
        "poly1_cross_entropy": lambda x, t, epsilon=1.0: (
            F.cross_entropy(x, t, reduction="none") + epsilon * (1 - F.softmax(x, -1).gather(-1, t[..., None])[..., 0])
        ).mean(),
        "margin_ranking": lambda x1, x2, y, margin=0.0: F.margin_ranking_loss(x1, x2, y, margin=margin),
        "bpr": lambda pos, neg: -F.logsigmoid(pos - neg).mean(),
        "contrastive": lambda x1, x2, y, margin=1.0: (0.5 * (
            y * torch.linalg.vector_norm(x1 - x2, dim=-1) ** 2
            + (1 - y) * F.relu(margin - torch.linalg.vector_norm(x1 - x2, dim=-1)) ** 2)).mean(),
        "triplet_margin": lambda anchor, pos, neg, margin=1.0, p=2.0, eps=1e-6, swap=False: F.triplet_margin_loss(
            anchor, pos, neg, margin=margin, p=p, eps=eps, swap=swap),
        "cosine_embedding": lambda x1, x2, y, margin=0.0: F.cosine_embedding_loss(x1, x2, y, margin=margin),
        "info_nce": info_nce,
        "dice": dice,
        "jaccard": jaccard,
        "tversky": tversky,
    }
    try:
        from torchvision.ops import generalized_box_iou_loss
    except ImportError:
        pass
    else:
        forwards["giou"] = lambda p, t, eps=1e-7: generalized_box_iou_loss(p, t, reduction="mean", eps=eps)
    return forwards


class Torch(Provider):
    """PyTorch forward + backward (``torch.autograd.grad``) on the CPU or a CUDA device."""

    name = "torch"
    isolate = True
    module = dist = "torch"
    devices = ("cpu", "cuda")
    _forwards: dict[str, Callable] | None = None

    def unavailable(self, device: str) -> str | None:
        reason = super().unavailable(device)
        if reason is None and device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "torch sees no CUDA device"
        return reason

    def forwards(self) -> dict[str, Callable]:
        if self._forwards is None:
            Torch._forwards = _torch_forwards()
        return self._forwards

    def supports(self, case: Case) -> bool:
        return case.loss in self.forwards()

    def prepare(self, case: Case, device: str) -> Prepared:
        import torch

        torch.set_num_threads(threads())  # same threads as fastloss
        forward, params = self.forwards()[case.loss], case.params
        diff = _diff_indices(case)
        tensors = []
        for k, a in enumerate(case.inputs):
            t = torch.from_numpy(a)
            if device == "cuda":
                t = t.cuda()
            tensors.append(t.requires_grad_(True) if k in diff else t)
        wrt = tuple(tensors[k] for k in diff)

        def run():
            loss = forward(*tensors, **params)
            return loss, torch.autograd.grad(loss, wrt)

        sync = torch.cuda.synchronize if device == "cuda" else _noop
        return Prepared(run, sync, _host_result)


# -- JAX -----------------------------------------------------------------------------------------


class Jax(Provider):
    """``jax.jit(jax.value_and_grad(loss))`` of the naive expression written with ``jax.numpy``.

    XLA fuses the whole expression and drops the naive code's explicit gradient (unused), so
    this measures JAX's own autodiff of the same formula.
    """

    name = "jax"
    isolate = True
    module = dist = "jax"
    devices = ("cpu", "cuda")

    def unavailable(self, device: str) -> str | None:
        reason = super().unavailable(device)
        if reason is None and device == "cuda":
            import jax

            if not any(d.platform == "gpu" for d in jax.devices()):
                return "jax has no GPU backend here"
        return reason

    def supports(self, case: Case) -> bool:
        return case.loss in NAIVE

    def prepare(self, case: Case, device: str) -> Prepared:
        import jax

        if case.dtype == np.float64:
            jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        naive, params = NAIVE[case.loss], case.params

        def value(*xs):
            return naive(*xs, xp=jnp, **params)[0]

        fn = jax.jit(jax.value_and_grad(value, argnums=tuple(_diff_indices(case))))
        dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
        inputs = tuple(jax.device_put(a, dev) for a in case.inputs)

        def run():
            return jax.block_until_ready(fn(*inputs))

        return Prepared(run, _noop, _host_result)


# -- scikit-learn --------------------------------------------------------------------------------


def _sklearn_loss(case: Case):
    """``(sklearn loss object, factor)`` where fastloss's loss = factor * sklearn's, or ``None``."""
    from sklearn import _loss as sk

    p = case.params
    name = case.loss
    if name == "mse":
        return sk.HalfSquaredError(), 2.0
    if name == "mae":
        return sk.AbsoluteError(), 1.0
    if name == "huber":
        return sk.HuberLoss(delta=float(p["delta"])), 1.0
    if name == "quantile":
        return sk.PinballLoss(quantile=float(p["q"])), 1.0
    if name == "poisson_nll" and p["log_input"] and not p["full"]:
        return sk.HalfPoissonLoss(), 1.0
    if name == "binary_cross_entropy" and p["pos_weight"] == 1.0:
        return sk.HalfBinomialLoss(), 1.0
    if name == "cross_entropy" and p.get("label_smoothing", 0.0) == 0.0 and case.inputs[0].ndim == 2:
        return sk.HalfMultinomialLoss(n_classes=case.inputs[0].shape[1]), 1.0
    return None


class Sklearn(Provider):
    """scikit-learn's Cython ``loss_gradient`` (per-sample loss and gradient into reused buffers),
    then the mean and the gradient's scaling, as a user of it would finish the job."""

    name = "sklearn"
    isolate = True
    module = "sklearn"
    dist = "scikit-learn"

    def supports(self, case: Case) -> bool:
        return _sklearn_loss(case) is not None

    def prepare(self, case: Case, device: str) -> Prepared:
        loss, factor = _sklearn_loss(case)
        raw, y = case.inputs[0], case.inputs[1].astype(case.dtype, copy=False)
        n = raw.shape[0]
        loss_out = np.empty(n, case.dtype)
        grad_out = np.empty_like(raw)
        n_threads = threads()
        scale = factor / n

        def run():
            loss.loss_gradient(y, raw, loss_out=loss_out, gradient_out=grad_out, n_threads=n_threads)
            np.multiply(grad_out, scale, out=grad_out)
            return factor * loss_out.mean(), grad_out

        return Prepared(run, _noop, _host_result)


#: Every provider, in table order. Peers are selected by name with ``--peers``.
PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Fastloss(), FastlossOut(), NaiveNumpy(), NaiveCupy(), Torch(), Jax(), Sklearn()
)}

#: Providers that always run (where they can): fastloss and the naive baselines.
ALWAYS = ("fastloss", "fastloss-out", "numpy", "cupy")
#: Optional peers.
PEERS = ("torch", "jax", "sklearn")
