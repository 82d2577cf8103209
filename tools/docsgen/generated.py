"""The generated pages, also committed under ``docs/`` so that the repository reads like the site.

The catalogue, its plots and the API reference are generated from the code; the guides link to them.
Were they only generated at build time, those links would be dead wherever ``docs/`` is read as files
(GitHub, an editor) and ``choosing.md`` would show a bare placeholder. So the same generators also write
a copy into ``docs/`` (each text page starts with :data:`MARKER`) and fill the ``<!-- catalogue: NAME -->
... <!-- /catalogue: NAME -->`` regions of the guides. The build still regenerates all of it (``hooks.py``
replaces every committed copy), so the site never depends on the copy being current;
``tests/test_docs_repository.py`` checks that it is. After changing a loss declaration or a public
module's exports, run::

    python tools/docsgen/generated.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))

import fastloss  # noqa: E402
from docsgen import apiref, catalogue, plots, site  # noqa: E402

DOCS = ROOT / "docs"
CATALOGUE = "losses/index.md"
API = "api/index.md"
MARKER = "<!-- generated from the code by tools/docsgen/generated.py: edit the code and rerun it, not this file -->"
#: What fills the ``<!-- catalogue: NAME -->`` placeholders and regions of the hand-written pages.
BLOCKS = {
    "by-problem": catalogue.by_problem,
    "comparison": lambda link: catalogue.comparison_table(link=link),
}


def loss_uri(name: str) -> str:
    return f"losses/{name}.md"


def image_uri(name: str) -> str:
    return f"img/losses/{name}.png"


def has_plot(loss) -> bool:
    """Whether the loss's page shows a plot (its kind has a recipe): decided without matplotlib."""
    return plots.curves(loss) is not None


def text_pages(modules: list) -> dict[str, str]:
    """``{uri: Markdown}`` of the catalogue and the API reference, each page starting with :data:`MARKER`."""
    losses = fastloss.REGISTRY
    pages = {CATALOGUE: catalogue.overview_page()}
    for name, loss in losses.items():
        pages[loss_uri(name)] = catalogue.loss_page(loss, f"../{image_uri(name)}" if has_plot(loss) else None)
    pages[API] = apiref.index_page(modules)
    for module in modules:
        names = {n: f"../{loss_uri(n)}" for n in apiref.exports(module)
                 if module.path == apiref.PACKAGE and n in losses}
        pages[apiref.page_uri(module)] = apiref.module_page(module, names)
    return {uri: f"{MARKER}\n\n{text}" for uri, text in pages.items()}


def is_generated(path: Path) -> bool:
    """Whether a file under ``docs/`` is a generated copy (a hand-written page of the same name wins)."""
    if path.suffix == ".png":
        return path.parent == DOCS / "img" / "losses"
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\n") == MARKER
    except (OSError, UnicodeDecodeError):
        return False


def fill(markdown: str, page: str) -> str:
    """A hand-written page with its catalogue placeholders and regions filled."""
    return site.fill_placeholders(markdown, page, BLOCKS)


def expected(modules: list) -> dict[Path, str]:
    """Every committed text file as the generators would write it now (generated pages and filled guides)."""
    out = {DOCS / uri: text for uri, text in text_pages(modules).items()}
    for path in sorted(DOCS.glob("*.md")):
        if not is_generated(path):
            text = path.read_text(encoding="utf-8")
            filled = fill(text, path.relative_to(DOCS).as_posix())
            if filled != text:
                out[path] = filled
    return out


def stale(modules: list) -> list[Path]:
    """Generated files under ``docs/`` that no loss or module produces any more."""
    wanted = {DOCS / uri for uri in text_pages(modules)}
    wanted |= {DOCS / image_uri(n) for n, loss in fastloss.REGISTRY.items() if has_plot(loss)}
    found = [p for p in [*DOCS.rglob("*.md"), *DOCS.glob("img/losses/*.png")] if is_generated(p)]
    return sorted(p for p in found if p not in wanted)


def main() -> int:
    modules = apiref.public_modules(apiref.load(ROOT))
    for path, text in expected(modules).items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    for name, loss in fastloss.REGISTRY.items():
        png = plots.render(loss) if has_plot(loss) else None
        if png is not None:
            path = DOCS / image_uri(name)
            if not path.exists() or path.read_bytes() != png:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png)
                print(f"wrote {path.relative_to(ROOT)}")
    for path in stale(modules):
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
