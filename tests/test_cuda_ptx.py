"""The CUDA backend without a GPU: machine code for sm_90, dispatch, errors, and the simulator runs.

* Every CUDA kernel of every loss whose kind has a CUDA driver compiles to PTX for compute
  capability 9.0 (``numba.cuda.compile_ptx``: the simulator does not type-check) and assembles
  into sm_90 machine code (nvJitLink, what ptxas reports: registers, spills), for float32 and float64.
* ``tests/test_cuda.py`` (every loss on the simulator, compared with the CPU) and
  ``bench/gpu_check.py --simulate`` run in subprocesses with ``NUMBA_ENABLE_CUDASIM=1``, which must
  be set before ``numba.cuda`` is first imported, so that the default ``python -m pytest`` runs them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastloss as fl
from fastloss import kinds as _kinds
from fastloss.device import is_device_array
from fastloss.kinds import CUDA_MODULES as KIND_MODULES

ROOT = Path(__file__).resolve().parents[1]
SIMULATOR_ON = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

needs_numba_cuda = pytest.mark.skipif(
    __import__("importlib").util.find_spec("numba_cuda") is None,
    reason="numba-cuda is not installed (pip install 'numba-cuda[cu13]'; the test extra brings it)",
)
real_compiler = pytest.mark.skipif(SIMULATOR_ON, reason="PTX needs the real numba.cuda, not the simulator")

CUDA_LOSSES = [n for n in fl.names() if fl.get(n).spec.kind in KIND_MODULES]


def _simulator_env() -> dict:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")])
    return env


# -- the simulator runs (subprocesses) ------------------------------------------------------------------


@needs_numba_cuda
@pytest.mark.cudasim
@pytest.mark.skipif(SIMULATOR_ON, reason="the simulator is on in this process: test_cuda.py runs directly")
def test_simulator_suite():
    """Every CUDA kernel of every loss against the CPU, and bad input on CUDA arrays, on the simulator
    (tests/test_cuda.py, tests/test_cuda_bad_input.py)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_cuda.py"),
         str(ROOT / "tests" / "test_cuda_bad_input.py"), "-q", "-p", "no:cacheprovider",
         "-W", "ignore::RuntimeWarning"],
        cwd=ROOT, env=_simulator_env(), capture_output=True, text=True, timeout=1500,
    )
    tail = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    summary = re.search(r"(\d+) passed", proc.stdout)
    assert summary and int(summary.group(1)) > 40, tail
    assert "skipped" not in proc.stdout.splitlines()[-1], tail


@needs_numba_cuda
@pytest.mark.cudasim
@pytest.mark.skipif(SIMULATOR_ON and "numba.cuda" in sys.modules, reason="runs in its own process")
def test_gpu_check_runs_under_the_simulator(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--simulate", "--json", str(out)],
        cwd=ROOT, env=_simulator_env(), capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "CPU agreement" in proc.stdout and "cross_entropy" in proc.stdout
    import json

    report = json.loads(out.read_text())
    checked = {c["loss"] for c in report["checks"] if c["ok"]}
    assert checked == set(CUDA_LOSSES)
    assert {r["loss"] for r in report["benchmarks"]} == {"mse", "huber", "binary_cross_entropy", "cross_entropy",
                                                         "dice", "info_nce"}


# -- PTX for compute capability 9.0 ------------------------------------------------------------------------


@needs_numba_cuda
@real_compiler
def test_shared_kernels_compile_and_assemble_for_sm90():
    from fastloss.device import ptx

    kernels = ptx.shared_kernels()
    assert {"finalize", "sum_values", "grad_stats", "first_not_in", "first_outside", "check_labels",
            "sum_to", "clip_below"} <= set(kernels)
    for name, code in kernels.items():
        assert ".target sm_90" in code, name
        assert not re.search(r"atom\.[a-z.]*\.f(32|64)", code), f"{name} uses float atomics"
        info = ptx.assemble(code)
        assert info["cubin_bytes"] > 0 and info["spill_bytes"] == 0, (name, info["log"])


@needs_numba_cuda
@real_compiler
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", CUDA_LOSSES)
def test_every_loss_compiles_to_ptx_for_sm90(name, dtype):
    from fastloss.device import config, ptx

    # class labels as int64 with float64 logits, as int32 (PyTorch's and CuPy's other common choice) with float32
    kernels = _kinds.loss_ptx(fl.get(name), dtype, labels=np.int64 if dtype == "float64" else np.int32)
    assert kernels
    if fl.get(name).spec.kind == "pointwise":
        assert "pointwise_hess" in kernels, "every pointwise loss declares a Hessian"
    for kname, code in kernels.items():
        assert ".target sm_90" in code and ".entry" in code
        # reductions go through per-block partials and an ordered final pass: no float atomics
        assert not re.search(r"atom\.[a-z.]*\.f(32|64)", code), f"{kname} uses float atomics"
        # 64-bit element indices (arrays over 2**31 elements)
        assert re.search(r"setp\.(lt|ge|gt|le)\.[us]64", code), kname
        info = ptx.assemble(code)
        assert info["cubin_bytes"] > 0, info["log"]
        if kname.startswith("pointwise"):  # the loss kernel and its Hessian variant
            assert info["spill_bytes"] == 0 and info["local_bytes"] == 0, info["log"]
        else:  # row kernels are compiled for ROW_SM_THREADS resident threads per SM
            assert info["registers"] <= 65536 // config.ROW_SM_THREADS, info["log"]


@needs_numba_cuda
@real_compiler
@pytest.mark.parametrize("name", ["mse", "binary_cross_entropy", "cross_entropy", "dice", "info_nce"])
def test_float16_kernels_compile_for_sm90(name):
    from fastloss.device import ptx

    for code in _kinds.loss_ptx(fl.get(name), "float16").values():
        assert ptx.assemble(code)["cubin_bytes"] > 0


@needs_numba_cuda
@real_compiler
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_array_parameter_kernels_compile_for_sm90(dtype):
    """binary_cross_entropy's kernel with pos_weight as an input (an array pos_weight)."""
    from fastloss._api import Loss
    from fastloss.device import ptx

    variant = Loss(fl.binary_cross_entropy.spec.array_variant(["pos_weight"]))
    for code in _kinds.loss_ptx(variant, dtype).values():
        assert ptx.assemble(code)["cubin_bytes"] > 0


@needs_numba_cuda
@real_compiler
def test_discrete_check_compiles_for_float16_labels():
    """The device-side label check reads float16 labels (hinge targets stored as float16)."""
    from numba import cuda
    from numba.cuda import types

    from fastloss.device import kernels, ptx

    tk = kernels.Toolkit(256)
    fn = tk.bind(kernels.first_not_in)
    sig = (types.uint64, types.Array(types.float16, 1, "C"), types.UniTuple(types.float64, 3),
           types.Array(types.int64, 1, "C"))
    with ptx.target(ptx.DEFAULT_CC):
        code = cuda.compile_ptx(fn, sig, cc=ptx.DEFAULT_CC)[0]
    assert ".entry" in code


# -- dispatch and errors, no GPU needed ----------------------------------------------------------------------


class FakeCudaArray:
    """Something that says it lives on a CUDA device."""

    def __init__(self, shape=(3,)):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f8", "data": (0, False), "version": 3}


def test_device_arrays_are_recognised_without_importing_numba_cuda():
    assert is_device_array(FakeCudaArray())
    assert not is_device_array(np.ones(3))
    assert not is_device_array(1.5)
    assert not is_device_array(None)
    assert not is_device_array([1.0, 2.0])
    torch = pytest.importorskip("torch")
    assert not is_device_array(torch.ones(3))
    assert not is_device_array(torch.ones(3, requires_grad=True))


def test_host_calls_never_import_numba_cuda():
    code = (
        "import sys, numpy as np, fastloss as fl\n"
        "fl.mse.value_and_grad(np.ones(3), np.zeros(3))\n"
        "fl.cross_entropy.value_and_grad(np.ones((2, 3)), np.array([0, 2]))\n"
        "assert not [m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda'))], 'numba.cuda imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=300)


def test_every_kind_has_a_cuda_implementation():
    """Every kind's losses (and losses declared later) run on CUDA arrays: a CUDA module per kind."""
    assert set(KIND_MODULES) == set(_kinds.KINDS)
    assert set(CUDA_LOSSES) == set(fl.names())


@needs_numba_cuda
@real_compiler
def test_rowreduce_kernels_cover_the_declared_stages():
    """One generated driver for the kind: the split kernels only where rows can be long, the
    kernel variants of the default parameters too, and the row check compiled where declared."""

    assert set(_kinds.loss_ptx(fl.giou, "float32")) == {"rowreduce_fused"}
    names = set(_kinds.loss_ptx(fl.triplet_margin, "float64"))
    assert {"rowreduce_fused", "rowreduce_piece_sums", "rowreduce_piece_rows", "rowreduce_piece_grads",
            "rowreduce_fused_variant"} <= names
    code = _kinds.loss_ptx(fl.giou, "float64")["rowreduce_fused"]
    assert re.search(r"atom\.global\.min\.s64", code)  # the row check's first failing row: an integer atomic


def test_select_kind_keeps_the_host_kind_for_numpy():
    kind = _kinds.KINDS["pointwise"]
    assert _kinds.select_kind(kind, fl.mse.spec, [np.ones(3), np.zeros(3)], None, None) is kind
    assert _kinds.select_kind(kind, fl.mse.spec, [np.ones(3), 0.5], np.ones(3), (np.empty(3),)) is kind


@needs_numba_cuda
@pytest.mark.skipif(SIMULATOR_ON, reason="the simulator always has a 'GPU'")
def test_cuda_input_without_a_gpu_raises_a_clear_error():
    if fl.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA is not usable in this process"):
        fl.mse(FakeCudaArray(), FakeCudaArray())


def test_cuda_input_without_numba_cuda_raises_import_error(monkeypatch):
    from fastloss.device import arrays as device

    monkeypatch.setattr(device, "numba_cuda_installed", lambda: False)
    monkeypatch.setattr(device, "_cuda", None)
    monkeypatch.setattr(_kinds, "CUDA_KINDS", {})
    with pytest.raises(ImportError, match=r"pip install \"fastloss\[cuda\]\""):
        fl.mse(FakeCudaArray(), FakeCudaArray())
    assert not fl.cuda_available()


def test_kinds_without_a_cuda_driver_say_so(monkeypatch):
    from fastloss.device import arrays as device
    from fastloss.kinds import cuda_kind as kind_for

    monkeypatch.setattr(device, "load", lambda: None)
    with pytest.raises(NotImplementedError, match="'nokind' kind have no CUDA implementation"):
        kind_for("nokind")


# -- reading rowwise kernels ----------------------------------------------------------------------------


@needs_numba_cuda
@real_compiler
def test_rowwise_kernels_run_block_cooperative_unless_they_store_themselves():
    from fastloss.kinds.softmax import cuda as rowwise

    modes = {name: rowwise.analyse(fl.get(name).spec.kernel, name) for name in fl.names("rowwise")}
    assert modes["cross_entropy"] == "block" and modes["kl_divergence"] == "block"
    assert modes["multiclass_hinge"] == "thread"  # writes g[j] in its own loops


@needs_numba_cuda
@real_compiler
def test_rowwise_kernels_allocating_class_sized_scratch_are_refused():
    from fastloss.kinds.softmax import cuda as rowwise

    def kernel(x, y, t, w, g, scale, loss):
        buf = np.empty(x.shape[1])
        for r in range(x.shape[0]):
            loss[r] = buf[0]

    with pytest.raises(rowwise.KernelSourceError, match=r"np.empty\(x.shape\[1\]\)"):
        rowwise.analyse(kernel, "toy")


def test_row_threads_and_launch_bounds():
    pytest.importorskip("numba_cuda")
    if SIMULATOR_ON:
        pytest.skip("module imported with the simulator's numba.cuda elsewhere")
    from fastloss.device import config
    from fastloss.kinds.softmax import cuda as rowwise

    assert rowwise.row_threads(10) == 32
    assert rowwise.row_threads(128256) == config.ROW_THREADS
    assert all(rowwise.row_threads(n) & (rowwise.row_threads(n) - 1) == 0 for n in (1, 100, 5000, 10**6))
    threads, blocks = rowwise.launch_bounds(256)
    assert threads * blocks == config.ROW_SM_THREADS
