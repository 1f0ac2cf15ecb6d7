"""What every ``mlexec`` command shares: its terminal, its one way to fail, the plugins, the store,
and how a plan is shown.  The commands (:mod:`.main`, :mod:`.sweep`, :mod:`.runs`, :mod:`.cache`)
import these, never each other's names."""

from __future__ import annotations

import json
import sys
from typing import Any

from mlexec_core.errors import MlexecError


def make_terminal():
    """The command's :class:`~mlexec_core.cli.terminal.Terminal` (rich on a terminal, plain when piped)."""
    from mlexec_core.cli.terminal import Terminal

    return Terminal()


def fail(terminal, exc: MlexecError) -> None:
    """Print ``exc`` as one error block and exit with its status."""
    terminal.error(exc)
    sys.exit(exc.exit_code)


def load_plugins(terminal, warn: bool = True):
    """Every installed plugin; with ``warn``, one line for each that did not load."""
    from mlexec_core.plugin.manager import build_plugins

    plugins = build_plugins(reporter=terminal)
    if warn:
        for info in plugins.load_errors():
            terminal.warning(f"plugin {info.name!r} ({info.distribution or 'unknown distribution'}) did not load: "
                             f"{info.error}; `mlexec plugins` lists what is installed")
    return plugins


def open_store(terminal, repair: bool = True):
    """The store of ``$MLFLOW_TRACKING_URI``, repaired as every mlexec command does on opening it."""
    from mlexec_core.builtins.mlflow.hooks import repair_store
    from mlexec_core.builtins.mlflow.store import open_store as open_tracking_store
    from mlexec_core.builtins.mlflow.store import tracking_uri
    from mlexec_core.sources.urls import redact

    uri = tracking_uri()
    store = open_tracking_store(uri)
    if not store.connected:
        with terminal.status(f"Opening the MLflow tracking store {redact(uri)}"):
            store.connect()
    if repair:
        repair_store(store, terminal)
    return store


def print_plan(terminal, summary: dict[str, Any]) -> None:
    """A dry run's plan, as tables (``--json`` prints ``summary`` itself)."""
    shown = dict(summary, backend_plan={k: v for k, v in summary["backend_plan"].items() if k != "text"})
    shown["resources"] = ", ".join(f"{k}={v}" for k, v in summary.get("resources", {}).items()) or "none asked"
    shown["honoured_resources"] = ", ".join(summary.get("honoured_resources", ())) or "none"
    rows = [(k, v if not isinstance(v, (dict, list)) else json.dumps(v)) for k, v in shown.items()
            if k != "parameters"]
    terminal.table("Plan (dry run: nothing runs)", ["", "value"], rows)
    params = summary["parameters"]
    if params:
        terminal.table("Parameters", ["name", "type", "value", "from"],
                       [(p["name"], p["type"], p["value"], p["source"]) for p in params])
    text = summary["backend_plan"].get("text")
    if text:
        terminal.echo(text.rstrip())
