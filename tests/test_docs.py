"""Docs for plugin authors are tested: every hook has a section, the example plugin runs."""

from __future__ import annotations

import inspect
import json
import re
import types

import mlexec_core
from mlexec_core.plugin import hookspecs
from mlexec_core.plugin.manager import build_plugins
from mlexec_core.testing import ROOT

PLUGINS_MD = (ROOT / "docs" / "plugins.md").read_text()


def hook_functions():
    return [(name, fn) for name, fn in vars(hookspecs).items() if name.startswith("mlexec_") and callable(fn)]


def test_every_hook_has_a_section_headed_by_its_signature():
    headings = set(re.findall(r"^### (mlexec_\w+\(.*\))$", PLUGINS_MD, re.M))
    for name, fn in hook_functions():
        signature = f"{name}({', '.join(inspect.signature(fn).parameters)})"
        assert signature in headings, f"docs/plugins.md has no section '### {signature}'"
    assert len(headings) == len(hook_functions()), "a documented hook that does not exist"


def test_every_hook_has_a_docstring():
    for name, fn in hook_functions():
        assert fn.__doc__ and fn.__doc__.strip(), name


def example_plugin() -> types.ModuleType:
    blocks = re.findall(r"```python\n(# example-plugin: audit\n.*?)```", PLUGINS_MD, re.S)
    assert len(blocks) == 1
    module = types.ModuleType("audit_example")
    exec(compile(blocks[0], "docs/plugins.md (audit example)", "exec"), module.__dict__)
    return module


def test_the_example_plugin_runs(project, store, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.setenv("MLEXEC_AUDIT_FILE", str(tmp_path / "audit.jsonl"))
    plugins = build_plugins(entry_points=False, extra=[("audit", example_plugin())])
    proj = project("entry_points: {main: {command: 'test -n \"$MLEXEC_AUDIT_FILE\"'}}\n")
    submitted = mlexec_core.run(str(proj), env_manager="audited", plugins=plugins)
    run = store.only_run()
    assert run.info.run_id == submitted.run_id and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.env"] == "audited"
    assert run.data.tags["audit.file"] == str(tmp_path / "audit.jsonl")
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "FINISHED"
