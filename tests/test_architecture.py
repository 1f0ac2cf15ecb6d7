"""The tree keeps the shape docs/plugins.md and the README describe (issue 21, item 5):

* no module imports another module's private names (``from x import _y``, ``x._y``):
  what a module shares it names without a leading underscore;
* the import graph of ``mlexec_core`` (module-level imports only: an import inside a
  function is deliberate, to keep ``mlexec run`` lean, and cannot loop at import time)
  has no cycle that spans more than one folder, so each folder can be read on its own;
  and, counting the imports inside functions too, still none.

Each reads the source with :mod:`ast`; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "mlexec_core"


def _packages() -> list[tuple[str, Path]]:
    """(top-level package name, its folder): the core and every plugin's package."""
    found = [("mlexec_core", CORE)]
    for folder in sorted((ROOT / "plugins").glob("*/mlexec_*")):
        if (folder / "__init__.py").is_file():
            found.append((folder.name, folder))
    return found


def _modules(name: str, folder: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package in ``folder``."""
    modules = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([name, *parts])] = path
    return modules


ALL_MODULES: dict[str, Path] = {}
for _name, _folder in _packages():
    ALL_MODULES.update(_modules(_name, _folder))


def _is_package(module: str) -> bool:
    return ALL_MODULES.get(module, Path()).name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` names, relative imports resolved against ``module``."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_imports(module: str, tree: ast.Module) -> list[str]:
    """Each ``from x import _y`` and ``x._y`` in ``tree`` that reaches into another module."""
    problems = []
    aliases: dict[str, str] = {}  # local name -> the module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if _private(alias.name) and source != module:
                    problems.append(f"{module}:{node.lineno}: from {source} import {alias.name}")
                if target in ALL_MODULES:
                    aliases[alias.asname or alias.name] = target
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            dotted = _dotted(node.value)
            if dotted is None:
                continue
            head, _, rest = dotted.partition(".")
            if head not in aliases:
                continue
            target = ".".join(filter(None, [aliases[head], rest]))
            if target in ALL_MODULES and target != module:
                problems.append(f"{module}:{node.lineno}: {dotted}.{node.attr}")
    return problems


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def test_no_module_imports_another_modules_private_names():
    problems = []
    for module, path in ALL_MODULES.items():
        problems += _private_imports(module, ast.parse(path.read_text(), str(path)))
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


def _runtime_imports(tree: ast.Module, inside_functions: bool = False):
    """The import statements that run when the module is imported: not those under
    ``if TYPE_CHECKING:``, and not those inside a function unless ``inside_functions``."""
    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not inside_functions:
                continue
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from visit(node.orelse)
            else:
                yield from visit(ast.iter_child_nodes(node))
    yield from visit(tree.body)


def _with_parents(module: str) -> list[str]:
    """``module`` and the packages above it: importing it runs each of their ``__init__``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_graph(package: str = "mlexec_core", inside_functions: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` its import runs (directly).

    With ``inside_functions``, the imports inside functions count too, as edges to the
    module alone: by the time a function runs, the packages above it are initialised.
    """
    graph: dict[str, set[str]] = {}
    for module, path in ALL_MODULES.items():
        if module != package and not module.startswith(package + "."):
            continue
        edges = graph.setdefault(module, set())
        for node in _runtime_imports(ast.parse(path.read_text(), str(path)), inside_functions):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _absolute(module, node)
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in ALL_MODULES else source
                           for a in node.names]
            for target in targets:
                reached = [target] if inside_functions else _with_parents(target)
                edges.update(m for m in reached if m in ALL_MODULES and m != module)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _folder(module: str) -> str:
    return module if _is_package(module) else module.rpartition(".")[0]


def test_no_import_cycle_spans_more_than_one_folder():
    graph = import_graph()
    spanning = [c for c in _cycles(graph) if len({_folder(m) for m in c}) > 1]
    assert not spanning, "import cycles across folders:\n" + "\n".join(
        f"{sorted({_folder(m) for m in c})}: {c}" for c in spanning)


def test_no_folder_reaches_back_even_through_imports_inside_functions():
    """Stricter than the import-time check: a folder that imports another lazily (inside a
    function, to keep ``mlexec run`` lean) is still a dependency, and none loops back."""
    graph = import_graph(inside_functions=True)
    spanning = [c for c in _cycles(graph) if len({_folder(m) for m in c}) > 1]
    assert not spanning, "import cycles across folders (counting imports inside functions):\n" + "\n".join(
        f"{sorted({_folder(m) for m in c})}: {c}" for c in spanning)
