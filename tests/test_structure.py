"""The package's layering, checked from the source: no import cycles, the device layer below the
kinds, and no code outside ``fastloss/kinds`` that switches on a kind's name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import fastloss as fl

ROOT = Path(fl.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str], *, top_level_only: bool) -> set[str]:
    """The fastloss modules ``name`` imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    typing_only = {  # imports for annotations only never run
        id(n) for top in ast.walk(tree)
        if isinstance(top, ast.If) and getattr(top.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(top)
    }
    found = set()
    for node in nodes:
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from pkg import name`` the package
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {n: _imports(n, p, known, top_level_only=top_level_only) for n, p in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycles_between_modules():
    cycle = _cycle(_graph(top_level_only=False))
    assert cycle is None, " -> ".join(cycle)


def test_the_device_layer_does_not_know_the_kinds():
    graph = _graph(top_level_only=False)
    for name, deps in graph.items():
        if name.startswith("fastloss.device"):
            bad = {d for d in deps if d.startswith(("fastloss.kinds", "fastloss.losses", "fastloss.linear_ce"))}
            assert not bad, f"{name} imports {bad}"


#: where a kind's name may be compared: the benchmark's targets are stated per kind, and the
#: ``@fl.rowwise`` decorator recognises losses of its own kind
ALLOWED = {"fastloss/bench/report.py", "fastloss/custom.py", "fastloss/_registry.py"}


def test_no_switch_on_a_kind_name_outside_the_kinds():
    names = "|".join(sorted(fl.kinds.KINDS))
    pattern = re.compile(rf"""kind\s*(==|!=)\s*["']({names})["']|kind\s+(not\s+)?in\s*[(\[{{]\s*["']({names})""")
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).as_posix()
        if rel.startswith("fastloss/kinds/") or rel in ALLOWED:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
