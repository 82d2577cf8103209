"""The on-disk kernel cache: a private per-user directory, never the package, and faults that only cost a compile.

Every case runs in a fresh process (the cache's locator is chosen when a kernel is first created) with its own
``NUMBA_CACHE_DIR`` or ``XDG_CACHE_HOME``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastloss"

PROBE = """
import json, warnings
{prelude}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import numpy as np, fastloss as fl
    v, g = fl.huber.value_and_grad(np.linspace(-2, 3, 1000), 0.0)
drv = fl.kinds.KINDS["pointwise"].driver(fl.huber.spec)
print(json.dumps({{"value": float(v), "grad": float(g.sum()), "hits": sum(drv.stats.cache_hits.values()),
    "misses": sum(drv.stats.cache_misses.values()),
    "warned": [str(w.message) for w in caught if "fastloss" in str(w.message)]}}))
"""

WANT = None


def probe(env_extra: dict, prelude: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    code = textwrap.dedent(PROBE.format(prelude=textwrap.dedent(prelude)))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def want() -> tuple[float, float]:
    import numpy as np

    import fastloss as fl

    v, g = fl.huber.value_and_grad(np.linspace(-2, 3, 1000), 0.0)
    return float(v), float(g.sum())


def package_cache_files() -> set[Path]:
    return {p for p in PACKAGE.rglob("*") if p.suffix in (".nbi", ".nbc")}


def test_default_cache_is_a_private_per_user_directory_outside_the_package(tmp_path):
    before = package_cache_files()
    xdg = tmp_path / "xdg"
    first = probe({"XDG_CACHE_HOME": str(xdg)})
    second = probe({"XDG_CACHE_HOME": str(xdg)})
    import fastloss

    root = xdg / "fastloss" / fastloss.__version__
    assert any(root.rglob("*.nbi")) and any(root.rglob("*.nbc"))
    for d in [xdg / "fastloss", root, *[p for p in root.iterdir() if p.is_dir()]]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert package_cache_files() == before  # nothing written into the package
    assert first["misses"] >= 1 and second["hits"] >= 1 and second["misses"] == 0
    assert (first["value"], first["grad"]) == (second["value"], second["grad"]) == want()
    assert first["warned"] == second["warned"] == []


def test_numba_cache_dir_wins(tmp_path):
    xdg, ncd = tmp_path / "xdg", tmp_path / "ncd"
    probe({"XDG_CACHE_HOME": str(xdg), "NUMBA_CACHE_DIR": str(ncd)})
    assert any(ncd.rglob("*.nbi"))
    assert not (xdg / "fastloss").exists()


def test_cache_cli_reports_and_clears_only_fastloss_kernels(tmp_path):
    ncd = tmp_path / "ncd"
    probe({"NUMBA_CACHE_DIR": str(ncd)})
    other = ncd / "someone_else"
    other.mkdir()
    (other / "f.nbi").write_bytes(b"x")
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    env.update(NUMBA_CACHE_DIR=str(ncd), PYTHONPATH=str(ROOT))
    run = lambda action: subprocess.run([sys.executable, "-m", "fastloss", "cache", action], capture_output=True,
                                        text=True, env=env, timeout=120, cwd=tmp_path)
    info = run("info")
    assert info.returncode == 0, info.stderr
    assert str(ncd) in info.stdout
    files = int(info.stdout.split("files:")[1].split()[0])
    assert files == sum(1 for p in ncd.rglob("*") if p.is_file() and p.parent != other) > 0
    cleared = run("clear")
    assert cleared.returncode == 0, cleared.stderr
    assert f"removed {files} files" in cleared.stdout
    assert [p for p in ncd.rglob("*") if p.is_file()] == [other / "f.nbi"]  # another program's cache stays
    assert "files: 0" in run("info").stdout


def corrupt(kind: str, root: Path) -> None:
    ext = ".nbi" if kind.startswith("nbi") else ".nbc"
    paths = sorted(root.rglob(f"*{ext}"))
    assert paths
    for p in paths:
        data = p.read_bytes()
        if kind.endswith("empty"):
            p.write_bytes(b"")
        elif kind.endswith("truncated"):
            p.write_bytes(data[: len(data) // 2])
        else:  # garbled: keep the head (Numba's version check passes) and overwrite the rest
            p.write_bytes(data[:40] + bytes(range(256)) * 4)


@pytest.mark.parametrize("kind", ["nbi-empty", "nbi-truncated", "nbi-garbled", "nbc-truncated", "nbc-garbled"])
def test_damaged_cache_files_are_compiled_again_and_rewritten(tmp_path, kind):
    ncd = tmp_path / "ncd"
    probe({"NUMBA_CACHE_DIR": str(ncd)})
    corrupt(kind, ncd)
    hurt = probe({"NUMBA_CACHE_DIR": str(ncd)})
    assert (hurt["value"], hurt["grad"]) == want()
    assert len(hurt["warned"]) == 1 and "could not be read" in hurt["warned"][0], hurt
    healed = probe({"NUMBA_CACHE_DIR": str(ncd)})
    assert healed["hits"] >= 1 and healed["misses"] == 0 and healed["warned"] == []


def test_a_full_disk_keeps_kernels_in_memory_with_one_warning(tmp_path):
    ncd = tmp_path / "ncd"
    full = """
    import contextlib, errno, os
    from numba.core import caching

    @contextlib.contextmanager
    def no_space(self, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        yield

    caching.IndexDataCacheFile._open_for_write = no_space
    """
    res = probe({"NUMBA_CACHE_DIR": str(ncd)}, full)
    assert (res["value"], res["grad"]) == want()
    assert len(res["warned"]) == 1 and "cannot be written" in res["warned"][0]
    assert "No space left" in res["warned"][0]
    assert not any(ncd.rglob("*.nbi"))


READ_ONLY = """
import errno, tempfile
def refuse(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")
tempfile.TemporaryFile = refuse  # a read-only directory (the tests may run as root, who can write anywhere)
"""


@pytest.mark.parametrize("case", ["file", "under-a-file", "read-only", "world-writable", "group-writable"])
def test_an_unusable_or_shared_cache_dir_compiles_in_memory_and_never_uses_the_package(tmp_path, case):
    before = package_cache_files()
    ncd, prelude = tmp_path / "ncd", ""
    if case == "file":
        ncd.write_text("not a directory")
    elif case == "under-a-file":
        (tmp_path / "f").write_text("not a directory")
        ncd = tmp_path / "f" / "cache"
    elif case == "read-only":
        prelude = READ_ONLY
    else:
        ncd.mkdir()
        ncd.chmod(0o777 if case == "world-writable" else 0o770)
    res = probe({"NUMBA_CACHE_DIR": str(ncd)}, prelude)
    assert (res["value"], res["grad"]) == want()
    assert len(res["warned"]) == 1 and "compiling kernels in memory" in res["warned"][0], res
    if case.endswith("writable"):
        assert "other users" in res["warned"][0]
        assert not any(ncd.rglob("*.nb*"))
    assert package_cache_files() == before
