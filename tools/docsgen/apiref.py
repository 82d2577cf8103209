"""API reference pages generated from the public modules, and the check that everything public is documented.

The public API is what ``__all__`` exports from ``fastloss`` and from each public module
(``fastloss.<name>`` without a leading underscore: ``custom``, ``scoring``, ``dask``, ``torch``,
``jax``, ``bench``, and any that lands later). Each module gets one page with a mkdocstrings
directive per exported symbol, so a new export is documented without editing anything here; the
losses in ``fastloss.__all__`` are documented by the catalogue instead.

:func:`undocumented` reads the same modules with griffe (the static analyser mkdocstrings renders
from, so optional frameworks such as torch need not be installed) and lists every public module,
exported symbol, public method of an exported class and public function of an exported module
without a docstring, or exported but undefined. The MkDocs hook fails the build when the list is
not empty; ``tests/test_docs.py`` runs the same check.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

PACKAGE = "fastloss"
#: Public-looking submodules that are not API pages: the loss declarations (the catalogue
#: documents the losses) and the command-line entry point (documented with each command).
#: packages without a page: the declarations (documented as the catalogue) and the internals of the
#: kinds and the CUDA infrastructure (documented in docs/architecture.md)
NOT_API = ("losses", "__main__", "kinds", "device")
#: Pages come in this order; other public modules follow alphabetically.
ORDER = ("fastloss", "custom", "scoring", "dask", "torch", "jax", "bench")
#: Dunder methods that are API (and so need a docstring) when a public class defines them.
API_DUNDERS = ("__call__",)


def load(root: Path | str, package: str = PACKAGE):
    """The package as griffe sees it (static analysis of the sources under ``root``)."""
    import griffe

    return griffe.load(package, search_paths=[str(root)], resolve_aliases=False)


def public_modules(pkg) -> list:
    """The package and its public top-level submodules, in page order."""
    subs = [m for name, m in pkg.modules.items() if not name.startswith("_") and name not in NOT_API]
    rank = {name: i for i, name in enumerate(ORDER)}
    subs.sort(key=lambda m: (rank.get(m.name, len(ORDER)), m.name))
    return [pkg, *subs]


def exports(module) -> list[str]:
    """What a module exports: its ``__all__``, else its public functions and classes."""
    if module.exports is not None:
        return [str(e) for e in module.exports]
    return [n for n, m in module.members.items()
            if not n.startswith("_") and not m.is_alias and (m.is_function or m.is_class)]


def page_uri(module) -> str:
    return f"api/{module.path}.md"


def _public_members(obj) -> Iterable:
    """Functions and classes (and methods) defined in ``obj`` that are part of the API."""
    for name, member in obj.members.items():
        if member.is_alias or (name.startswith("_") and name not in API_DUNDERS):
            continue
        if member.is_function or member.is_class:
            yield member


def _check(obj, problems: list[str], seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if not (obj.docstring and obj.docstring.value.strip()):
        problems.append(f"{obj.path}: no docstring")
    if obj.is_class or obj.is_module:
        for member in _public_members(obj):
            _check(member, problems, seen)


def undocumented(pkg, documented_elsewhere: Collection[str] = ()) -> list[str]:
    """Public modules and symbols without a docstring (``documented_elsewhere``: paths to skip).

    ``documented_elsewhere`` holds the dotted paths (``fastloss.huber``) the catalogue documents.
    """
    problems: list[str] = []
    seen: set[str] = set()
    for module in public_modules(pkg):
        if not (module.docstring and module.docstring.value.strip()):
            problems.append(f"{module.path}: module has no docstring")
        for name in exports(module):
            path = f"{module.path}.{name}"
            if path in documented_elsewhere:
                continue
            member = module.members.get(name)
            if member is None:
                problems.append(f"{path}: listed in __all__ but not defined")
                continue
            if member.is_alias:
                try:
                    member = member.final_target
                except Exception as exc:  # griffe cannot follow the import
                    problems.append(f"{path}: cannot resolve {member.target_path} ({type(exc).__name__})")
                    continue
            _check(member, problems, seen)
    return problems


def module_page(module, catalogue: dict[str, str] | None = None) -> str:
    """The reference page of one public module.

    ``catalogue`` maps the names of exported losses to their catalogue page (relative to the API
    page); those are listed with links instead of rendered here.
    """
    catalogue = catalogue or {}
    path = module.path
    source = path.replace(".", "/") + ("/__init__.py" if module.is_package else ".py")
    out = [
        f"# `{path}`",
        "",
        f"Rendered from the docstrings in `{source}` when the site is built.",
        "",
        f"::: {path}",
        "    options:",
        "      members: false",
        "      show_root_heading: false",
        "      show_root_toc_entry: false",
        "",
    ]
    losses = [n for n in exports(module) if n in catalogue]
    for name in exports(module):
        if name not in catalogue:
            out += [f"::: {path}.{name}", ""]
    if losses:
        out += [
            "## Losses",
            "",
            "Each loss is a `fastloss.Loss`; its page in the catalogue shows its formula, gradient, "
            "arguments and example.",
            "",
            *(f"- [`{path}.{n}`]({catalogue[n]})" for n in losses),
            "",
        ]
    return "\n".join(out)


def index_page(modules: list) -> str:
    """The front page of the API reference: one line per module."""
    out = ["# API reference", "", "Generated from each public module's `__all__` when the site is built.", ""]
    for module in modules:
        doc = module.docstring.value.strip().split("\n\n")[0] if module.docstring else ""
        summary = " ".join(doc.split()).replace("``", "`")
        out.append(f"- [`{module.path}`]({module.path}.md): {summary}")
    out.append("")
    return "\n".join(out)
