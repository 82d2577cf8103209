"""The loss catalogue: Markdown generated from ``fastloss.REGISTRY`` and each loss's declaration.

One page per loss (formula, gradient, plot, signature, arguments with defaults and domains,
properties, where it runs, equivalents in other libraries, reference, example), an overview page
with the comparison table ("which loss for which problem") and the equivalents table, and the
list of losses by problem that the guide on choosing a loss embeds. Nothing here names a loss.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import textwrap
from collections.abc import Callable, Iterable

import fastloss
from fastloss import kinds
from fastloss._docs import example_text

#: The catalogue properties of a declaration (``fastloss._spec.Properties``), with their headings.
PROPERTIES = (
    ("problem", "Problem"),
    ("outliers", "Outlier sensitivity"),
    ("gradient", "Gradient behaviour"),
    ("use", "Typical use"),
    ("cost", "Compute cost"),
)

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`(~?)([^`]+)`")


def md_inline(text: str) -> str:
    """The reST inline markup of declarations and docstrings (````x````, ``:func:`x```) as Markdown."""
    text = _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    return text.replace("``", "`")


def cell(text: str) -> str:
    """``text`` made safe for one Markdown table cell: pipes escaped outside code spans (inside, they are safe)."""
    parts = md_inline(" ".join(str(text).split())).split("`")
    return "`".join(p.replace("|", r"\|") if i % 2 == 0 else p for i, p in enumerate(parts))


def losses() -> list:
    """The registered losses in declaration order."""
    return list(fastloss.REGISTRY.values())


FAMILY_PREFIX = "fastloss.losses."


def declared_in(loss) -> str | None:
    """The module that declares ``loss`` (binds it to a name), or ``None``."""
    for name, module in list(sys.modules.items()):
        if name.startswith(FAMILY_PREFIX) and any(v is loss for v in vars(module).values()):
            return name
    return None


def family(loss) -> str:
    """The family of a loss: its declaration module under ``fastloss.losses`` (``"custom"`` otherwise)."""
    module = declared_in(loss)
    return module[len(FAMILY_PREFIX):] if module else "custom"


def family_title(key: str) -> str:
    return key.replace("_", " ").capitalize()


def family_summary(key: str) -> str:
    """The first paragraph of the family module's docstring."""
    module = sys.modules.get(f"fastloss.losses.{key}")
    doc = inspect.getdoc(module) if module is not None else None
    return md_inline(" ".join(doc.split("\n\n")[0].split())) if doc else ""


def families(items: Iterable | None = None) -> dict[str, list]:
    """Losses grouped by family, families in order of their first loss."""
    groups: dict[str, list] = {}
    for loss in losses() if items is None else items:
        groups.setdefault(family(loss), []).append(loss)
    return groups


def devices(loss) -> tuple[str, ...]:
    """Where a loss runs: always the CPU; CUDA too when the CUDA backend implements its kind.

    Read from what the backend exposes (``fastloss.kinds.CUDA_MODULES``: the module implementing
    each kind), without importing ``numba.cuda``.
    """
    module = kinds.CUDA_MODULES.get(loss.spec.kind)
    if module is not None and importlib.util.find_spec(module) is not None:
        return ("CPU", "CUDA")
    return ("CPU",)


_NOTE = re.compile(r"^([^\s(]+(?:\([^)]*\))?) \(([^)]*\s[^)]*)\)$")

#: Libraries with a column of their own in the equivalents table; the others share one.
MAIN_LIBRARIES = ("PyTorch", "optax", "scikit-learn")


def _code_and_note(text: str) -> str:
    """An equivalent as code: ``"HalfSquaredError (half of this loss)"`` -> code, then the prose note."""
    text = md_inline(text)
    if "`" in text:
        return text
    m = _NOTE.match(text)
    return f"`{m.group(1)}` ({m.group(2)})" if m else f"`{text}`"


def comparison_table(items: Iterable | None = None, link: Callable[[str], str] = lambda n: f"{n}.md") -> str:
    """The "which loss for which problem" table: one row per loss."""
    rows = [
        "| Loss | " + " | ".join(h for _, h in PROPERTIES) + " | Runs on |",
        "| --- " * (len(PROPERTIES) + 2) + "|",
    ]
    for loss in losses() if items is None else items:
        props = loss.spec.properties
        values = [cell(getattr(props, f)) if props else "" for f, _ in PROPERTIES]
        rows.append(f"| [`{loss.spec.name}`]({link(loss.spec.name)}) | " + " | ".join(values)
                    + f" | {', '.join(devices(loss))} |")
    return "\n".join(rows)


def equivalents_table(items: Iterable | None = None, link: Callable[[str], str] = lambda n: f"{n}.md") -> str:
    """Each loss's equivalents: a column per :data:`MAIN_LIBRARIES` library, one for the others."""
    rows = ["| Loss | " + " | ".join(MAIN_LIBRARIES) + " | Other |", "| --- " * (len(MAIN_LIBRARIES) + 2) + "|"]
    for loss in losses() if items is None else items:
        eq = dict(loss.spec.equivalents)
        values = []
        for lib in MAIN_LIBRARIES:
            # "PyTorch (composition)" belongs in the PyTorch column, with its qualifier
            keys = [k for k in eq if k == lib or k.startswith(lib + " (")]
            qualified = [(k[len(lib):].strip(" ()"), cell(_code_and_note(eq.pop(k)))) for k in keys]
            values.append("; ".join(f"{q}: {v}" if q else v for q, v in qualified))
        values.append("; ".join(f"{cell(k)}: {cell(_code_and_note(v))}" for k, v in eq.items()))
        rows.append(f"| [`{loss.spec.name}`]({link(loss.spec.name)}) | " + " | ".join(values) + " |")
    return "\n".join(rows)


def by_problem(link: Callable[[str], str]) -> str:
    """A list of the losses under each problem type, with their typical use."""
    groups: dict[str, list] = {}
    for loss in losses():
        props = loss.spec.properties
        groups.setdefault(props.problem if props else "other", []).append(loss)
    out = []
    for problem, items in groups.items():
        entries = ", ".join(
            f"[`{loss.spec.name}`]({link(loss.spec.name)})"
            + (f" ({cell(loss.spec.properties.use)})" if loss.spec.properties else "")
            for loss in items
        )
        out.append(f"- **{cell(problem)}**: {entries}")
    return "\n".join(out)


def numpydoc_entries(doc: str, section: str) -> list[tuple[str, str, str]]:
    """``(name, type, description)`` of each entry of a numpydoc section (``"Parameters"``, ...)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    entries: list[tuple[str, str, str]] = []
    for i in range(len(lines) - 1):
        if lines[i].strip() == section and set(lines[i + 1].strip()) == {"-"}:
            break
    else:
        return entries
    for j in range(i + 2, len(lines)):
        line = lines[j]
        nxt = lines[j + 1].strip() if j + 1 < len(lines) else ""
        if line.strip() and nxt and set(nxt) == {"-"}:
            break  # the next section's heading
        if line and not line[0].isspace():
            name, _, typ = line.partition(" : ")
            entries.append((name.strip(), typ.strip(), ""))
        elif line.strip() and entries:
            name, typ, desc = entries[-1]
            entries[-1] = (name, typ, f"{desc} {line.strip()}".strip())
    return entries


def _math(tex: str) -> list[str]:
    return ["$$", tex.strip(), "$$", ""]


def _arguments(loss) -> list[str]:
    spec = loss.spec
    sig = inspect.signature(loss.value_and_grad).parameters
    params = {p.name: p for p in loss._params}  # the declaration's and the kind's hyper-parameters
    domains = spec.input_domains({p.name: p.default for p in params.values()})
    rows = ["| Argument | Type | Default | Domain | Description |", "| --- | --- | --- | --- | --- |"]
    for inp in spec.inputs:
        kind = "array, differentiable" if inp.differentiable else "array"
        default = "`None`" if inp.optional else "required"
        rows.append(f"| `{inp.name}` | {kind} | {default} | `{domains[inp.name]}` | {cell(inp.doc)} |")
    for p in params.values():
        dom = f"`{p.domain}`" if p.domain is not None else "any"
        rows.append(f"| `{p.name}` | {p.type.__name__} | `{p.default!r}` | {dom} | {cell(p.doc)} |")
    declared = set(params) | {i.name for i in spec.inputs}
    for name, typ, desc in numpydoc_entries(inspect.getdoc(loss.value_and_grad), "Parameters"):
        if name in declared or name not in sig:
            continue
        typ = re.sub(r",\s*(default\b.*|optional)$", "", typ)
        rows.append(f"| `{name}` | {cell(typ)} | `{sig[name].default!r}` | | {cell(desc)} |")
    return rows


def _call(path: str, func, width: int = 96) -> str:
    """``path(signature)``, wrapped at ``width`` columns with the parameters indented."""
    sig = inspect.signature(func)
    one_line = f"{path}{sig}"
    if len(one_line) <= width:
        return one_line
    body = textwrap.fill(str(sig)[1:-1], width - 4, initial_indent="    ", subsequent_indent="    ",
                         break_long_words=False, break_on_hyphens=False)
    return f"{path}(\n{body}\n)"


def loss_page(loss, image: str | None = None) -> str:
    """The catalogue page of one loss; ``image`` is the path of its plot relative to the page."""
    spec = loss.spec
    name = spec.name
    props = spec.properties
    diff = ", ".join(f"`{i.name}`" for i in spec.differentiable)
    out = [f"# `{name}`", "", md_inline(spec.summary), ""]
    if props:
        out += [
            "| " + " | ".join(h for _, h in PROPERTIES) + " | Runs on |",
            "| --- " * (len(PROPERTIES) + 1) + "|",
            "| " + " | ".join(cell(getattr(props, f)) for f, _ in PROPERTIES) + f" | {', '.join(devices(loss))} |",
            "",
        ]
    out += ["## Definition", ""]
    if spec.formula:
        out += _math(spec.formula)
    if spec.gradient:
        out += [f"Gradient with respect to {diff}:", "", *_math(spec.gradient)]
    if spec.hessian_formula:
        out += ["Hessian diagonal (`.hess`, `.grad_hess`, `.value_grad_hess`):", "", *_math(spec.hessian_formula)]
        if spec.hessian_note:
            out += [md_inline(spec.hessian_note), ""]
    if image:
        out += [f"![{name} and its gradient]({image})", ""]
    calls = [_call(f"fastloss.{name}", loss)]
    calls += [_call(f"fastloss.{name}.{m}", getattr(loss, m)) for m in ("grad", "value_and_grad")]
    out += [
        "## Signature", "", "```python", *calls, "```", "",
        f"`fastloss.{name}(...)` returns the loss, `.grad(...)` the gradient with respect to {diff}, "
        "`.value_and_grad(...)` both from one fused pass. Hyper-parameters are keyword-only.", "",
        "## Arguments", "", *_arguments(loss), "",
    ]
    returns = numpydoc_entries(inspect.getdoc(loss.value_and_grad), "Returns")
    if returns:
        out += ["## Returns", ""]
        out += [f"- `{n}` ({cell(t)}): {cell(d)}" for n, t, d in returns]
        out.append("")
    if spec.equivalents or spec.semantics:
        out += ["## Equivalents", ""]
        if spec.equivalents:
            out += ["| Library | Equivalent |", "| --- | --- |"]
            out += [f"| {cell(k)} | {cell(_code_and_note(v))} |" for k, v in spec.equivalents.items()]
            out.append("")
        if spec.semantics:
            out += [md_inline(spec.semantics), ""]
    if spec.reference:
        out += ["## Reference", "", md_inline(spec.reference), ""]
    if spec.example.strip():
        out += ["## Example", "", "```pycon", example_text(spec), "```", ""]
    module = declared_in(loss)
    if module:
        out += [f"Declared in `{module.replace('.', '/')}.py` ({spec.kind} kind).", ""]
    return "\n".join(out)


def overview_page() -> str:
    """The catalogue's front page: comparison table, equivalents, families."""
    items = losses()
    out = [
        "# Loss catalogue",
        "",
        f"{len(items)} losses. This catalogue is generated from `fastloss.REGISTRY` each time the site is "
        "built: every entry comes from the loss's single declaration, the same one that builds its kernels, "
        "its docstring (`help(fastloss.<name>)`) and its tests.",
        "",
        "Every loss is called the same way: `fl.<name>(inputs..., **params, weight=None, reduction=\"mean\")` "
        "returns the loss, `.grad(...)` the gradient, `.value_and_grad(...)` both from one fused pass "
        "(`out=` writes the gradient into a buffer, which may be the prediction itself). "
        "See [choosing a loss](../choosing.md) for guidance.",
        "",
        "## Which loss for which problem",
        "",
        comparison_table(items),
        "",
        "## Equivalents in other libraries",
        "",
        equivalents_table(items),
        "",
    ]
    for key, group in families(items).items():
        out += [f"## {family_title(key)}", ""]
        summary = family_summary(key)
        if summary:
            out += [summary, ""]
        out += [f"- [`{loss.spec.name}`]({loss.spec.name}.md): {md_inline(loss.spec.summary)}" for loss in group]
        out.append("")
    return "\n".join(out)
