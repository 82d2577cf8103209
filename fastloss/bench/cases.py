"""Benchmark inputs, generated from the registry: one input factory per kind of loss.

A :class:`Case` is one loss at one size and dtype: its host arrays (in the declaration's input
order), the hyper-parameters (the declaration's defaults), the element count used for throughput
and the *minimal traffic*: every input read once plus every gradient written once. That is the
least any implementation has to move through memory, so ``min_bytes / time`` compared with the
measured memory bandwidth says how close to the hardware limit an implementation runs.

A kind plugs in by adding a :class:`KindFactory` to :data:`FACTORIES`: how it reads a size token
from the command line, its default sizes, and how it fills a case's arrays. Adding a loss of an
existing kind needs nothing here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._spec import Discrete, Input, Interval, LossSpec

#: Seed of every generated input, so that repeated runs measure the same data.
SEED = 20240601


@dataclass(frozen=True)
class Size:
    """A problem size: the array shape of the loss's first input, and how it is shown."""

    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def label(self) -> str:
        if len(self.shape) == 1:
            return format_count(self.shape[0])
        return "x".join(str(s) for s in self.shape)


@dataclass
class Case:
    """One loss at one size and dtype, with its inputs on the host."""

    spec: LossSpec
    size: Size
    dtype: np.dtype
    inputs: tuple[np.ndarray, ...]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def loss(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def elements(self) -> int:
        return self.size.elements

    @property
    def grad_shapes(self) -> list[tuple[tuple[int, ...], np.dtype]]:
        """Shape and dtype of each gradient (one per differentiable input)."""
        return [(x.shape, x.dtype) for inp, x in zip(self.spec.inputs, self.inputs) if inp.differentiable]

    @property
    def min_bytes(self) -> int:
        """Minimal memory traffic: each input read once and each gradient written once."""
        grads = sum(math.prod(shape) * dt.itemsize for shape, dt in self.grad_shapes)
        return sum(x.nbytes for x in self.inputs) + grads


@dataclass(frozen=True)
class KindFactory:
    """How the benchmark builds inputs for one kind of loss.

    Attributes
    ----------
    parse
        ``parse(token) -> Size`` or ``None`` when the size token is not meant for this kind
        (``"1e6"`` is a pointwise element count, ``"8192x1000"`` a row-wise (rows, classes) shape).
    sizes, quick_sizes
        Default sizes of a normal and of a ``--quick`` run.
    make
        ``make(spec, size, dtype, rng) -> tuple of arrays`` in the declaration's input order.
    """

    parse: Callable[[str], Size | None]
    sizes: tuple[Size, ...]
    quick_sizes: tuple[Size, ...]
    make: Callable[[LossSpec, Size, np.dtype, np.random.Generator], tuple[np.ndarray, ...]]


def format_count(n: int) -> str:
    """``1000000 -> "1e6"``, ``250000 -> "2.5e5"``, ``1234 -> "1234"``."""
    if n >= 1000:
        exp = math.floor(math.log10(n))
        mant = n / 10**exp
        if abs(mant - round(mant, 1)) < 1e-9:
            m = f"{mant:.1f}".rstrip("0").rstrip(".")
            return f"{m}e{exp}"
    return str(n)


def parse_count(token: str) -> int | None:
    """``"1e6"``, ``"1000000"``, ``"2.5e5"`` -> int; anything else -> ``None``."""
    try:
        value = float(token)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 1 or value != int(value):
        return None
    return int(value)


def parse_shape(token: str) -> tuple[int, ...] | None:
    """``"8192x1000"`` -> ``(8192, 1000)``; anything else -> ``None``."""
    parts = re.split(r"[x×*]", token.strip().lower())
    if len(parts) < 2:
        return None
    dims = [parse_count(p) for p in parts]
    if any(d is None for d in dims):
        return None
    return tuple(dims)  # type: ignore[arg-type]


# -- sampling -----------------------------------------------------------------------------------


def sample(domain: Interval | Discrete, shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator):
    """Values spread over ``domain``, generated directly in ``dtype`` (no float64 temporaries)."""
    if isinstance(domain, Discrete):
        values = np.asarray(domain.values, dtype=dtype)
        idx = rng.integers(0, len(values), size=shape, dtype=np.int8)
        return values[idx]
    lo, hi = domain.low, domain.high
    gen_dtype = dtype if dtype in (np.float32, np.float64) else np.float64
    if math.isinf(lo) and math.isinf(hi):
        x = rng.standard_normal(shape, dtype=gen_dtype)
        x *= 2
    elif math.isinf(hi):
        x = rng.standard_exponential(shape, dtype=gen_dtype)
        x *= 2
        x += lo + 0.05
    elif math.isinf(lo):
        x = rng.standard_exponential(shape, dtype=gen_dtype)
        x *= -2
        x += hi - 0.05
    else:
        x = rng.random(shape, dtype=gen_dtype)
        x *= 0.98 * (hi - lo)
        x += lo + 0.01 * (hi - lo)
    return x.astype(dtype, copy=False)


def _pointwise_parse(token: str) -> Size | None:
    n = parse_count(token)
    return Size((n,)) if n is not None else None


def _pointwise_make(spec: LossSpec, size: Size, dtype: np.dtype, rng: np.random.Generator):
    return tuple(sample(inp.domain, size.shape, dtype, rng) for inp in spec.inputs)


def _is_probability(inp: Input) -> bool:
    d = inp.domain
    return isinstance(d, Interval) and d.low == 0.0 and d.high == 1.0


def _rowwise_parse(token: str) -> Size | None:
    shape = parse_shape(token)
    return Size(shape) if shape is not None and len(shape) == 2 else None


def _rowwise_make(spec: LossSpec, size: Size, dtype: np.dtype, rng: np.random.Generator):
    """Logits ``(N, C)`` for the first input; each further input is either class indices
    ``(N,)`` (int64, in range) or, when declared on [0, 1], probability rows ``(N, C)``."""
    n, c = size.shape
    logits = rng.standard_normal(size.shape, dtype=dtype)
    logits *= 2
    arrays = [logits]
    for inp in spec.inputs[1:]:
        if _is_probability(inp):
            p = np.exp(rng.standard_normal(size.shape, dtype=dtype))
            p /= p.sum(axis=-1, keepdims=True)
            arrays.append(p)
        else:
            arrays.append(rng.integers(0, c, size=n, dtype=np.int64))
    return tuple(arrays)


def _rows_parse(token: str) -> Size | None:
    """``NxD``: N rows of D elements (embeddings, flattened masks, boxes)."""
    shape = parse_shape(token)
    return Size(shape) if shape is not None and len(shape) == 2 else None


def _rowreduce_make(spec: LossSpec, size: Size, dtype: np.dtype, rng: np.random.Generator):
    """Row-aligned inputs ``(N, D)`` from their domains, per-row inputs (``row_inputs``) ``(N,)``.

    A loss with a fixed ``row_length`` (boxes) gets as many rows of that length as make the same
    number of elements; one that declares ``sample_inputs`` (valid boxes cannot be drawn from an
    interval) is sampled by it.
    """
    n, d = size.shape
    opts = spec.options
    if opts.get("row_length"):
        n, d = max(1, n * d // opts["row_length"]), opts["row_length"]
    sampler = opts.get("sample_inputs")
    if sampler is not None:
        return tuple(np.asarray(a, dtype=dtype) for a in sampler((n,), rng))
    per_row = set(opts.get("row_inputs", ()))
    return tuple(sample(inp.domain, (n,) if inp.name in per_row else (n, d), dtype, rng) for inp in spec.inputs)


def _similarity_make(spec: LossSpec, size: Size, dtype: np.dtype, rng: np.random.Generator):
    """Two views ``(N, D)`` of N embeddings (the loss builds the N x N similarity matrix)."""
    return tuple(sample(inp.domain, size.shape, dtype, rng) for inp in spec.inputs)


FACTORIES: dict[str, KindFactory] = {
    "pointwise": KindFactory(
        parse=_pointwise_parse,
        sizes=(Size((1000,)), Size((100_000,)), Size((10_000_000,))),
        quick_sizes=(Size((1000,)), Size((1_000_000,))),  # the serial and the parallel path
        make=_pointwise_make,
    ),
    "rowwise": KindFactory(
        parse=_rowwise_parse,
        sizes=(Size((8192, 1000)), Size((1024, 32000)), Size((4, 256000))),
        quick_sizes=(Size((64, 1000)), Size((4, 32000))),
        make=_rowwise_make,
    ),
    "rowreduce": KindFactory(
        parse=_rows_parse,
        sizes=(Size((4096, 128)), Size((65536, 64)), Size((16, 262144))),  # embeddings; 16 masks of 512 x 512
        quick_sizes=(Size((64, 32)), Size((8, 4096))),
        make=_rowreduce_make,
    ),
    "similarity": KindFactory(
        parse=_rows_parse,
        sizes=(Size((256, 128)), Size((1024, 256)), Size((4096, 256))),
        quick_sizes=(Size((32, 16)), Size((128, 64))),
        make=_similarity_make,
    ),
}


def factory(kind: str) -> KindFactory:
    try:
        return FACTORIES[kind]
    except KeyError:
        raise KeyError(f"the benchmark has no input factory for the {kind!r} kind; add one to "
                       "fastloss.bench.cases.FACTORIES") from None


def default_params(spec: LossSpec) -> dict[str, Any]:
    """The declaration's default hyper-parameters (the benchmark measures the defaults).

    A loss's auxiliary-output switch (``options["aux"]``, e.g. ``return_z_loss``) changes the shape
    of the value, not the loss, and peers do not take it: it is left out.
    """
    aux = spec.options.get("aux")
    return {p.name: p.default for p in spec.params if p.name != aux}


def sizes_for(kind: str, tokens: Sequence[str] | None, quick: bool = False) -> list[Size]:
    """The sizes of ``tokens`` that this kind understands; its defaults when ``tokens`` is None."""
    fac = factory(kind)
    if tokens is None:
        return list(fac.quick_sizes if quick else fac.sizes)
    return [s for s in (fac.parse(t) for t in tokens) if s is not None]


def make_case(spec: LossSpec, size: Size, dtype: np.dtype | str, seed: int = SEED) -> Case:
    """Generate the inputs of ``spec`` at ``size`` (deterministic for a given seed)."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    inputs = factory(spec.kind).make(spec, size, dt, rng)
    # a factory may adapt the shape to the loss (boxes have rows of 4): the case's size is what it made
    return Case(spec=spec, size=Size(inputs[0].shape), dtype=dt, inputs=inputs, params=default_params(spec))
