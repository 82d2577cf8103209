"""``fastloss score`` must not lose data or mislead: outputs all or nothing, corrupt headers, domains, NaN."""

from __future__ import annotations

import concurrent.futures
import os
import stat
import time

import numpy as np
import pytest

from fastloss import _scoring_io
from fastloss.__main__ import main

N = 1000


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        rc = main(["score", *map(str, args)])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "p.npy", rng.normal(size=N))
    np.save(tmp_path / "t.npy", rng.normal(size=N))
    return tmp_path


def one_error(rc, out, err, *needles):
    assert rc == 1, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("fastloss score: error: "), err
    for n in needles:
        assert n in err, (n, err)


def mse(d, *more):
    return ["mse", "--pred", d / "p.npy", "--target", d / "t.npy", *more]


# -- outputs: both or neither, never an input, never a silent overwrite --------------------------------


def test_summary_that_is_a_directory_writes_nothing(files, capsys):
    (files / "out").mkdir()
    one_error(*run_cli(capsys, *mse(files, "--per-sample", files / "l.npy", "--summary", files / "out")),
              "--summary", "is a directory")
    assert sorted(os.listdir(files)) == ["out", "p.npy", "t.npy"]


def test_the_same_file_for_both_outputs_is_refused(files, capsys):
    one_error(*run_cli(capsys, *mse(files, "--per-sample", files / "x.npy", "--summary", files / "x.npy")),
              "same file")
    assert sorted(os.listdir(files)) == ["p.npy", "t.npy"]


@pytest.mark.parametrize("victim", ["p.npy", "t.npy"])
def test_an_output_that_is_an_input_is_refused(files, capsys, victim):
    before = (files / victim).read_bytes()
    one_error(*run_cli(capsys, *mse(files, "--per-sample", files / victim)), "is the input")
    os.symlink(files / victim, files / "alias.npy")  # the same file under another name
    one_error(*run_cli(capsys, *mse(files, "--per-sample", files / "alias.npy", "--overwrite")), "is the input")
    assert (files / victim).read_bytes() == before
    assert sorted(os.listdir(files)) == ["alias.npy", "p.npy", "t.npy"]


def test_existing_outputs_need_overwrite_and_keep_their_permissions(files, capsys):
    ps, sm = files / "l.npy", files / "s.json"
    for path in (ps, sm):
        path.write_bytes(b"old")
        path.chmod(0o600)
    one_error(*run_cli(capsys, *mse(files, "--per-sample", ps, "--summary", sm)), "exists", "--overwrite")
    assert ps.read_bytes() == sm.read_bytes() == b"old"
    rc, _, err = run_cli(capsys, *mse(files, "--per-sample", ps, "--summary", sm, "--overwrite"))
    assert rc == 0, err
    assert np.load(ps).shape == (N,) and sm.read_text().startswith("{")
    assert stat.S_IMODE(ps.stat().st_mode) == stat.S_IMODE(sm.stat().st_mode) == 0o600
    assert sorted(os.listdir(files)) == ["l.npy", "p.npy", "s.json", "t.npy"]  # no temporaries


def test_a_failed_rename_puts_every_output_back(files, monkeypatch):
    (files / "s.json").write_text("previous summary")
    first = _scoring_io.open_output(str(files / "l.npy"), 3)
    first.write(0, np.zeros(3))
    second = _scoring_io.JsonSink(str(files / "s.json"))
    second.write_json({"new": 1})

    def fail():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(second, "_rename", fail)
    with pytest.raises(OSError, match="No space"):
        _scoring_io.commit_all([first, second])
    first.abort()
    second.abort()
    assert not (files / "l.npy").exists()  # the first rename was undone
    assert (files / "s.json").read_text() == "previous summary"
    assert sorted(os.listdir(files)) == ["p.npy", "s.json", "t.npy"]


def test_a_failed_rename_restores_a_replaced_output(files, monkeypatch):
    (files / "l.npy").write_bytes(b"previous losses")
    first = _scoring_io.open_output(str(files / "l.npy"), 2)
    first.write(0, np.ones(2))
    second = _scoring_io.JsonSink(str(files / "s.json"))
    second.write_json({})
    monkeypatch.setattr(second, "_rename", lambda: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        _scoring_io.commit_all([first, second])
    first.abort()
    second.abort()
    assert (files / "l.npy").read_bytes() == b"previous losses"
    assert sorted(os.listdir(files)) == ["l.npy", "p.npy", "t.npy"]


# -- a Dask cluster that loses its only worker ----------------------------------------------------------


class _LostFuture:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc

    def cancel(self):
        pass

    def release(self):
        pass


class _ClusterWithoutWorkers:
    """What a client sees once its only worker was killed: every task comes back cancelled."""

    def __init__(self, exc):
        self.exc = exc

    def scatter(self, objs, **kw):
        return [_LostFuture(None) for _ in objs]

    def submit(self, *args, **kw):
        return _LostFuture(self.exc)

    def nthreads(self):
        return {"tcp://127.0.0.1:1": 1}

    def close(self):
        pass


@pytest.mark.parametrize("exc", ["cancelled", "killed"])
def test_a_cluster_that_lost_its_worker_is_one_line_and_leaves_no_temporaries(files, capsys, monkeypatch, exc):
    pytest.importorskip("distributed")
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    import fastloss.dask as fld

    if exc == "cancelled":
        error = FutureCancelledError("key", "lost")
        assert isinstance(error, concurrent.futures.CancelledError)
    else:
        error = KilledWorker("task", type("WorkerState", (), {"address": "tcp://127.0.0.1:2"})(), 3)

    def connect(cls, address, timeout=10.0):
        return cls(_ClusterWithoutWorkers(error), own_client=True)

    monkeypatch.setattr(fld.DaskRunner, "connect", classmethod(connect))
    rc, out, err = run_cli(capsys, *mse(files, "--scheduler", "tcp://127.0.0.1:1", "--per-sample", files / "l.npy",
                                       "--summary", files / "s.json"))
    one_error(rc, out, err, "the Dask cluster lost rows 0-", type(error).__name__)
    assert sorted(os.listdir(files)) == ["p.npy", "t.npy"]


def test_a_task_error_on_the_cluster_is_not_called_a_cluster_failure():
    pytest.importorskip("distributed")
    import fastloss.dask as fld

    runner = fld.DaskRunner(_ClusterWithoutWorkers(ValueError("bad label")))
    with pytest.raises(ValueError, match="bad label"):
        runner._result((0, 10), _LostFuture(ValueError("bad label")))


# -- corrupt .npy headers ---------------------------------------------------------------------------


def _npy_with_header(path, shape, descr="<f8", data=b""):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(data)


@pytest.mark.parametrize(("shape", "needle"), [
    ((-5,), "negative dimension"),
    ((10**30,), "truncated or corrupt"),
    ((10**12, 0), "hold no values"),
])
def test_corrupt_headers_are_clear_errors_naming_the_file_and_shape(files, capsys, shape, needle):
    bad = files / "bad.npy"
    _npy_with_header(bad, shape)
    assert bad.stat().st_size <= 128
    t0 = time.perf_counter()
    one_error(*run_cli(capsys, "mse", "--pred", bad, "--target", files / "t.npy"), str(bad), str(shape), needle)
    assert time.perf_counter() - t0 < 30


def test_a_stored_npz_member_that_claims_too_much_is_a_clear_error(files, capsys):
    np.savez(files / "a.npz", pred=np.zeros(4))
    raw = (files / "a.npz").read_bytes()
    (files / "a.npz").write_bytes(raw.replace(b"'shape': (4,)", b"'shape': (9,)"))
    one_error(*run_cli(capsys, "mse", "--pred", f"{files / 'a.npz'}:pred", "--target", files / "t.npy"),
              "(9,)", "truncated or corrupt")


def test_shape_errors_name_the_users_files_and_shapes_not_the_probe(tmp_path, capsys):
    np.save(tmp_path / "logits.npy", np.zeros((N, 10), np.float32))
    np.save(tmp_path / "probs.npy", np.full((N, 7), 1 / 7, np.float32))
    rc, out, err = run_cli(capsys, "cross_entropy", "--pred", tmp_path / "logits.npy", "--target",
                           tmp_path / "probs.npy")
    one_error(rc, out, err, str(tmp_path / "logits.npy"), str(tmp_path / "probs.npy"), f"({N}, 10)", f"({N}, 7)")
    assert "(16," not in err


# -- domains, weights and NaN -------------------------------------------------------------------------


def test_a_target_outside_the_declared_domain_is_an_error(tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.zeros(N))
    t = np.zeros(N)
    t[700] = 2.0
    np.save(tmp_path / "t.npy", t)
    one_error(*run_cli(capsys, "binary_cross_entropy", "--pred", tmp_path / "p.npy", "--target", tmp_path / "t.npy",
                       "--chunk-size", 100), "value 2.0 at row 700", "[0, 1]", str(tmp_path / "t.npy"))
    var = np.ones(N)
    var[5] = -1.0
    np.save(tmp_path / "var.npy", var)
    one_error(*run_cli(capsys, "gaussian_nll", "--pred", tmp_path / "p.npy", "--target", tmp_path / "p.npy",
                       "--input", f"var={tmp_path / 'var.npy'}"), "value -1.0 at row 5", "(0, inf)")


def test_negative_weights_are_an_error(files, capsys):
    w = np.ones(N)
    w[321] = -0.5
    np.save(files / "w.npy", w)
    one_error(*run_cli(capsys, *mse(files, "--weight", files / "w.npy", "--chunk-size", 100)),
              "negative weight -0.5 at row 321", str(files / "w.npy"))


def test_nan_inputs_warn_once_and_strict_makes_them_an_error(files, capsys):
    p = np.load(files / "p.npy")
    p[[3, 500]] = np.nan
    np.save(files / "nan.npy", p)
    args = ["mse", "--pred", files / "nan.npy", "--target", files / "t.npy", "--summary", files / "s.json"]
    rc, _, err = run_cli(capsys, *args)
    assert rc == 0, err
    assert err.count("\n") == 1 and err.startswith("fastloss score: warning: 2 of 1,000 rows"), err
    assert (files / "s.json").exists()
    os.unlink(files / "s.json")
    one_error(*run_cli(capsys, *args, "--strict"), "2 of 1,000 rows", "--strict")
    assert not (files / "s.json").exists()
    rc, _, err = run_cli(capsys, *mse(files, "--strict"))  # finite data: --strict changes nothing
    assert rc == 0 and err == "", err
