"""MkDocs hooks (``hooks:`` in ``mkdocs.yml``): generated pages, plots, navigation, API check.

* ``on_config``: expands the catalogue and API sections of the nav, drops pages that do not exist
  yet, appends existing pages the nav does not list (see :mod:`docsgen.site`).
* ``on_files``: fails the build when a public symbol is undocumented (:func:`docsgen.apiref.undocumented`),
  then adds the generated pages: the catalogue (:mod:`docsgen.catalogue`), a plot per loss
  (:mod:`docsgen.plots`) and the API reference (:mod:`docsgen.apiref`).
* ``on_page_markdown``: fills ``<!-- catalogue: ... -->`` placeholders and unlinks pages that do not
  exist yet; ``on_page_content``: renders the LaTeX as MathML (no script, no CDN) and tidies reST
  roles in rendered docstrings.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tools") not in sys.path:  # `mkdocs serve` loads the hook again on every rebuild
    sys.path.insert(0, str(ROOT / "tools"))

import fastloss  # noqa: E402
from docsgen import apiref, catalogue, generated, plots, site  # noqa: E402

log = logging.getLogger("mkdocs.hooks.fastloss")

CATALOGUE = "losses/index.md"
API = "api/index.md"

_state: dict = {}


def _loss_uri(name: str) -> str:
    return f"losses/{name}.md"


def on_config(config):
    pkg = apiref.load(ROOT)
    modules = apiref.public_modules(pkg)
    _state.update(pkg=pkg, modules=modules, missing=set())
    catalogue_nav = [{"Overview": CATALOGUE}] + [
        {catalogue.family_title(key): [{loss.spec.name: _loss_uri(loss.spec.name)} for loss in group]}
        for key, group in catalogue.families().items()
    ]
    api_nav = [{"Overview": API}] + [{m.path: apiref.page_uri(m)} for m in modules]
    generated = site.listed(catalogue_nav) | site.listed(api_nav)
    docs = Path(config["docs_dir"])
    existing = {p.relative_to(docs).as_posix() for p in docs.rglob("*.md")}
    nav = site.expand(config["nav"] or [], {CATALOGUE: catalogue_nav, API: api_nav})
    nav, missing = site.prune(nav, existing | generated)
    for page in missing:
        log.info("fastloss docs: %s is not written yet; left out of the nav and unlinked", page)
    config["nav"] = site.add_unlisted(nav, existing - site.listed(nav))
    _state["missing"] = set(missing)
    return config


def on_files(files, config):
    losses = fastloss.REGISTRY
    problems = apiref.undocumented(_state["pkg"], {f"{apiref.PACKAGE}.{name}" for name in losses})
    if problems:
        raise PluginError("undocumented public API (add docstrings):\n  " + "\n  ".join(problems))

    def add(uri: str, content) -> None:
        existing = files.get_file_from_path(uri)
        if existing is not None:
            if not generated.is_generated(Path(existing.abs_src_path)):
                return  # a hand-written page of that name wins
            files.remove(existing)  # the repository's copy: always regenerated from the code
        files.append(File.generated(config, uri, content=content))

    for name, loss in losses.items():
        png = plots.render(loss) if generated.has_plot(loss) else None
        if png is not None:
            add(generated.image_uri(name), png)
    for uri, text in generated.text_pages(_state["modules"]).items():
        add(uri, text)
    return files


def on_page_markdown(markdown, page, config, files):
    src = page.file.src_uri
    markdown = generated.fill(markdown, src)
    markdown, dropped = site.unlink_missing(markdown, src, _state.get("missing", set()))
    for target in dropped:
        log.info("fastloss docs: %s links %s, which is not written yet (shown as text)", src, target)
    return markdown


def on_page_content(html, page, config, files):
    try:
        html = site.render_math(html)
    except ValueError as exc:
        raise PluginError(f"{page.file.src_uri}: {exc}") from None
    return site.tidy_rst(html)
