"""``docs/`` read as files (GitHub, an editor) as well as built: links resolve, generated copies are current.

The catalogue, plots and API pages are generated at build time and also committed
(``tools/docsgen/generated.py``); these tests fail when the committed copy falls behind the code. Fix:
``python tools/docsgen/generated.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "tools"))

from docsgen import generated, site  # noqa: E402

import fastloss as fl  # noqa: E402

_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")


def test_committed_generated_pages_are_current():
    pytest.importorskip("griffe")
    from docsgen import apiref

    modules = apiref.public_modules(apiref.load(ROOT))
    behind = [str(p.relative_to(ROOT)) for p, text in generated.expected(modules).items()
              if not p.exists() or p.read_text(encoding="utf-8") != text]
    assert not behind, f"run `python tools/docsgen/generated.py`; out of date: {behind}"
    assert not generated.stale(modules), "run `python tools/docsgen/generated.py` (pages of removed losses)"


def test_every_loss_has_a_committed_page_and_plot():
    for name, loss in fl.REGISTRY.items():
        assert (DOCS / generated.loss_uri(name)).is_file(), name
        if generated.has_plot(loss):
            assert (DOCS / generated.image_uri(name)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_relative_links_resolve_in_the_repository(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # links in code are not links
    dead = []
    for target in _LINK.findall(text):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            dead.append(target)
    assert not dead, f"{page.relative_to(ROOT)}: dead links {dead}"


def test_guides_show_the_generated_lists_not_a_placeholder():
    for page in DOCS.glob("*.md"):
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("<!-- catalogue:"):  # every placeholder is a region with its content committed
                key = line.split(":", 1)[1].strip(" ->")
                assert f"<!-- /catalogue: {key} -->" in page.read_text(encoding="utf-8"), page
    choosing = (DOCS / "choosing.md").read_text(encoding="utf-8")
    assert "[`huber`](losses/huber.md)" in choosing


def test_placeholder_regions_are_refilled_and_keep_their_markers():
    blocks = {"x": lambda link: link("mse")}
    text = "a\n<!-- catalogue: x -->\nold\n<!-- /catalogue: x -->\nb"
    out = site.fill_placeholders(text, "choosing.md", blocks)
    assert out == "a\n<!-- catalogue: x -->\nlosses/mse.md\n<!-- /catalogue: x -->\nb"
    assert site.fill_placeholders(out, "choosing.md", blocks) == out
    quoted = "the list (`<!-- catalogue: x -->`) is generated"
    assert site.fill_placeholders(quoted, "a.md", blocks) == quoted


def test_formulas_render_without_a_cdn():
    pytest.importorskip("latex2mathml")
    config = (ROOT / "mkdocs.yml").read_text()
    assert not re.search(r"^\s*-\s*https?://", config, re.M) and "mathjax" not in config.lower()  # no remote script
    html = ('<p><span class="arithmatex">\\(x &lt; \\tfrac12\\)</span></p>'
            '<div class="arithmatex">\\[\n\\ell = \\begin{cases} a & b \\\\ c & d \\end{cases}\n\\]</div>')
    out = site.render_math(html)
    assert "arithmatex\">\\" not in out and out.count("<math") == 2 and 'display="block"' in out
    assert "<mo>&#x0003C;</mo>" in out or "<mo>&lt;</mo>" in out
    for loss in fl.REGISTRY.values():  # every declared formula converts
        for tex in (loss.spec.formula, loss.spec.gradient):
            site.render_math(f'<div class="arithmatex">\\[{tex}\\]</div>')


def test_install_instructions_work_from_the_source_tree():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    assert 'python -m pip install ".[cuda]"' in index and "not published" in index
    for page in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            for line in block.splitlines():
                assert not re.match(r"\s*pip install \"?fastloss\b", line), (page.name, line)
