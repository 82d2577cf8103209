"""``fastloss score``: file formats, outputs, streaming with bounded memory, interruption, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastloss as fl
from fastloss.__main__ import main
from fastloss.scoring import score

N = 2003


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("score")
    rng = np.random.default_rng(0)
    p = rng.normal(size=N).astype(np.float32)
    t = rng.normal(size=N).astype(np.float32)
    w = rng.random(N)
    np.save(d / "p.npy", p)
    np.save(d / "t.npy", t)
    np.save(d / "w.npy", w)
    np.savez(d / "pt.npz", pred=p, target=t)
    np.savez_compressed(d / "ptc.npz", pred=p, target=t)
    np.save(d / "short.npy", t[:10])
    np.save(d / "c.npy", p.astype(np.complex64))
    np.save(d / "pf.npy", np.asfortranarray(np.stack([p, t], axis=1)))
    np.save(d / "tf.npy", np.asfortranarray(np.stack([t, p], axis=1)))
    return d, p, t, w


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        rc = main(["score", *map(str, args)])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def summary_dict(s, loss, params=None) -> dict:
    return {"loss": loss, "params": params or {}, **s.to_dict()}


def test_npy_outputs_match_the_library(data, capsys, tmp_path):
    d, p, t, w = data
    rc, out, err = run_cli(capsys, "huber", "--pred", d / "p.npy", "--target", d / "t.npy", "--weight", d / "w.npy",
                           "--param", "delta=0.5", "--per-sample", tmp_path / "ps.npy",
                           "--summary", tmp_path / "s.json", "--chunk-size", 300, "--no-progress")
    assert rc == 0, err
    assert out == "" and err == ""
    ref = fl.huber(p, t, delta=0.5, reduction="none").astype(np.float64)
    ps = np.load(tmp_path / "ps.npy")
    assert ps.dtype == np.float64
    np.testing.assert_array_equal(ps, ref)
    got = json.loads((tmp_path / "s.json").read_text())
    assert got == summary_dict(score("huber", p, t, weight=w, delta=0.5), "huber", {"delta": 0.5})
    assert got["quantiles_exact"] is True
    assert oct(os.stat(tmp_path / "ps.npy").st_mode & 0o777) != oct(0o600)  # not the temporary file's mode
    assert sorted(os.listdir(tmp_path)) == ["ps.npy", "s.json"]  # no temporary files left


def test_summary_does_not_depend_on_the_chunk_size(data, capsys):
    d, p, t, _ = data
    outs = []
    for chunk in (1, 7, 4096):
        rc, out, err = run_cli(capsys, "mse", "--pred", d / "p.npy", "--target", d / "t.npy", "--chunk-size", chunk,
                               "--exact-quantiles")
        assert rc == 0, err
        outs.append(json.loads(out))
    assert outs[0] == outs[1] == outs[2]
    assert outs[0] == summary_dict(score("mse", p, t), "mse")


@pytest.mark.parametrize("pred, target", [("pt.npz:pred", "pt.npz:target"), ("ptc.npz:pred", "ptc.npz:target"),
                                          ("pf.npy", "tf.npy")])
def test_npz_members_and_fortran_order(data, capsys, pred, target):
    d, p, t, _ = data
    rc, out, err = run_cli(capsys, "mae", "--pred", d / pred, "--target", d / target, "--chunk-size", 333,
                           "--exact-quantiles")
    assert rc == 0, err
    if pred == "pf.npy":  # (N, 2) Fortran-ordered arrays: per-sample losses are row means
        ref = score("mae", np.stack([p, t], axis=1), np.stack([t, p], axis=1))
    else:
        ref = score("mae", p, t)
    assert json.loads(out) == summary_dict(ref, "mae")


def test_parquet_columns_and_output(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(1)
    n, c = 1500, 5
    logits = rng.normal(size=(n, c)).astype(np.float32)
    y = rng.integers(0, c, n)
    y[::11] = -100
    flat = pa.array(logits.reshape(-1))
    table = pa.table({
        "fixed": pa.FixedSizeListArray.from_arrays(flat, c),
        "var": pa.array([row for row in logits]),
        "y": y,
        "score": logits[:, 0],
    })
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=400)
    loss = "cross_entropy" if hasattr(fl, "cross_entropy") else None
    outs = []
    for col in ("fixed", "var"):
        if loss is None:
            break
        rc, out, err = run_cli(capsys, loss, "--pred", f"{tmp_path / 'd.parquet'}:{col}", "--target",
                               f"{tmp_path / 'd.parquet'}:y", "--chunk-size", 250, "--per-sample",  # exact quantiles
                               tmp_path / f"{col}.parquet")
        assert rc == 0, err
        outs.append(json.loads(out))
        got = pq.read_table(tmp_path / f"{col}.parquet").column("loss").to_numpy()
        ref = fl.cross_entropy(logits, y, reduction="none").astype(np.float64)
        keep = y != -100
        np.testing.assert_array_equal(got[keep], ref[keep])
        assert np.isnan(got[~keep]).all()
    if loss is not None:
        assert outs[0] == outs[1] == summary_dict(score(loss, logits, y), loss)
        assert outs[0]["ignored"] == int((y == -100).sum()) and "per_class" in outs[0]
    # a scalar column against an .npy target, Parquet per-sample output read back for exact quantiles
    np.save(tmp_path / "t.npy", logits[:, 1])
    rc, out, err = run_cli(capsys, "mse", "--pred", f"{tmp_path / 'd.parquet'}:score", "--target", tmp_path / "t.npy",
                           "--per-sample", tmp_path / "o.parquet", "--chunk-size", 128)
    assert rc == 0, err
    assert json.loads(out) == summary_dict(score("mse", logits[:, 0], logits[:, 1]), "mse")


def test_parquet_bad_columns(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"ragged": pa.array([[1.0, 2.0], [1.0], [3.0, 4.0]]), "s": ["a", "b", "c"],
                             "nulls": pa.array([1.0, None, 2.0]), "x": [1.0, 2.0, 3.0]}), tmp_path / "b.parquet")
    base = str(tmp_path / "b.parquet")
    cases = [
        (f"{base}:ragged", "row 1 has 1 values, expected 2"),
        (f"{base}:s", "unsupported type string"),
        (f"{base}:nulls", "missing value at row 1"),
        (f"{base}:nope", "has no column 'nope' (columns: ragged, s, nulls, x)"),
        (base, "name a column"),
    ]
    for pred, message in cases:
        rc, _out, err = run_cli(capsys, "mse", "--pred", pred, "--target", f"{base}:x")
        assert rc == 1
        assert err.count("\n") == 1 and message in err, err


def test_bad_input_is_one_line(data, capsys, tmp_path):
    d, _, _, _ = data
    np.save(tmp_path / "labels.npy", np.r_[np.ones(1500), 3.0, np.ones(N - 1501)])
    p, t = d / "p.npy", d / "t.npy"
    cases = [
        (["nosuch", "--pred", p, "--target", t], "unknown loss 'nosuch'"),
        (["mse", "--pred", d / "missing.npy", "--target", t], "--pred: no such file"),
        (["mse", "--pred", f"{d / 'pt.npz'}:nope", "--target", t], "has no member 'nope' (members: pred, target)"),
        (["mse", "--pred", p, "--target", d / "short.npy"], "length mismatch"),
        (["mse", "--pred", d / "c.npy", "--target", t], "unsupported dtype complex64"),
        (["hinge", "--pred", p, "--target", tmp_path / "labels.npy", "--chunk-size", 100],
         "value 3.0 at row 1500 is not in {-1, 0, 1}"),
        (["huber", "--pred", p, "--target", t, "--param", "delta=-1"], "delta must be in"),
        (["huber", "--pred", p, "--target", t, "--param", "delta=abc"], "delta must be of type float"),
        (["huber", "--pred", p, "--target", t, "--param", "nope=1"], "huber has no parameter 'nope'"),
        (["huber", "--pred", p, "--target", t, "--param", "delta"], "expected name=value"),
        (["mse", "--pred", p, "--target", t, "--per-sample", tmp_path / "x.csv"], "unsupported file type .csv"),
        (["mse", "--pred", p, "--target", t, "--per-sample", tmp_path / "no" / "x.npy"], "does not exist"),
        (["mse", "--pred", d / "p.txt", "--target", t], "no such file"),
        (["mse", "--pred", t, "--target", t, "--weight", d / "short.npy"], "length mismatch"),
        (["mse", "--pred", p, "--target", t, "--chunk-size", 0], "--chunk-size must be positive"),
        (["mse", "--pred", p, "--target", t, "--quantiles", "0.5,x"], "bad --quantiles"),
        (["mse", "--pred", p, "--target", t, "--input", "var=x.npy"], "bad --input"),
        (["mse", "--pred", p], "required: --target"),
    ]
    np.save(tmp_path / "bad.npy", np.zeros(3))
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    cases.append((["mse", "--pred", tmp_path / "bad.npy", "--target", t], "not a valid .npy"))
    if hasattr(fl, "cross_entropy"):
        np.save(tmp_path / "logits.npy", np.zeros((N, 4), np.float32))
        y = np.zeros(N, np.int64)
        y[1234] = 4
        np.save(tmp_path / "y.npy", y)
        cases.append((["cross_entropy", "--pred", tmp_path / "logits.npy", "--target", tmp_path / "y.npy",
                       "--chunk-size", 500], "label 4 at row 1234 is out of range [0, 4)"))
    for args, message in cases:
        rc, out, err = run_cli(capsys, *args)
        assert rc in (1, 2), (args, err)
        assert out == ""
        assert err.count("\n") == 1 and err.startswith("fastloss score: error: "), err
        assert message in err, (message, err)
    assert sorted(os.listdir(tmp_path)) == sorted(["labels.npy", "bad.npy"] + (
        ["logits.npy", "y.npy"] if hasattr(fl, "cross_entropy") else []))  # nothing written


def test_gaussian_nll_takes_its_variance_by_name(tmp_path, capsys):
    rng = np.random.default_rng(2)
    m, y, v = rng.normal(size=300), rng.normal(size=300), rng.random(300) + 0.1
    for name, a in (("m", m), ("y", y), ("v", v)):
        np.save(tmp_path / f"{name}.npy", a)
    rc, out, err = run_cli(capsys, "gaussian_nll", "--pred", tmp_path / "m.npy", "--target", tmp_path / "y.npy",
                           "--input", f"var={tmp_path / 'v.npy'}", "--param", "full=true", "--exact-quantiles")
    assert rc == 0, err
    assert json.loads(out) == summary_dict(score("gaussian_nll", m, y, v, full=True), "gaussian_nll", {"full": True})


@pytest.mark.parametrize("rich", [True, False])
def test_progress_line(data, capsys, monkeypatch, rich):
    if rich:
        pytest.importorskip("rich")
    else:
        monkeypatch.setitem(sys.modules, "rich", None)  # the plain stderr line
        monkeypatch.setitem(sys.modules, "rich.progress", None)
        monkeypatch.setitem(sys.modules, "rich.console", None)
    d, _, _, _ = data
    rc, _out, err = run_cli(capsys, "mse", "--pred", d / "p.npy", "--target", d / "t.npy", "--chunk-size", 100,
                           "--progress", "--summary", d / "prog.json", "--overwrite")
    assert rc == 0
    assert "rows/s" in err and f"{N:,}" in err


# -- whole-process behaviour: no traceback, Ctrl-C, bounded memory ------------------------------------

SLOW_MAIN = r"""
import sys, time
import fastloss.scoring as s
orig = s.ScoringJob.update
def slow(self, acc, lo, hi):
    time.sleep(0.02)
    return orig(self, acc, lo, hi)
s.ScoringJob.update = slow
from fastloss.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_leaves_no_partial_output(data, tmp_path, sig, code):
    d, _, _, _ = data
    cmd = [sys.executable, "-c", SLOW_MAIN, "score", "mse", "--pred", str(d / "p.npy"), "--target", str(d / "t.npy"),
           "--chunk-size", "10", "--per-sample", str(tmp_path / "ps.npy"), "--summary", str(tmp_path / "s.json")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(name.endswith(".tmp") for name in os.listdir(tmp_path)):  # writing has started
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        assert proc.poll() is None  # still running: 200 chunks take ~4 s
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert err.strip().splitlines() == ["fastloss score: interrupted; no output written"]
    assert os.listdir(tmp_path) == []


def test_subprocess_error_has_no_traceback(data):
    d, _, _, _ = data
    r = subprocess.run([sys.executable, "-m", "fastloss", "score", "mse", "--pred", str(d / "p.npy"), "--target",
                        str(d / "short.npy")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"fastloss score: error: length mismatch: --pred ({d / 'p.npy'}) has {N} rows, --target ({d / 'short.npy'}) "
        "has 10"
    ]


LIMITED_MAIN = r"""
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
if sys.argv[2] == "load":
    import numpy as np
    try:
        np.load(sys.argv[3], mmap_mode="r")
    except (MemoryError, OSError, ValueError) as exc:
        print("cannot map", type(exc).__name__)
        sys.exit(3)
    sys.exit(0)
from fastloss.__main__ import main
rc = main(sys.argv[2:])
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print("peak-rss-kib", hwm, file=sys.stderr)
sys.exit(rc)
"""


def _sparse_npy(path, dtype, shape) -> int:
    """An .npy file of zeros that takes no disk space (a hole); returns the data offset."""
    with open(path, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return offset


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_memory_is_bounded_by_the_chunk_not_the_file(tmp_path):
    """A 1.2 GiB prediction file scored under a 1 GiB address-space limit (the file cannot even be mapped)."""
    limit = 1 << 30
    rows, width = 5_000_000, 32  # float64: 1.28 GB
    pred = tmp_path / "pred.npy"
    offset = _sparse_npy(pred, np.float64, (rows, width))
    _sparse_npy(tmp_path / "target.npy", np.float64, (rows, 1))
    assert os.path.getsize(pred) > limit
    marks = {0: 1.0, 1_234_567: 2.0, rows - 1: 3.0}  # a few non-zero rows to check the output against
    with open(pred, "r+b") as f:
        for row, value in marks.items():
            f.seek(offset + row * width * 8)
            f.write(np.full(width, value).tobytes())

    control = subprocess.run([sys.executable, "-c", LIMITED_MAIN, str(limit), "load", str(pred)],
                             capture_output=True, text=True, timeout=120)
    assert control.returncode == 3, control.stdout + control.stderr  # the limit bites: mapping the file fails

    cmd = [sys.executable, "-c", LIMITED_MAIN, str(limit), "score", "mse", "--pred", str(pred), "--target",
           str(tmp_path / "target.npy"), "--per-sample", str(tmp_path / "ps.npy"),
           "--summary", str(tmp_path / "s.json")]  # exact quantiles: passes over the per-sample output
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    peak_kib = int(r.stderr.split("peak-rss-kib")[1].split()[0])
    assert peak_kib * 1024 < os.path.getsize(pred) / 3
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["rows"] == rows and s["count"] == rows and s["quantiles_exact"]
    assert s["quantiles"]["0.5"] == 0.0
    assert s["sum"] == 1.0 + 4.0 + 9.0 and s["max"] == 9.0 and s["min"] == 0.0
    ps = np.load(tmp_path / "ps.npy", mmap_mode="r")
    assert {row: float(ps[row]) for row in marks} == {row: v * v for row, v in marks.items()}
