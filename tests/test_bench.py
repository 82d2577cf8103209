"""The benchmark: naive peers agree with fastloss, inputs follow the declarations, the CLI runs.

Nothing here measures speed: the benchmark *reports* performance, tests only check that what it
runs is correct and that its output is complete and parseable.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import fastloss as fl
from fastloss.__main__ import main as fastloss_main
from fastloss._spec import Input, Interval, LossSpec
from fastloss.bench import report
from fastloss.bench.cases import FACTORIES, Size, factory, format_count, make_case, parse_count, sizes_for
from fastloss.bench.coldstart import coldstart
from fastloss.bench.naive import NAIVE
from fastloss.bench.peers import PEERS, PROVIDERS
from fastloss.bench.runner import compare
from fastloss.bench.timing import measure

NAMES = fl.names()

#: Parameter variants that reach every branch of the naive implementations.
VARIANTS = {
    "robust": [{"alpha": a} for a in (2.0, 0.0, -math.inf, -2.0, 0.5)] + [{"scale": 0.7}],
    "smooth_l1": [{"beta": 0.0}, {"beta": 0.3}],
    "huber": [{"delta": 0.4}],
    "quantile": [{"q": 0.9}],
    "poisson_nll": [{"log_input": False}, {"full": True}, {"log_input": False, "full": True}],
    "gaussian_nll": [{"full": True}, {"eps": 0.5}],
    "sigmoid_focal": [{"alpha": -1.0}, {"gamma": 0.0}, {"gamma": 0.5}],
    "binary_cross_entropy": [{"pos_weight": 2.5}],
    "hinge": [{"margin": 0.5}],
    "squared_hinge": [{"margin": 2.0}],
    "cross_entropy": [{"label_smoothing": 0.1}],
    "softmax_focal": [{"gamma": 0.0}, {"gamma": 0.5}],
    "multiclass_hinge": [{"p": 2}, {"margin": 0.3}],
    "generalized_cross_entropy": [{"q": 1.0}, {"q": 0.2}],
    "poly1_cross_entropy": [{"epsilon": 0.0}, {"epsilon": -1.0}],
    "margin_ranking": [{"margin": 0.5}],
    "contrastive": [{"margin": 4.0}],
    "triplet_margin": [{"p": 1.5}, {"swap": True}, {"margin": 3.0, "eps": 0.0}],
    "cosine_embedding": [{"margin": 0.3}],
    "info_nce": [{"symmetric": False}, {"temperature": 0.5}],
    "dice": [{"from_logits": False}, {"smooth": 0.0}],
    "jaccard": [{"from_logits": False}],
    "tversky": [{"alpha": 0.7, "beta": 0.3}, {"from_logits": False}],
}


def small_case(name: str, dtype: str = "float64", params: dict | None = None):
    spec = fl.get(name).spec
    case = make_case(spec, factory(spec.kind).quick_sizes[0], dtype)
    case.params.update(params or {})
    if name == "poisson_nll" and not case.params["log_input"]:
        case.inputs = (np.abs(case.inputs[0]) + np.asarray(0.1, dtype), *case.inputs[1:])  # rates > 0
    if case.params.get("from_logits") is False:  # masks of probabilities
        case.inputs = (1.0 / (1.0 + np.exp(-case.inputs[0])), *case.inputs[1:])
    return case


def as_tuple(g):
    return g if isinstance(g, tuple) else (g,)


# -- naive peers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_loss_has_a_naive_peer(name):
    assert name in NAIVE, (
        f"{name} has no naive NumPy peer: add its reference to fastloss/reference/ (the peer is the "
        "reference with the mean reduction) so the benchmark can report its speedup"
    )


def _variants():
    for name in NAMES:
        for params in [{}, *VARIANTS.get(name, [])]:
            for dtype in ("float64", "float32"):
                yield pytest.param(name, params, dtype, id=f"{name}-{params}-{dtype}")


@pytest.mark.parametrize(("name", "params", "dtype"), list(_variants()))
def test_naive_peer_matches_fastloss(name, params, dtype):
    if name not in NAIVE:
        pytest.fail(f"{name} has no naive peer")
    case = small_case(name, dtype, params)
    value, grads = NAIVE[name](*case.inputs, **case.params)
    ref_value, ref_grads = fl.get(name).value_and_grad(*case.inputs, **case.params)
    rtol = 1e-10 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(float(value), float(ref_value), rtol=rtol)
    grads, ref_grads = as_tuple(grads), as_tuple(ref_grads)
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads):
        assert g.shape == r.shape
        assert g.dtype == r.dtype, "a naive peer must keep the input dtype (or it is timed on other work)"
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * float(np.max(np.abs(r))))


def _plain_cross_entropy(logits, target, ignore_index=-100, label_smoothing=0.0):
    """Row-by-row float64 reference, written independently of the vectorised naive code."""
    n, c = logits.shape
    total, count = 0.0, 0
    grad = np.zeros((n, c))
    for i in range(n):
        if target[i] == ignore_index:
            continue
        row = logits[i].astype(np.float64)
        lse = math.log(sum(math.exp(v - row.max()) for v in row)) + row.max()
        q = np.full(c, label_smoothing / c)
        q[target[i]] += 1.0 - label_smoothing
        total += float(np.sum(q * (lse - row)))
        grad[i] = np.exp(row - lse) - q
        count += 1
    return total / count, grad / count


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_naive_cross_entropy_matches_a_plain_reference(label_smoothing):
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (7, 5))
    target = rng.integers(0, 5, 7)
    target[2] = -100  # ignored
    value, grad = NAIVE["cross_entropy"](logits, target, label_smoothing=label_smoothing)
    ref_value, ref_grad = _plain_cross_entropy(logits, target, label_smoothing=label_smoothing)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-15)
    assert not np.any(grad[2])


# -- inputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_inputs_follow_the_declaration(name):
    spec = fl.get(name).spec
    assert spec.kind in FACTORIES, f"no benchmark input factory for kind {spec.kind!r}"
    case = make_case(spec, factory(spec.kind).quick_sizes[0], "float32")
    assert len(case.inputs) == len(spec.inputs)
    assert case.inputs[0].dtype == np.float32
    for inp, x in zip(spec.inputs, case.inputs):
        if x.dtype.kind == "f":
            assert np.all([inp.domain.contains(float(v)) for v in x.ravel()[:200]]), inp.name
    again = make_case(spec, case.size, "float32")
    assert all(np.array_equal(a, b) for a, b in zip(case.inputs, again.inputs)), "inputs must be seeded"


def test_min_bytes_counts_inputs_read_and_gradients_written():
    case = make_case(fl.get("mse").spec, Size((1000,)), "float32")
    assert case.min_bytes == 3 * 1000 * 4
    case = make_case(fl.get("gaussian_nll").spec, Size((1000,)), "float64")
    assert case.min_bytes == (3 + 2) * 1000 * 8


def test_rowwise_factory_makes_logits_labels_and_probabilities():
    spec = LossSpec(name="toy_rowwise", kind="rowwise", kernel=lambda *a: a, inputs=(
        Input("logits", "", differentiable=True), Input("target", ""), Input("probs", "", Interval(0.0, 1.0))))
    case = make_case(spec, Size((64, 1000)), "float32")
    logits, labels, probs = case.inputs
    assert logits.shape == (64, 1000) and logits.dtype == np.float32
    assert labels.shape == (64,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 1000
    assert probs.shape == (64, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert case.min_bytes == logits.nbytes + labels.nbytes + probs.nbytes + logits.nbytes


def test_size_tokens_go_to_the_kind_that_reads_them():
    tokens = ["1e3", "2.5e5", "8192x1000", "4x256000", "junk"]
    assert [s.shape for s in sizes_for("pointwise", tokens)] == [(1000,), (250000,)]
    assert [s.shape for s in sizes_for("rowwise", tokens)] == [(8192, 1000), (4, 256000)]
    assert parse_count("1.5") is None and parse_count("0") is None
    assert format_count(1000) == "1e3" and format_count(250000) == "2.5e5" and format_count(1234) == "1234"
    assert Size((8192, 1000)).label == "8192x1000"


# -- peers and the correctness check ----------------------------------------------------------------


@pytest.mark.parametrize("peer", PEERS)
def test_installed_peers_agree_with_fastloss(peer):
    provider = PROVIDERS[peer]
    reason = provider.unavailable("cpu")
    if reason is not None:
        pytest.skip(reason)
    checked = 0
    # float32 only for JAX: float64 needs jax_enable_x64, a process-wide switch other tests must not see
    for name in NAMES:
        for dtype in ("float32",) if peer == "jax" else ("float32", "float64"):
            case = small_case(name, dtype)
            if not provider.supports(case):
                continue
            ours = PROVIDERS["fastloss"].prepare(case, "cpu")
            theirs = provider.prepare(case, "cpu")
            status = compare(theirs.to_host(theirs.run()), ours.to_host(ours.run()), case.dtype)
            assert status == "ok", f"{peer} {name} {dtype}: {status}"
            checked += 1
    assert checked > 0


def test_compare_flags_a_wrong_gradient():
    case = small_case("mse")
    prepared = PROVIDERS["fastloss"].prepare(case, "cpu")
    value, grads = prepared.to_host(prepared.run())
    assert compare((value, grads), (value, grads), case.dtype) == "ok"
    wrong = grads[0].copy()
    wrong[5] *= 1.01
    assert compare((value, (wrong,)), (value, grads), case.dtype).startswith("MISMATCH")
    assert compare((value * 1.001, grads), (value, grads), case.dtype).startswith("MISMATCH")


def test_measure_separates_the_first_call():
    calls = []

    def fn():
        calls.append(1)
        return len(calls)

    timing, first = measure(fn, repeats=4, warmup_time=0.0, max_time=10.0, min_sample_time=0.0)
    assert first == 1
    assert len(timing.samples) == 4 and timing.number == 1
    assert len(calls) == 1 + 1 + 4  # first call, warm-up, samples
    assert timing.percentile(10) <= timing.median <= timing.percentile(90)


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    paths = {k: out / f"bench.{k}" for k in ("json", "csv", "md", "png")}
    argv = ["bench", "--quick", "--losses", "mse,huber", "--peers", "none", "--no-coldstart", "--no-progress",
            "--json", str(paths["json"]), "--csv", str(paths["csv"]), "--markdown", str(paths["md"])]
    try:
        import matplotlib  # noqa: F401

        argv += ["--plot", str(paths["png"])]
    except ImportError:
        pass
    assert fastloss_main(argv) == 0
    return paths


def test_quick_run_writes_liger_style_json_rows(quick_run):
    data = json.loads(quick_run["json"].read_text())
    machine = data["machine"]
    for key in ("cpu", "cores", "threading_layer", "python", "fastloss", "versions"):
        assert machine[key], key
    assert {"numpy", "numba"} <= set(machine["versions"])
    assert data["bandwidth"]["GBps_median"] > 0
    rows = data["rows"]
    assert {r["loss"] for r in rows} == {"mse", "huber"}
    assert {r["provider"] for r in rows} == {"fastloss", "fastloss-out", "numpy"}
    assert {r["x"] for r in rows} == {s.elements for s in factory("pointwise").quick_sizes}
    metrics = {r["metric"] for r in rows}
    assert {"time", "first_call", "throughput", "elements_per_s", "fraction_of_bandwidth",
            "speedup_vs_naive"} <= metrics
    for r in rows:
        assert r["dtype"] == "float32" and r["device"] == "cpu" and r["fastloss_version"] == fl.__version__
        assert r["check"] in ("ref", "ok"), r
        if r["metric"] == "time":
            assert 0 < r["p10"] <= r["p50"] <= r["p90"]
    assert any(t["target"].startswith("not slower than NumPy") for t in data["targets"])


def test_quick_run_writes_csv_rows(quick_run):
    with open(quick_run["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert rows and set(report.ROW_FIELDS) == set(rows[0])
    times = [r for r in rows if r["metric"] == "time"]
    assert len(times) == 2 * 3 * len(factory("pointwise").quick_sizes)  # losses x providers x sizes
    assert all(float(r["p50"]) > 0 for r in times)


def test_quick_run_writes_markdown_and_plot(quick_run):
    md = quick_run["md"].read_text()
    assert "| loss | size |" in md and "mse" in md and "GB/s" in md
    if not quick_run["png"].exists():
        pytest.importorskip("matplotlib")
    assert quick_run["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plain_text_report():
    from fastloss.bench import run

    bench = run(losses=["l2"] if "l2" in fl.REGISTRY else ["mse"], sizes=["1e3"], peers=["none"], repeats=3,
                max_time=0.05, quick=True, coldstart_losses=[], progress=False)
    text = report.format_text(bench)
    assert "memory bandwidth" in text and "vs naive" in text and bench.results[0].loss in text


def test_bad_arguments_exit_with_2(capsys):
    assert fastloss_main(["bench", "--losses", "no_such_loss", "--no-progress"]) == 2
    assert "no_such_loss" in capsys.readouterr().err
    assert fastloss_main(["bench", "--dtype", "int8"]) == 2
    assert fastloss_main(["bench", "--peers", "nope", "--no-progress"]) == 2


def test_python_m_fastloss_bench_runs():
    proc = subprocess.run([sys.executable, "-m", "fastloss.bench", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--json" in proc.stdout


@pytest.mark.slow
def test_coldstart_measures_an_empty_then_a_warm_cache():
    cold, warm = coldstart("mse", "float64", "pointwise")
    assert (cold.cache, warm.cache) == ("cold", "warm")
    for c in (cold, warm):
        assert c.import_s > 0 and len(c.first_calls_s) == len(factory("pointwise").quick_sizes)
        assert all(t > 0 for t in c.first_calls_s)


def test_child_process_measures_a_peer_and_checks_it():
    job = {"provider": "numpy", "device": "cpu", "threads": 1, "repeats": 3, "max_time": 0.05,
           "cases": [{"loss": "mse", "shape": [1000], "dtype": "float32"},
                     {"loss": "huber", "shape": [500], "dtype": "float64"}]}
    proc = subprocess.run([sys.executable, "-m", "fastloss.bench._child"], input=json.dumps(job),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    msgs = [json.loads(line) for line in proc.stdout.splitlines()]
    results = [m for m in msgs if m["event"] == "result"]
    assert [m["index"] for m in results] == [0, 1]
    assert [m["min_bytes"] for m in results] == [3 * 1000 * 4, 3 * 500 * 8]
    for m in results:
        assert m["check"] == "ok" and len(m["samples"]) == 3 and m["first"] > 0


def test_isolated_peer_rows_join_the_table():
    pytest.importorskip("torch")
    from fastloss.bench import run

    bench = run(losses=["mse"], sizes=["1e3"], peers=["torch"], repeats=3, max_time=0.05, quick=True,
                coldstart_losses=[], progress=False)
    assert [r.provider for r in bench.results] == ["fastloss", "fastloss-out", "numpy", "torch"]
    torch_row = bench.results[-1]
    assert torch_row.check == "ok" and torch_row.speedup is not None and torch_row.bandwidth > 0
