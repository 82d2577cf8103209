"""Messages a newcomer meets first: an optional framework that is missing, a tensor that needs autograd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("module", "extra"), [("jax", "jax"), ("torch", "torch")])
def test_an_adapter_without_its_framework_says_which_extra_to_install(module, extra):
    code = f"import sys; sys.modules[{module!r}] = None\nimport fastloss.{module}"  # None: as if not installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastloss.") and f'pip install "fastloss[{extra}]"' in last, res.stderr


def test_a_tensor_that_requires_grad_points_to_fastloss_torch():
    torch = pytest.importorskip("torch")
    import fastloss as fl

    pred = torch.zeros(5, requires_grad=True)
    with pytest.raises(TypeError, match=r"fastloss\.torch"):
        fl.mse(pred, np.zeros(5))


def test_help_of_a_loss_names_grad_value_and_grad_and_out():
    import pydoc

    import fastloss as fl

    for loss in (fl.huber, fl.cross_entropy):
        text = pydoc.render_doc(loss, renderer=pydoc.plaintext)
        for needle in (f"{loss.spec.name}.grad(", f"{loss.spec.name}.value_and_grad(", "out=", "in-place"):
            assert needle in text, (loss.spec.name, needle)


def test_the_benchmark_report_explains_no_bandwidth_over_100_and_the_spread():
    import fastloss as fl
    from fastloss.bench import report, run

    bench = run(losses=["mse"], sizes=["1e3"], peers=["none"], repeats=3, max_time=0.05, quick=True,
                coldstart_losses=[], progress=False)
    text = report.format_text(bench)
    md = report.format_markdown(bench)
    buf = __import__("io").StringIO()
    report.print_report(bench, file=buf)
    for out in (text, md, buf.getvalue()):
        flat = " ".join(out.split())
        assert "met = NO" in flat and "Above 100%" in flat and "p10-p90: half the spread" in flat, out
    assert fl.__version__
