"""Layers (``shared/DESIGN.md``): nbft's modules import each other one way only, and the core stays free of Jupyter.

The graph is read from the source with :mod:`ast`, importing nothing. Two graphs are checked:

- **import time** (module-level statements, class bodies, module-level ``try``/``if``; not ``if TYPE_CHECKING:``):
  what runs on ``import nbft.x``. A circle here can fail with a half-initialised module. No exceptions.
- **every import**, also function-level lazy ones and ``TYPE_CHECKING`` ones: the dependencies the code has at
  all. A lazy import is how a call may defer a heavy or optional dependency, not a licence to point back up a
  layer, so a circle counts here too (``data`` <-> ``sources`` was one). The few known ones are listed below.

At import time, importing ``nbft.a.b`` also runs ``nbft/a/__init__.py``, so it adds the edge ``-> nbft.a`` as
well, except from inside ``nbft.a`` (a package's own modules are imported while it is being set up; the usual
package pattern). A lazy import runs long after its packages are set up: it depends on the module it names only.
``from nbft.a import b`` where ``b`` is a submodule names the submodule; ``from nbft.a import name`` names the
package itself (and so counts even from inside it: a submodule that reads its own package's ``__init__`` is a
circle). So ``nbft.report.compare``, resolved lazily to :func:`nbft.evaluate.compare.compare`, which imports
``nbft.report.table`` when called, is no circle: the report modules it names never import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "nbft"
JUPYTER = ("ipywidgets", "IPython")
NOT_CORE = ("nbft.widgets", "nbft.magics", "nbft.__main__")

# Known circles through lazy imports, each with why it is there; the lead deletes an entry once it is gone.
KNOWN_LAZY_CYCLES: set[frozenset[str]] = set()  # none left; a new one must be removed, not listed


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_nodes(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported (not in functions, not under TYPE_CHECKING)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _import_time_nodes(node.body)
            found += _import_time_nodes(node.orelse)
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                found += _import_time_nodes(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            found += _import_time_nodes(node.body)
    return found


def _all_nodes(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, wherever it is (functions, methods, TYPE_CHECKING blocks)."""
    return [n for n in ast.walk(ast.Module(body=body, type_ignores=[])) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _imported_names(module: str, path: Path, known: set[str], lazy: bool) -> set[str]:
    """Every module named by an import of ``module`` (nbft's own and third-party alike)."""
    is_package = path.name == "__init__.py"
    nodes = (_all_nodes if lazy else _import_time_nodes)(ast.parse(path.read_text(encoding="utf-8")).body)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:  # relative import: resolve against this module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([base] if base else [])])
        subs = {f"{base}.{alias.name}" for alias in node.names} & known
        names |= subs
        if len(subs) < len(node.names):  # at least one name comes from the package's own namespace
            names.add(base)
    return names


def _edges(module: str, names: set[str], known: set[str], parents: bool) -> set[str]:
    """The nbft modules that ``names`` point to from ``module``; with ``parents`` also the packages they run."""
    edges: set[str] = set()
    for name in names:
        parts = name.split(".")
        prefixes = [".".join(parts[:i]) for i in range(len(parts), 1, -1) if ".".join(parts[:i]) in known]
        if not prefixes:  # third-party, or nbft itself
            continue
        named, *above = prefixes  # the module named (or the nearest that exists), then its packages
        if named != module:
            edges.add(named)  # named explicitly: counts even from inside its own package
        if parents:
            edges.update(p for p in above if p != module and not module.startswith(p + "."))
    return edges


def import_graph(lazy: bool = False) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(edges among nbft modules, every module each one imports)``: at import time, or with ``lazy`` every import.

    The packages above an imported module count at import time only (importing runs their ``__init__``). A lazy
    import runs when the package is long set up, and depends on the module it names, not on its package.
    """
    mods = _modules()
    known = set(mods)
    graph: dict[str, set[str]] = {}
    raw: dict[str, set[str]] = {}
    for module, path in mods.items():
        now = _imported_names(module, path, known, lazy=False)
        graph[module] = _edges(module, now, known, parents=True)
        raw[module] = now
        if lazy:
            raw[module] = _imported_names(module, path, known, lazy=True)
            graph[module] |= _edges(module, raw[module], known, parents=False)
    return graph, raw


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    """The reader sees real edges (a broken reader would find no cycles trivially)."""
    graph, _ = import_graph()
    assert "nbft.evaluate.stats" in graph["nbft.evaluate.scoring"]
    assert "nbft.evaluate" not in graph["nbft.evaluate.scoring"]  # `from nbft.evaluate import stats` names stats
    assert "nbft.report" not in graph["nbft.evaluate.runner"]
    assert sum(len(e) for e in graph.values()) > 50
    lazy, _ = import_graph(lazy=True)
    assert all(graph[m] <= lazy[m] for m in graph)
    assert "nbft.models" in lazy["nbft.evaluate.runner"] and "nbft.models" not in graph["nbft.evaluate.runner"]
    assert "nbft.evaluate.compare" in lazy["nbft.report"]  # the alias, read inside the module's __getattr__
    assert "nbft.report.table" in lazy["nbft.evaluate.compare"]


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _detail(graph: dict[str, set[str]], cycles: list[list[str]]) -> dict[str, list[str]]:
    return {m: sorted(graph[m] & set(c)) for c in cycles for m in c}


def test_no_import_cycles_at_import_time():
    graph, _ = import_graph()
    cycles = _cycles(graph)
    assert not cycles, f"import cycles: {cycles}; edges inside them: {_detail(graph, cycles)}"


def test_no_cycles_through_lazy_imports_either():
    """Known circles may remain until their work is merged; any other circle fails."""
    graph, _ = import_graph(lazy=True)
    cycles = [c for c in _cycles(graph) if frozenset(c) not in KNOWN_LAZY_CYCLES]
    assert not cycles, f"cycles through lazy imports: {cycles}; edges inside them: {_detail(graph, cycles)}"


def test_core_never_imports_jupyter():
    """Not even lazily: the core works in scripts and ``accelerate launch`` workers where Jupyter is absent."""
    _, raw = import_graph(lazy=True)
    core = {m: names for m, names in raw.items() if not m.startswith(NOT_CORE)}
    bad = {m: sorted(n for n in names if n.split(".")[0] in JUPYTER) for m, names in core.items()}
    assert not {m: n for m, n in bad.items() if n}, "core modules import Jupyter"
    assert len(core) > 20
