"""The documentation: its examples run, every public symbol is documented, the site builds strictly.

* Every ```` ```python ```` block of ``docs/**/*.md`` runs, the blocks of a page in order in one
  namespace (as a reader would run them). A block preceded by ``<!-- no-run: REASON -->`` is
  skipped; that is allowed only for snippets that need a GPU or a cluster, and REASON must say so.
* Every doctest in the docstrings of the public API runs (the losses' declared examples are run by
  ``tests/test_docs_examples.py``).
* :func:`docsgen.apiref.undocumented` finds no public module or symbol without a docstring, and it
  does find them in a package made to have some.
* The generated catalogue covers the registry; the navigation tolerates pages that are not written yet.
* ``mkdocs build --strict`` succeeds (needs the ``docs`` extra, which the ``test`` extra includes).
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastloss as fl

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "tools"))

from docsgen import apiref, catalogue, generated, plots, site  # noqa: E402

#: Optional packages a docs example may need: without them the page is skipped, not failed.
OPTIONAL = {"torch", "jax", "jaxlib", "dask", "distributed", "pyarrow", "cupy", "rich", "matplotlib", "xgboost",
            "lightgbm", "sklearn"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                    re.M | re.S)
_NO_RUN = re.compile(r"<!--\s*no-run(?::\s*(?P<reason>.*?))?\s*-->\s*$")


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, no_run_reason)`` of each python block; the reason is None for blocks that run."""
    blocks = []
    for m in _FENCE.finditer(text):
        if m.group("lang") != "python":
            continue
        before = text[: m.start()].rstrip("\n ").rsplit("\n", 1)[-1]
        marker = _NO_RUN.search(before)
        reason = (marker.group("reason") or "") if marker else None
        indent = m.group("indent")
        code = "".join(line[len(indent):] if line.startswith(indent) else line
                       for line in m.group("body").splitlines(keepends=True))
        blocks.append((text.count("\n", 0, m.start()) + 2, code, reason))
    return blocks


def _pages_with_code() -> list[Path]:
    # not the committed copies of generated pages: their python blocks are signatures, and each loss's
    # example runs in tests/test_docs_examples.py
    return sorted(p for p in DOCS.rglob("*.md") if not generated.is_generated(p) and python_blocks(p.read_text()))


def test_block_extraction():
    text = (
        "intro\n```python\na = 1\n```\n\n<!-- no-run: needs a CUDA GPU -->\n```python\nb = 2\n```\n"
        "- item\n\n  ```python\n  c = 3\n  ```\n```bash\nls\n```\n"
    )
    blocks = python_blocks(text)
    assert [(code, reason) for _, code, reason in blocks] == [
        ("a = 1\n", None), ("b = 2\n", "needs a CUDA GPU"), ("c = 3\n", None)
    ]
    assert blocks[0][0] == 3


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: str(p.relative_to(DOCS)))
def test_docs_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    skipped = []
    for line, code, reason in python_blocks(page.read_text()):
        if reason is not None:
            assert re.search(r"gpu|cuda|cluster", reason, re.I), (
                f"{page.name}:{line}: <!-- no-run --> is only for GPU- or cluster-only snippets, "
                f"and must say so (got {reason!r})"
            )
            skipped.append(line)
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(code, f"{page}:{line}", "exec"), namespace)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in OPTIONAL:
                pytest.skip(f"{page.name}:{line} needs {exc.name}")
            raise
    if skipped:
        print(f"{page.name}: not run (GPU/cluster only) at lines {skipped}")


def _public_modules() -> list[str]:
    """``fastloss`` and its public top-level modules (found without importing them)."""
    found = [m.name for m in pkgutil.iter_modules(fl.__path__)]
    return ["fastloss", *(f"fastloss.{n}" for n in sorted(found) if not n.startswith("_") and n not in apiref.NOT_API)]


@pytest.mark.parametrize("module", _public_modules())
def test_docstring_examples_run(module):
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in OPTIONAL:
            pytest.skip(f"{module} needs {exc.name}")
        raise
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    ran = []
    for name in getattr(mod, "__all__", ()):
        if module == "fastloss" and name in fl.REGISTRY:
            continue  # declaration examples: tests/test_docs_examples.py
        for t in finder.find(getattr(mod, name), f"{module}.{name}", globs={}):
            if t.examples:
                runner.run(t)
                ran.append(t.name)
    assert runner.failures == 0, f"{module}: {runner.failures} doctest failure(s) in {ran}"


# -- every public symbol documented ---------------------------------------------------------------


def test_every_public_symbol_is_documented():
    pytest.importorskip("griffe")
    problems = apiref.undocumented(apiref.load(ROOT), {f"fastloss.{n}" for n in fl.REGISTRY})
    assert not problems, "undocumented public API:\n" + "\n".join(problems)


def test_undocumented_symbols_are_found(tmp_path):
    pytest.importorskip("griffe")
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        '"""A toy package."""\n'
        "from ._impl import Thing, documented, bare\n"
        "__all__ = ['Thing', 'documented', 'bare', 'ghost', 'register_me']\n"
        "register_me = object()\n"
    )
    (pkg / "_impl.py").write_text(
        "def documented():\n    '''Has one.'''\n\n"
        "def bare():\n    pass\n\n"
        "class Thing:\n    '''A class.'''\n\n"
        "    def method(self):\n        pass\n\n"
        "    def _private(self):\n        pass\n\n"
        "    def __call__(self):\n        pass\n"
    )
    (pkg / "public.py").write_text("def f():\n    pass\n")  # a public module without a docstring
    problems = apiref.undocumented(apiref.load(tmp_path, "toypkg"), {"toypkg.register_me"})
    assert sorted(problems) == sorted([
        "toypkg._impl.bare: no docstring",
        "toypkg._impl.Thing.method: no docstring",
        "toypkg._impl.Thing.__call__: no docstring",
        "toypkg.ghost: listed in __all__ but not defined",
        "toypkg.public: module has no docstring",
        "toypkg.public.f: no docstring",
    ])


# -- the generated catalogue ----------------------------------------------------------------------


@pytest.mark.parametrize("name", fl.names())
def test_catalogue_page_shows_the_declaration(name):
    loss = fl.get(name)
    spec = loss.spec
    for field in ("summary", "formula", "gradient", "reference"):
        assert getattr(spec, field).strip(), f"{name}: the declaration has no {field} for the catalogue"
    assert spec.properties is not None, f"{name}: the declaration has no catalogue properties"
    page = catalogue.loss_page(loss, "plot.png")
    assert page.startswith(f"# `{name}`")
    for text in (spec.formula, spec.gradient, spec.hessian_formula):
        assert text.strip() in page
    for p in loss._params:
        assert f"| `{p.name}` |" in page and repr(p.default) in page
    for inp in spec.inputs:
        assert f"| `{inp.name}` |" in page
    for field, _ in catalogue.PROPERTIES:
        assert catalogue.cell(getattr(spec.properties, field)) in page
    for library in spec.equivalents:
        assert f"| {library} |" in page
    assert catalogue.md_inline(spec.reference) in page
    assert "![" in page and "(plot.png)" in page
    prose = re.sub(r"\$\$.*?\$\$", "", page, flags=re.S).replace("```", "")  # LaTeX may use `` quotes
    assert "``" not in prose  # reST literals converted


def test_comparison_table_has_one_row_per_loss():
    table = catalogue.comparison_table()
    rows = [r for r in table.splitlines()[2:] if r.startswith("| [")]
    assert [re.match(r"\| \[`(\w+)`\]", r).group(1) for r in rows] == fl.names()
    width = table.splitlines()[0].count("|")
    cells = [re.sub(r"`[^`]*`", "", r) for r in rows]  # pipes inside code spans do not split cells
    assert all(c.count("|") - c.count(r"\|") == width for c in cells)


def test_devices_follow_the_cuda_backend(monkeypatch):
    from fastloss import kinds as _cuda

    loss = fl.get(fl.names("pointwise")[0])
    monkeypatch.setitem(_cuda.CUDA_MODULES, "pointwise", "fastloss.kinds.pointwise.cuda")
    assert catalogue.devices(loss) == ("CPU", "CUDA")
    monkeypatch.setitem(_cuda.CUDA_MODULES, "pointwise", "fastloss.device.no_such_module")
    assert catalogue.devices(loss) == ("CPU",)
    monkeypatch.delitem(_cuda.CUDA_MODULES, "pointwise")
    assert catalogue.devices(loss) == ("CPU",)


def test_numpydoc_entries():
    doc = fl.huber.value_and_grad.__doc__
    params = catalogue.numpydoc_entries(doc, "Parameters")
    assert [p[0] for p in params][:3] == ["pred", "target", "delta"]
    assert {"weight", "reduction", "out", "stats"} <= {p[0] for p in params}
    returns = catalogue.numpydoc_entries(doc, "Returns")
    assert [r[0] for r in returns] == ["loss", "grad"]
    assert catalogue.numpydoc_entries(doc, "Nonexistent") == []


def test_md_inline():
    assert catalogue.md_inline("see :func:`~fastloss.combine` and ``x``") == "see `combine` and `x`"
    assert catalogue.md_inline(":class:`fastloss.Loss`") == "`fastloss.Loss`"


@pytest.mark.parametrize("name", [n for n in fl.names() if fl.get(n).spec.kind in plots.RECIPES])
def test_plot_shows_the_loss_and_its_gradient(name):
    loss = fl.get(name)
    c = plots.curves(loss)
    assert c is not None, f"{name}: its kind has a plot recipe, but the recipe gave no plot"
    assert c.series
    for _, value, grad in c.series:
        assert value.shape == grad.shape == c.x.shape
        assert np.isfinite(value).all() and np.isfinite(grad).all()
        # the plotted gradient is the derivative of the plotted loss (where the loss is smooth)
        numeric = np.gradient(value, c.x)
        close = np.isclose(numeric, grad, rtol=1e-2, atol=1e-2 * max(1.0, np.abs(grad).max()))
        assert close.mean() > 0.95, f"{name}: plotted gradient does not match the plotted loss"


def test_plot_png():
    pytest.importorskip("matplotlib")
    png = plots.render(fl.get(fl.names()[0]))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


# -- navigation of a site whose pages land at different times ---------------------------------------


def test_nav_drops_missing_pages_and_keeps_the_rest():
    nav = [
        {"Home": "index.md"},
        {"Guides": [{"GPU": "gpu.md"}, {"Perf": "performance.md"}]},
        {"Later": [{"A": "a.md"}]},
        {"Catalogue": "losses/index.md"},
        {"External": "https://example.org/"},
    ]
    nav = site.expand(nav, {"losses/index.md": [{"Overview": "losses/index.md"}, {"mse": "losses/mse.md"}]})
    pruned, missing = site.prune(nav, {"index.md", "performance.md", "losses/index.md", "losses/mse.md"})
    assert missing == ["gpu.md", "a.md"]
    assert pruned == [
        {"Home": "index.md"},
        {"Guides": [{"Perf": "performance.md"}]},
        {"Catalogue": [{"Overview": "losses/index.md"}, {"mse": "losses/mse.md"}]},
        {"External": "https://example.org/"},
    ]
    extended = site.add_unlisted(pruned, {"new-guide.md"})
    assert extended[1] == {"Guides": [{"Perf": "performance.md"}, "new-guide.md"]}


def test_links_to_missing_pages_become_text():
    md = "See [the GPU guide](../gpu.md#setup), [perf](../performance.md) and ![img](../gpu.md)."
    out, dropped = site.unlink_missing(md, "guides/page.md", {"gpu.md"})
    assert out == "See the GPU guide, [perf](../performance.md) and ![img](../gpu.md)."
    assert dropped == ["gpu.md"]


def test_placeholders():
    out = site.fill_placeholders("a\n<!-- catalogue: x -->\nb", "guides/g.md", {"x": lambda link: link("mse")})
    assert out == "a\n../losses/mse.md\nb"
    with pytest.raises(KeyError, match="unknown placeholder"):
        site.fill_placeholders("<!-- catalogue: nope -->", "g.md", {})


def test_rest_tidied_in_rendered_docstrings():
    html = "<p>see :func:<code>~fastloss.combine</code> and :class:<code>Loss</code>, e.g.::</p>"
    assert site.tidy_rst(html) == "<p>see <code>combine</code> and <code>Loss</code>, e.g.:</p>"


# -- the site ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "matplotlib"):
        pytest.importorskip(module)
    out = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's end-of-life banner
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-8000:]}"
    for name in fl.names():
        page = out / "losses" / name / "index.html"
        assert page.is_file(), f"no catalogue page for {name}"
        if fl.get(name).spec.kind in plots.RECIPES:
            assert (out / "img" / "losses" / f"{name}.png").is_file(), f"no plot for {name}"
    overview = (out / "losses" / "index.html").read_text()
    assert all(f"<code>{name}</code>" in overview for name in fl.names())
    api = (out / "api" / "fastloss" / "index.html").read_text()
    assert "combine" in api and "check_grad" in api
