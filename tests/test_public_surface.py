"""Plugins keep to the public surface that docs/plugins.md declares: every ``mlexec_core``
import in the plugins under plugins/ (their implementation, not their tests) and in the
guide's examples names a module and a name of its "The public surface" table."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"


def _surface() -> dict[str, set[str] | None]:
    text = GUIDE.read_text()
    table = re.search(r"<!-- public-surface:.*?-->\n(.*?)<!-- /public-surface -->", text, re.S)
    assert table, "docs/plugins.md lost its public-surface table"
    surface: dict[str, set[str] | None] = {}
    for row in table.group(1).splitlines()[2:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        module = cells[0].strip("`")
        surface[module] = None if cells[1].startswith("*") else set(re.findall(r"`([A-Za-z_]\w*)`", cells[1]))
    return surface


def _imports(source: str, shown: str):
    for node in ast.walk(ast.parse(source, shown)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mlexec_core":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if node.module == "mlexec_core" or _is_module(sub):  # `from mlexec_core import reaper`
                    yield node.lineno, sub, None
                else:
                    yield node.lineno, node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mlexec_core":
                    yield node.lineno, alias.name, None


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _problems(source: str, shown: str, allowed_extra: tuple[str, ...] = ()) -> list[str]:
    surface = _surface()
    found = []
    for line, module, name in _imports(source, shown):
        if module.startswith(allowed_extra):
            continue
        if module not in surface:
            found.append(f"{shown}:{line}: imports {module} (internal)")
            continue
        names = surface[module]
        if name is None:
            continue
        if names is None:
            if name.startswith("_") or not hasattr(importlib.import_module(module), name):
                found.append(f"{shown}:{line}: {module}.{name} is not a public name")
        elif name not in names:
            found.append(f"{shown}:{line}: {module}.{name} is not in the public surface")
    return found


def _plugin_modules() -> list[Path]:
    return sorted(p for plugin in (ROOT / "plugins").iterdir() if plugin.is_dir()
                  for p in plugin.glob("mlexec_*/**/*.py"))


def test_the_table_names_modules_and_names_that_exist():
    for module, names in _surface().items():
        mod = importlib.import_module(module)
        for name in names or ():
            assert hasattr(mod, name), f"docs/plugins.md lists {module}.{name}, which does not exist"


@pytest.mark.parametrize("path", _plugin_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_surface(path):
    assert _problems(path.read_text(), str(path.relative_to(ROOT))) == []


def test_the_guides_examples_import_only_the_public_surface():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    problems = []
    for i, block in enumerate(blocks):
        try:
            problems += _problems(block, f"docs/plugins.md python block {i + 1}", ("mlexec_core.testing",))
        except SyntaxError:  # a fragment (a signature, an elided body): nothing to check
            continue
    assert problems == []


def test_an_internal_import_is_caught():
    assert _problems("from mlexec_core.sources.urls import redact\n", "x.py") == [
        "x.py:1: imports mlexec_core.sources.urls (internal)"]
    assert _problems("from mlexec_core.envcache import ENV_ROOT_VAR\n", "x.py") == [
        "x.py:1: mlexec_core.envcache.ENV_ROOT_VAR is not in the public surface"]
    assert _problems("from mlexec_core.pipeline.plan import RunPlan\n", "x.py") == [  # from interfaces now
        "x.py:1: imports mlexec_core.pipeline.plan (internal)"]
    assert _problems("from mlexec_core.plugin.interfaces import redact, Backend\n", "x.py") == []
