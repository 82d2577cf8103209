"""fastloss.scoring: per-sample losses and summaries, exact and independent of the chunking."""

from __future__ import annotations

import math
import pickle
from fractions import Fraction

import numpy as np
import pytest
from cases import defaults, pointwise_inputs
from hypothesis import given
from hypothesis import strategies as st

import fastloss as fl
from fastloss import _exact, _quantiles
from fastloss.scoring import Accumulator, ScoreError, ScoringJob, per_sample, score

SCORED = fl.names("pointwise") + fl.names("rowwise")


def make_inputs(name: str, n: int, rng: np.random.Generator, classes: int = 5) -> list[np.ndarray]:
    """Valid inputs with one row per sample, from the loss's declaration (kind and target forms)."""
    spec = fl.get(name).spec
    if spec.kind == "pointwise":
        return pointwise_inputs(spec, (n,), rng)
    logits = rng.normal(0.0, 2.0, size=(n, classes))
    if "index" in spec.options.get("targets", ("index",)):
        y = rng.integers(0, classes, n)
        if "ignore_index" in defaults(spec) or spec.options.get("ignore_index"):
            y[::7] = -100
        return [logits, y]
    p = rng.random((n, classes))
    return [logits, p / p.sum(axis=1, keepdims=True)]


def reference_losses(name: str, inputs, **params) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample losses from the in-memory loss, and the mask of ignored rows."""
    out = np.asarray(fl.get(name)(*inputs, reduction="none", **params), dtype=np.float64)
    if out.ndim > 1:
        out = out.reshape(out.shape[0], -1).mean(axis=1)
    ignored = np.zeros(out.shape[0], bool)
    loss = fl.get(name)
    if fl.get(name).spec.kind != "pointwise" and np.asarray(inputs[1]).ndim == 1:
        ignore = params.get("ignore_index", next((p.default for p in loss._params if p.name == "ignore_index"), None))
        if ignore is not None:
            ignored = np.asarray(inputs[1]) == ignore
    return out, ignored


def exact_mean(values: np.ndarray) -> float:
    return float(sum(map(Fraction, values.tolist()), Fraction(0)) / len(values))


def exact_sum(values) -> float:
    """The correctly rounded sum (math.fsum, which raises on intermediate overflow)."""
    total = sum(map(Fraction, list(values)), Fraction(0))
    try:
        return float(total)
    except OverflowError:
        return math.inf if total > 0 else -math.inf


# -- the exact accumulator and the quantile selection ----------------------------------------------


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=0, max_size=60), st.integers(1, 7))
def test_exact_sum_is_fsum_for_any_split(values, parts):
    x = np.asarray(values, dtype=np.float64)
    whole = np.zeros((1, _exact.NDIG), np.int64)
    _exact.add_values(_exact.as_bits(x), whole[0])
    _exact.normalize(whole)
    assert _exact.to_float(whole[0]) == exact_sum(values)
    split = np.zeros((1, _exact.NDIG), np.int64)
    for chunk in np.array_split(x[::-1], parts):  # another order, another split
        d = np.zeros((1, _exact.NDIG), np.int64)
        _exact.add_values(_exact.as_bits(chunk), d[0])
        _exact.normalize(d)
        split += d
    _exact.normalize(split)
    np.testing.assert_array_equal(split, whole)
    if values:
        assert _exact.mean(whole[0], len(values)) == exact_mean(x)


def test_exact_sum_extremes():
    x = np.array([np.finfo(float).max, np.finfo(float).max, -np.finfo(float).max, 5e-324, -1e-300, 1.0])
    d = np.zeros((1, _exact.NDIG), np.int64)
    _exact.add_values(_exact.as_bits(x), d[0])
    _exact.normalize(d)
    assert _exact.to_float(d[0]) == exact_sum(x) == np.finfo(float).max  # math.fsum overflows here
    _exact.add_values(_exact.as_bits(np.full(3, np.finfo(float).max)), d[0])
    assert _exact.to_float(d[0]) == math.inf  # the exact sum overflows: rounds to inf


@pytest.mark.parametrize("collect_limit", [_quantiles.COLLECT_LIMIT, 5])
@pytest.mark.parametrize("kind", ["spread", "ties", "signed", "tiny"])
def test_selector_matches_numpy_quantile(kind, collect_limit):
    rng = np.random.default_rng(3)
    n = 5003
    x = {
        "spread": rng.lognormal(0, 3, n),
        "ties": np.round(rng.normal(0, 2, n)),
        "signed": rng.normal(0, 1, n) * 10.0 ** rng.integers(-8, 8, n),
        "tiny": np.full(n, 5e-324) * rng.integers(0, 3, n),
    }[kind]
    hist = np.zeros(1 << _quantiles.TOP_BITS, np.int64)
    _quantiles.hist_add(_exact.as_bits(x), hist)
    qs = (0.0, 0.001, 0.1, 0.5, 0.9, 0.999, 1.0, 1 / 3)
    sel = _quantiles.Selector(hist, _quantiles.needed_ranks(n, qs), collect_limit=collect_limit)
    passes = 0
    while not sel.done:
        plan = sel.plan()
        part = plan.empty()
        for chunk in np.array_split(x, 9):
            part = plan.combine(part, plan.partial(chunk))
        sel.resolve(plan, part)
        passes += 1
    assert passes <= 1 + (64 - _quantiles.TOP_BITS + _quantiles.STEP - 1) // _quantiles.STEP
    got = _quantiles.from_order_stats(n, qs, sel.value)
    np.testing.assert_array_equal([got[q] for q in qs], np.quantile(x, qs))


# -- summaries over the registry ---------------------------------------------------------------------


@pytest.mark.parametrize("name", SCORED)
def test_summary_is_exact_and_chunk_independent(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    n = 1203
    inputs = make_inputs(name, n, rng)
    ref, ignored = reference_losses(name, inputs)
    whole = score(name, *inputs)
    chunked = score(name, *inputs, chunk_size=97)
    assert chunked.to_dict() == whole.to_dict()

    counted = ref[~ignored & np.isfinite(ref)]
    assert whole.rows == n
    assert whole.ignored == int(ignored.sum())
    assert whole.count == counted.size
    assert whole.nonfinite == n - counted.size - whole.ignored
    assert whole.sum == math.fsum(counted)  # bitwise: the correctly rounded sum
    assert whole.mean == exact_mean(counted)  # one rounding of the exact mean
    assert whole.min == counted.min() and whole.max == counted.max()
    assert whole.quantiles_exact
    qs = list(whole.quantiles)
    np.testing.assert_array_equal([whole.quantiles[q] for q in qs], np.quantile(counted, qs))
    # the mean of the per-sample losses is the in-memory loss's "mean" (unweighted, one value per row)
    np.testing.assert_allclose(whole.mean, float(fl.get(name)(*inputs)), rtol=1e-12)


@pytest.mark.parametrize("name", SCORED)
def test_per_sample_matches_in_memory_loss(name):
    rng = np.random.default_rng(7)
    inputs = make_inputs(name, 301, rng)
    ref, ignored = reference_losses(name, inputs)
    got = per_sample(name, *inputs, chunk_size=50)
    np.testing.assert_array_equal(got[~ignored], ref[~ignored])
    assert np.isnan(got[ignored]).all()


def test_rows_of_a_2d_pointwise_loss_are_row_means():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(400, 6)).astype(np.float32)
    t = rng.normal(size=(400, 6)).astype(np.float32)
    out = np.empty(400)
    s = score("huber", p, t, out=out, chunk_size=33, delta=0.5)
    elem = fl.huber(p, t, delta=0.5, reduction="none").astype(np.float64)
    np.testing.assert_allclose(out, elem.mean(axis=1), rtol=1e-15)
    np.testing.assert_allclose(s.mean, float(fl.huber(p, t, delta=0.5)), rtol=1e-6)


def test_weights():
    rng = np.random.default_rng(1)
    p, t, w = rng.normal(size=1000), rng.normal(size=1000), rng.random(1000)
    p[3] = np.nan  # a non-finite loss: left out of the sums, its weight too
    s = score("mse", p, t, weight=w, chunk_size=64)
    loss = (p - t) ** 2
    keep = np.isfinite(loss)
    assert s.weight_sum == math.fsum(w[keep])
    assert s.weighted_sum == math.fsum(w[keep] * loss[keep])
    np.testing.assert_allclose(s.weighted_mean, np.sum(w[keep] * loss[keep]) / np.sum(w[keep]), rtol=1e-14)
    np.testing.assert_allclose(s.weighted_mean, fl.mse(p[keep], t[keep], weight=w[keep]), rtol=1e-14)
    assert s.nonfinite == 1 and s.count == 999


def test_nonfinite_losses_are_counted_and_left_out():
    p = np.array([1.0, np.nan, np.inf, 2.0, -np.inf])
    s = score("mae", p, np.zeros(5))
    assert (s.count, s.nonfinite, s.sum, s.min, s.max) == (2, 3, 3.0, 1.0, 2.0)


def test_empty_input():
    s = score("mse", np.zeros(0), np.zeros(0))
    assert (s.rows, s.count, s.sum) == (0, 0, 0.0)
    assert math.isnan(s.mean)
    assert s.to_dict()["mean"] is None and s.to_dict()["quantiles"]["0.5"] is None


@pytest.mark.skipif(not hasattr(fl, "cross_entropy"), reason="needs the row-wise losses")
def test_ignored_rows_and_per_class_means():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(900, 4))
    y = rng.integers(0, 4, 900)
    y[::5] = 3  # class 3 ignored below
    y[1::50] = -1
    out = np.empty(900)
    s = score("cross_entropy", logits, y, out=out, chunk_size=100, ignore_index=-1)
    ref = fl.cross_entropy(logits, y, ignore_index=-1, reduction="none")
    keep = y != -1
    assert s.ignored == int((~keep).sum())
    assert np.isnan(out[~keep]).all()
    for c in range(4):
        sel = y == c
        count, mean = s.per_class[str(c)]
        assert count == sel.sum()
        assert mean == exact_mean(ref[sel])
    np.testing.assert_allclose(s.mean, fl.cross_entropy(logits, y, ignore_index=-1), rtol=1e-12)
    assert score("cross_entropy", logits, y, ignore_index=-1, per_class=False).per_class is None


def test_per_class_for_binary_labels():
    rng = np.random.default_rng(4)
    x = rng.normal(size=500)
    y = np.sign(rng.normal(size=500))
    s = score("hinge", x, y)
    assert set(s.per_class) == {"-1", "1"}
    loss = fl.hinge(x, y, reduction="none")
    assert s.per_class["1"] == (int((y == 1).sum()), exact_mean(loss[y == 1]))
    yb = (y > 0).astype(float)
    assert set(score("binary_cross_entropy", x, yb).per_class) == {"0", "1"}
    assert score("mse", x, y).per_class is None  # not a classification loss


def test_approximate_quantiles_are_within_the_bound(tmp_path):
    rng = np.random.default_rng(5)
    p = rng.lognormal(0, 2, 20000)
    path = tmp_path / "p.npy"
    np.save(path, p)
    mm = np.load(path, mmap_mode="r")
    s = score("mae", mm, np.zeros_like(p), chunk_size=3000)  # a memory map: approximate by default
    assert not s.quantiles_exact
    exact = score("mae", p, np.zeros_like(p))
    assert exact.quantiles_exact
    for q, v in s.quantiles.items():
        lo, hi, _ = _quantiles.linear_ranks(p.size, q)
        srt = np.sort(p)
        bound = _quantiles.APPROX_REL_ERROR * max(abs(srt[lo]), abs(srt[hi]))
        assert abs(v - exact.quantiles[q]) <= bound
    assert score("mae", mm, np.zeros_like(p), exact_quantiles=True).quantiles == exact.quantiles
    assert s.sum == exact.sum and s.count == exact.count


def test_out_sink_and_array():
    rng = np.random.default_rng(6)
    p, t = rng.normal(size=777), rng.normal(size=777)

    class Sink:
        def __init__(self):
            self.parts = []

        def write(self, start, values):
            self.parts.append((start, values.copy()))

    sink = Sink()
    s = score("log_cosh", p, t, out=sink, chunk_size=100)
    assert [a for a, _ in sink.parts] == list(range(0, 777, 100))
    np.testing.assert_array_equal(np.concatenate([v for _, v in sink.parts]), fl.log_cosh(p, t, reduction="none"))
    assert not s.quantiles_exact or s.quantiles == score("log_cosh", p, t).quantiles
    with pytest.raises(ValueError, match="shape"):
        score("mse", p, t, out=np.empty(5))


def test_accumulators_merge_and_pickle():
    rng = np.random.default_rng(8)
    x = rng.normal(size=3000)
    classes = rng.integers(-1, 3, 3000)
    a, b, whole = Accumulator(3), Accumulator(3), Accumulator(3)
    a.update(x[:1000], classes=classes[:1000])
    b.update(x[1000:], classes=classes[1000:])
    whole.update(x, classes=classes)
    merged = pickle.loads(pickle.dumps(b)).merge(pickle.loads(pickle.dumps(a)))
    for attr in ("rows", "count", "min", "max"):
        assert getattr(merged, attr) == getattr(whole, attr)
    whole._normalize()
    np.testing.assert_array_equal(merged.sums, whole.sums)
    np.testing.assert_array_equal(merged.hist, whole.hist)
    np.testing.assert_array_equal(merged.class_sums, whole.class_sums)
    np.testing.assert_array_equal(merged.class_counts, whole.class_counts)
    assert len(pickle.dumps(a)) < 100_000  # the dense histogram travels sparse


def test_jobs_pickle_with_their_loss_by_name():
    job = ScoringJob("huber", [np.zeros(3), np.ones(3)], params={"delta": 2.0})
    clone = pickle.loads(pickle.dumps(job))
    assert clone.loss is fl.huber
    np.testing.assert_array_equal(clone.score_range(0, 3)[1], job.score_range(0, 3)[1])


# -- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: score("nope", np.zeros(3), np.zeros(3)), "unknown loss 'nope'"),
        (lambda: score("mse", np.zeros(3), np.zeros(4)), "length mismatch: pred has 3 rows, target has 4"),
        (lambda: score("mse", np.zeros(3, complex), np.zeros(3)), "unsupported dtype complex128"),
        (lambda: score("mse", np.zeros(3), np.array(["a", "b", "c"])), "unsupported dtype"),
        (lambda: score("huber", np.zeros(3), np.zeros(3), delta=-1.0), "delta must be in"),
        (lambda: score("huber", np.zeros(3), np.zeros(3), nope=1.0), "has no parameter 'nope'"),
        (lambda: score("mse", np.zeros(3), np.zeros(3), weight=np.ones(2)), "weight has 2"),
        (lambda: score("mse", np.zeros(3), np.zeros(3), weight=np.ones((3, 2))), "one weight per row"),
        (lambda: score("mse", np.zeros(3), np.zeros(3), weight=[1, np.nan, 1]), "non-finite value nan at row 1"),
        (lambda: score("mse", np.float64(1.0), np.float64(1.0)), "no rows"),
        (lambda: score("hinge", np.zeros(40), np.r_[np.ones(30), 2.0, np.ones(9)], chunk_size=8),
         r"value 2.0 at row 30 is not in \{-1, 0, 1\}"),
        (lambda: score("mse", np.zeros(3), np.zeros(3), chunk_size=0), "chunk size must be positive"),
        (lambda: score("mse", np.zeros(3), np.zeros(3), quantiles=[1.5]), "quantiles must be in"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ScoreError, match=match):
        call()


@pytest.mark.skipif(not hasattr(fl, "cross_entropy"), reason="needs the row-wise losses")
def test_labels_out_of_range_name_the_row():
    logits = np.zeros((50, 3))
    y = np.zeros(50, int)
    y[37] = 3
    with pytest.raises(ScoreError, match=r"label 3 at row 37 is out of range \[0, 3\)"):
        score("cross_entropy", logits, y, chunk_size=10)
    y[37] = -5
    with pytest.raises(ScoreError, match="label -5 at row 37"):
        score("cross_entropy", logits, y, chunk_size=10)
