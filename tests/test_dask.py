"""fastloss.dask: losses and summaries over dask arrays, and scoring jobs on a distributed cluster."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import fastloss as fl  # noqa: E402
import fastloss.dask as fld  # noqa: E402
from fastloss.scoring import per_sample, score  # noqa: E402

ROWWISE = fl.names("rowwise")


def rowwise_case(name, n, rng, classes=6):
    spec = fl.get(name).spec
    logits = rng.normal(0, 2, size=(n, classes))
    if "index" in spec.options.get("targets", ("index",)):
        y = rng.integers(0, classes, n)
        if any(p.name == "ignore_index" for p in fl.get(name)._params):
            y[::9] = -100
        return logits, y
    p = rng.random((n, classes))
    return logits, p / p.sum(axis=1, keepdims=True)


# -- the local (threaded) scheduler: semantics ------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["mse", "huber", "binary_cross_entropy", "gaussian_nll", *ROWWISE])
def test_value_matches_the_in_memory_loss(name, reduction):
    rng = np.random.default_rng(0)
    spec = fl.get(name).spec
    if spec.kind == "pointwise":
        from cases import pointwise_inputs

        arrays = pointwise_inputs(spec, (1001, 3), rng)
        chunked = [da.from_array(a, chunks=(173, 2)) for a in arrays]
    else:
        arrays = list(rowwise_case(name, 1001, rng))
        chunked = [da.from_array(arrays[0], chunks=(150, 4)), da.from_array(arrays[1], chunks=211)]
    got = fld.value(name, *chunked, reduction=reduction)
    ref = fl.get(name)(*arrays, reduction=reduction)
    if reduction == "none":
        np.testing.assert_array_equal(got.compute(), ref)
    else:
        assert got.shape == () and got.dtype == np.asarray(ref).dtype
        np.testing.assert_allclose(got.compute(), ref, rtol=1e-13)
        # exact partial sums: the chunking does not change a single bit
        other = [da.from_array(a, chunks=(400, *a.shape[1:])) for a in arrays]
        assert fld.value(name, *other, reduction=reduction).compute() == got.compute()


def test_value_with_weights():
    rng = np.random.default_rng(1)
    p, t, w = rng.normal(size=(500, 2)), rng.normal(size=(500, 2)), rng.random((500, 2))
    got = fld.value("huber", da.from_array(p, chunks=77), da.from_array(t, chunks=100), weight=da.from_array(w, 50))
    np.testing.assert_allclose(got.compute(), fl.huber(p, t, weight=w), rtol=1e-13)


@pytest.mark.parametrize("name", [n for n in ROWWISE if fl.get(n).spec.options.get("class_weight", True)])
def test_value_with_class_weights(name):
    rng = np.random.default_rng(1)
    logits, y = rowwise_case(name, 500, rng)
    cw = rng.random(logits.shape[1]) + 0.5
    got = fld.value(name, da.from_array(logits, chunks=(64, 6)), y, weight=cw)
    np.testing.assert_allclose(got.compute(), fl.get(name)(logits, y, weight=cw), rtol=1e-13)


@pytest.mark.parametrize("name", ["mse", "hinge", *ROWWISE])
def test_summarize_equals_scoring_in_memory(name):
    rng = np.random.default_rng(2)
    if fl.get(name).spec.kind == "pointwise":
        from cases import pointwise_inputs

        arrays = pointwise_inputs(fl.get(name).spec, (900,), rng)
    else:
        arrays = list(rowwise_case(name, 900, rng))
    w = rng.random(900)
    dk = [da.from_array(a, chunks=(128, *a.shape[1:])) for a in arrays]
    got = fld.summarize(name, *dk, weight=da.from_array(w, chunks=300))
    assert got.to_dict() == score(name, *arrays, weight=w).to_dict()
    np.testing.assert_array_equal(fld.per_sample(name, *dk).compute(), per_sample(name, *arrays))


def test_bad_dask_input():
    with pytest.raises(ValueError, match="length mismatch"):
        fld.value("mse", da.zeros(10, chunks=5), da.zeros(11, chunks=5))
    with pytest.raises(ValueError, match="unknown loss"):
        fld.value("nope", da.zeros(10, chunks=5), da.zeros(10, chunks=5))


# -- a real cluster: worker processes on loopback -----------------------------------------------------


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
    )
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def test_cluster_results_equal_single_machine(client):
    rng = np.random.default_rng(3)
    p, t = rng.normal(size=(3000, 4)), rng.normal(size=(3000, 4))
    P, T = da.from_array(p, chunks=(250, 4)), da.from_array(t, chunks=(250, 4))
    v = client.compute(fld.value("log_cosh", P, T)).result(timeout=120)
    assert v == fld.value("log_cosh", P, T).compute(scheduler="sync")
    np.testing.assert_allclose(v, fl.log_cosh(p, t), rtol=1e-13)
    s = fld.summarize("log_cosh", P, T)  # the client is the default scheduler: runs on the cluster
    assert s.to_dict() == score("log_cosh", p, t).to_dict()


def test_cli_runs_on_the_cluster(client, tmp_path, capsys):
    from fastloss.__main__ import main

    rng = np.random.default_rng(4)
    p, t = rng.normal(size=5000).astype(np.float32), rng.normal(size=5000).astype(np.float32)
    np.save(tmp_path / "p.npy", p)
    np.save(tmp_path / "t.npy", t)
    args = ["score", "smooth_l1", "--pred", str(tmp_path / "p.npy"), "--target", str(tmp_path / "t.npy"),
            "--chunk-size", "600", "--exact-quantiles"]
    assert main([*args, "--scheduler", client.scheduler.address, "--per-sample", str(tmp_path / "d.npy")]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert main([*args, "--per-sample", str(tmp_path / "l.npy")]) == 0
    local = json.loads(capsys.readouterr().out)
    assert remote == local
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), np.load(tmp_path / "l.npy"))
    # re-scoring passes for exact quantiles also run on the cluster
    assert main([*args, "--scheduler", client.scheduler.address]) == 0
    assert json.loads(capsys.readouterr().out) == local
    # a bad label raised on a worker is still one line
    y = np.ones(5000)
    y[4321] = 5.0
    np.save(tmp_path / "y.npy", y)
    rc = main(["score", "hinge", "--pred", str(tmp_path / "p.npy"), "--target", str(tmp_path / "y.npy"),
               "--chunk-size", "600", "--scheduler", client.scheduler.address])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "value 5.0 at row 4321" in err, err


def test_killed_worker_is_recovered(client):
    rng = np.random.default_rng(5)
    p, t = rng.normal(size=(4000, 2)), rng.normal(size=(4000, 2))

    def slow(block):  # a local function: shipped by value; slows each block so the run is mid-way when killed
        time.sleep(0.15)
        return block

    P = da.from_array(p, chunks=(100, 2)).map_blocks(slow, dtype=p.dtype)
    T = da.from_array(t, chunks=(100, 2))
    expected = fld.value("mse", da.from_array(p, chunks=(100, 2)), T).compute(scheduler="sync")
    future = client.compute(fld.value("mse", P, T))
    pids = client.run(os.getpid)
    deadline = time.monotonic() + 60
    victim = None
    while victim is None:
        busy = [w for w, tasks in client.processing().items() if tasks]
        if busy and future.status == "pending":
            victim = busy[0]
        assert time.monotonic() < deadline, "the computation never started"
        time.sleep(0.05)
    time.sleep(0.3)
    assert future.status == "pending"  # 40 blocks x 0.15 s on 2 workers: still running
    os.kill(pids[victim], signal.SIGKILL)
    assert future.result(timeout=180) == expected
    np.testing.assert_allclose(expected, fl.mse(p, t), rtol=1e-13)
