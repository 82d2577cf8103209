"""Navigation and Markdown rewriting for a site whose pages land at different times.

``mkdocs.yml`` lists the intended navigation, including pages other people are still writing.
At build time the hook

* expands the generated sections (the catalogue and the API reference) in place,
* drops the entries of pages that do not exist yet (and sections left empty),
* appends pages that exist but are not listed, so that a new page is never left out, and
* turns links to the dropped pages into plain text, so that a guide may link a page before it
  lands while every other broken link still fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import html as _html
import posixpath
import re
from collections.abc import Callable, Iterable

Nav = list  # MkDocs' nav: a list of "page.md", {"Title": "page.md"} and {"Title": [nav...]}

#: Where a page that is not in the nav goes: the section with this title (else the top level).
UNLISTED_SECTION = "Guides"


def _is_url(value: str) -> bool:
    return "://" in value or value.startswith("/")


def expand(nav: Nav, sections: dict[str, Nav]) -> Nav:
    """Replace each entry pointing at a key of ``sections`` by a section holding its pages."""
    out = []
    for item in nav:
        if isinstance(item, str) and item in sections:
            out.append({posixpath.dirname(item) or item: sections[item]})
        elif isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, str) and value in sections:
                out.append({title: sections[value]})
            elif isinstance(value, list):
                out.append({title: expand(value, sections)})
            else:
                out.append(item)
        else:
            out.append(item)
    return out


def prune(nav: Nav, available: set[str]) -> tuple[Nav, list[str]]:
    """The nav without entries for unavailable pages (and empty sections), and the dropped pages."""
    missing: list[str] = []

    def walk(items: Nav) -> Nav:
        out = []
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                sub = walk(value)
                if sub:
                    out.append({next(iter(item)): sub})
            elif _is_url(value) or value in available:
                out.append(item)
            else:
                missing.append(value)
        return out

    return walk(nav), missing


def listed(nav: Nav) -> set[str]:
    """Every page the nav refers to."""
    pages: set[str] = set()
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages |= listed(value)
        else:
            pages.add(value)
    return pages


def add_unlisted(nav: Nav, pages: Iterable[str]) -> Nav:
    """``nav`` with ``pages`` (sorted) appended to the :data:`UNLISTED_SECTION` section or the top level."""
    extra = sorted(pages)
    if not extra:
        return nav
    for item in nav:
        if isinstance(item, dict) and isinstance(item.get(UNLISTED_SECTION), list):
            item[UNLISTED_SECTION] = [*item[UNLISTED_SECTION], *extra]
            return nav
    return [*nav, *extra]


_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s#]+\.md)(#[^)\s]*)?\)")


def unlink_missing(markdown: str, page: str, missing: set[str]) -> tuple[str, list[str]]:
    """Links from ``page`` to ``missing`` pages replaced by their text; also the pages unlinked."""
    dropped: list[str] = []

    def sub(m: re.Match) -> str:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page), m.group(2)))
        if target in missing:
            dropped.append(target)
            return m.group(1)
        return m.group(0)

    return _LINK.sub(sub, markdown), dropped


# a bare placeholder, or a region that keeps its last generated content between the two markers; on a
# line of its own (one quoted in a code span is text about the placeholder)
_PLACEHOLDER = re.compile(r"^<!--\s*catalogue:\s*([\w-]+)\s*-->(?:(.*?)<!--\s*/catalogue:\s*\1\s*-->)?",
                          re.S | re.M)


def fill_placeholders(markdown: str, page: str, blocks: dict[str, Callable[[Callable[[str], str]], str]]) -> str:
    """Replace ``<!-- catalogue: NAME -->`` by ``blocks[NAME](link)``.

    A region ``<!-- catalogue: NAME -->...<!-- /catalogue: NAME -->`` (what the repository's copy of
    a page commits, so that it reads without a build) keeps its markers and gets fresh content.
    ``link(name)`` gives the path from ``page`` to the catalogue page of the loss ``name``.
    """

    def link(name: str) -> str:
        return posixpath.relpath(f"losses/{name}.md", posixpath.dirname(page) or ".")

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in blocks:
            raise KeyError(f"{page}: unknown placeholder <!-- catalogue: {key} -->; known: {', '.join(blocks)}")
        if m.group(2) is None:
            return blocks[key](link)
        return f"<!-- catalogue: {key} -->\n{blocks[key](link)}\n<!-- /catalogue: {key} -->"

    return _PLACEHOLDER.sub(sub, markdown)


_ROLE_HTML = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):<code>(~?)([^<]*)</code>")


def tidy_rst(html: str) -> str:
    """reST left in rendered docstrings: roles (``:func:`x``` renders as ``:func:<code>x</code>``) and
    the ``::`` that introduces a literal block."""
    html = _ROLE_HTML.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>",
                          html)
    return html.replace("::</p>", ":</p>")


# what pymdownx.arithmatex (generic mode) leaves in the HTML: \(...\) inline, \[...\] displayed
_MATH = re.compile(r'<(span|div) class="arithmatex">\s*\\([(\[])(.*?)\\[)\]]\s*</\1>', re.S)


def render_math(html: str) -> str:
    """The page's LaTeX as MathML, rendered at build time: no script, no CDN, readable offline.

    Browsers render MathML natively. A formula that ``latex2mathml`` cannot convert fails the build
    (strict), naming it.
    """
    from latex2mathml.converter import convert

    def sub(m: re.Match) -> str:
        tex = _html.unescape(m.group(3)).strip()
        display = "block" if m.group(2) == "[" else "inline"
        try:
            mathml = convert(tex, display=display)
        except Exception as exc:  # the converter's own exception types differ across its versions
            raise ValueError(f"cannot render the formula {tex!r} as MathML: {exc}") from exc
        if "<merror" in mathml:
            raise ValueError(f"cannot render the formula {tex!r} as MathML: {mathml}")
        return f'<div class="arithmatex">{mathml}</div>' if display == "block" else mathml

    return _MATH.sub(sub, html)
