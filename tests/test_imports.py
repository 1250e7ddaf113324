"""phijax's packages import each other one way: no cycles, and no imports hidden inside
functions to get around one.

The graph is read from the source with ``ast``, not from ``sys.modules``: an edge is a
module-level ``import phijax...`` or ``from phijax... import`` (also inside module-level
``if``/``try``/``with`` and class bodies, which run at import). Imports under
``if TYPE_CHECKING:`` never run, so they are left out of the graph. The nodes are the
subpackages (``phijax.model``, ``phijax.kernels``, ``phijax.gguf``, ``phijax.tokenizer``,
``phijax.experiment``), each top-level module, and the root package (whose ``__init__``
imports most of them). Source is parsed, never imported beyond the packages
``pkgutil.walk_packages`` opens, so ``phijax.lm_eval`` is checked without its optional
``lm_eval`` dependency.
"""

from __future__ import annotations

import ast
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import phijax

# Function-level phijax imports that are there on purpose: (importing module, imported
# module) → why. Each imported module must be one that ``import phijax`` does not load
# (else the laziness saves nothing), and none may close a cycle (both are checked).
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    # The command line loads each subcommand's modules when that subcommand runs.
    ("phijax.cli", "phijax.summary"): "start-up: `phijax inspect` only",
    ("phijax.cli", "phijax.experiment"): "start-up: pydantic and the runner, `phijax run`",
    ("phijax.cli", "phijax.experiment.verify"): "start-up: `phijax verify` only",
    ("phijax.cli", "phijax.lm_eval"): "optional extra: lm-evaluation-harness, `phijax eval`",
}


@dataclass(frozen=True)
class Import:
    """One ``import`` statement's target module, where it is, and whether it runs at import."""

    source: str  # the importing module
    target: str  # the imported phijax module (a package's ``__init__`` for a name in it)
    where: str  # file:line
    lazy: bool  # inside a function body


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every phijax module with Python source → (its file, whether it is a package)."""
    found = {"phijax": (Path(phijax.__file__), True)}
    for info in pkgutil.walk_packages(phijax.__path__, "phijax."):
        base = Path(info.module_finder.path) / info.name.rsplit(".", 1)[-1]
        path = base / "__init__.py" if info.ispkg else base.with_suffix(".py")
        if path.exists():  # not a compiled extension (the kernel builds)
            found[info.name] = (path, info.ispkg)
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt], lazy: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Import statements in ``body`` with whether they sit in a function; ``TYPE_CHECKING``
    blocks skipped."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, lazy
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _statements(node.body, True)
        elif isinstance(node, ast.If):
            if not _type_checking(node.test):
                yield from _statements(node.body, lazy)
            yield from _statements(node.orelse, lazy)
        elif isinstance(node, ast.Try | ast.TryStar):
            for part in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _statements(part, lazy)
        elif isinstance(node, ast.With | ast.AsyncWith | ast.ClassDef | ast.For | ast.While):
            yield from _statements(node.body, lazy)
            yield from _statements(getattr(node, "orelse", []), lazy)


def _resolve(node: ast.Import | ast.ImportFrom, package: list[str], modules) -> list[str]:
    """The phijax modules an import statement in ``package`` loads: the module a name is, or
    else the module the name is in (``from phijax import Sampler`` → ``phijax``)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        anchor = package[: len(package) - node.level + 1] if node.level else []
        base = ".".join([*anchor, *([node.module] if node.module else [])])
        subs = (f"{base}.{alias.name}" for alias in node.names)
        targets = [sub if sub in modules else base for sub in subs]
    return [t for t in dict.fromkeys(targets) if t == "phijax" or t.startswith("phijax.")]


def _imports(modules: dict[str, tuple[Path, bool]]) -> list[Import]:
    """Every phijax → phijax import statement in the package."""
    root = Path(phijax.__file__).parent.parent
    out = []
    for name, (path, is_package) in modules.items():
        package = (name if is_package else name.rpartition(".")[0]).split(".")
        for node, lazy in _statements(ast.parse(path.read_text(encoding="utf-8")).body):
            where = f"{path.relative_to(root)}:{node.lineno}"
            out += [Import(name, t, where, lazy) for t in _resolve(node, package, modules)]
    return out


def _node(module: str, packages: set[str]) -> str:
    """The graph node of ``module``: its subpackage, else itself."""
    top = ".".join(module.split(".")[:2])
    return top if top in packages else module


def _cycles(edges: list[Import], packages: set[str]) -> list[list[Import]]:
    """A shortest cycle through each node not on one found before, as the imports along it."""
    graph: dict[str, dict[str, Import]] = {}
    for e in edges:
        a, b = _node(e.source, packages), _node(e.target, packages)
        if a != b:
            graph.setdefault(a, {}).setdefault(b, e)
    cycles, seen = [], set()
    for start in sorted(graph):
        if start in seen:
            continue
        path = _shortest_path(graph, start, start)
        if path:
            seen |= {_node(e.source, packages) for e in path}
            cycles.append(path)
    return cycles


def _shortest_path(graph: dict[str, dict[str, Import]], start: str, end: str) -> list[Import]:
    """The imports along a shortest path of at least one step ``start`` → ``end`` (none: [])."""
    back: dict[str, tuple[str, Import]] = {}
    frontier = [start]
    while frontier and end not in back:
        nxt = []
        for a in frontier:
            for b, e in graph.get(a, {}).items():
                if b not in back:
                    back[b] = (a, e)
                    nxt.append(b)
        frontier = nxt
    if end not in back:
        return []
    path, node = [], end
    while not path or node != start:
        node, e = back[node]
        path.append(e)
    return path[::-1]


def _format(cycles: list[list[Import]], packages: set[str]) -> str:
    return "\n".join(
        " -> ".join([_node(c[0].source, packages), *(_node(e.target, packages) for e in c)])
        + "".join(f"\n    {e.where}: {e.source} imports {e.target}" for e in c)
        for c in cycles
    )


def _closure(module: str, edges: list[Import]) -> set[str]:
    """The modules importing ``module`` loads (with each package's ``__init__`` on the way)."""
    out, todo = set(), [module]
    while todo:
        m = todo.pop()
        parents = [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]
        for n in [m, *parents]:
            if n not in out:
                out.add(n)
                todo += [e.target for e in edges if e.source == n]
    return out


MODULES = _modules()
PACKAGES = {name for name, (_, is_package) in MODULES.items() if is_package and name != "phijax"}
IMPORTS = _imports(MODULES)


SAMPLE = """
import os
import phijax.model.layers
from phijax import model, Sampler
from . import reader
from ..errors import ConfigError
if TYPE_CHECKING:
    import phijax.hidden
else:
    import phijax.shown
try:
    import phijax.tried
except ImportError:
    from phijax.handled import name
class Holder:
    import phijax.in_class
    def method(self):
        import phijax.in_method
def function():
    from phijax import lazy
"""


def test_the_reader_resolves_each_form_of_import():
    """A check on the check: names that are modules are edges to them, other names to their
    module, relative imports resolve, ``TYPE_CHECKING`` is skipped, functions are lazy."""
    modules = {"phijax", "phijax.model", "phijax.gguf.reader"}
    found = [
        (target, lazy)
        for node, lazy in _statements(ast.parse(SAMPLE).body)
        for target in _resolve(node, ["phijax", "gguf"], modules)
    ]
    eager = ["model.layers", "model", "", "gguf.reader", "errors", "shown", "tried", "handled"]
    eager += ["in_class"]
    expected = [(f"phijax.{m}".rstrip("."), False) for m in eager]
    assert found == [*expected, ("phijax.in_method", True), ("phijax", True)]


def test_the_walk_finds_every_package():
    """The walk sees the subpackages, the modules and the root package's imports."""
    assert {"phijax.model", "phijax.kernels", "phijax.gguf", "phijax.tokenizer"} <= PACKAGES
    assert {"phijax.experiment", "phijax.quant", "phijax.lm_eval"} <= set(MODULES)
    assert ("phijax", "phijax.model") in {(e.source, e.target) for e in IMPORTS}


def test_no_cycle_between_packages():
    """Module-level imports between phijax's packages and top-level modules form no cycle."""
    cycles = _cycles([e for e in IMPORTS if not e.lazy], PACKAGES)
    assert not cycles, "import cycles:\n" + _format(cycles, PACKAGES)


def test_function_level_imports_are_allowlisted():
    """A phijax import inside a function is one of :data:`LAZY_IMPORTS`; others move to the
    top of their module (or the code moves, where the top would make a cycle)."""
    lazy = [e for e in IMPORTS if e.lazy and (e.source, e.target) not in LAZY_IMPORTS]
    assert not lazy, "function-level imports not in LAZY_IMPORTS:\n" + "\n".join(
        f"  {e.where}: {e.source} imports {e.target}" for e in lazy
    )


def test_lazy_imports_save_loading_and_close_no_cycle():
    """Each allowlisted lazy import names a module ``import phijax`` does not load, and moving
    them all to module level would make no cycle: none is there to dodge one."""
    eager = _closure("phijax", [e for e in IMPORTS if not e.lazy])
    assert not {target for _, target in LAZY_IMPORTS} & eager
    assert set(LAZY_IMPORTS) <= {(e.source, e.target) for e in IMPORTS if e.lazy}
    cycles = _cycles(IMPORTS, PACKAGES)
    assert not cycles, "cycles through function-level imports:\n" + _format(cycles, PACKAGES)
