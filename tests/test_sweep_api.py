"""mlexec_core.sweep(...): the handle (children, wait, cancel); the live view on a terminal; the docs' example
strategy; the metric and the best run with the built-in strategies."""

from __future__ import annotations

import re
import sys
import time
import types

import pytest

import mlexec_core
from mlexec_core.errors import ParameterError, UsageError
from mlexec_core.pipeline.plan import RunStatus
from mlexec_core.plugin.manager import build_plugins
from mlexec_core.testing import ROOT

PROJECT = """
entry_points:
  main:
    parameters: {n: int, nap: {type: float, default: 0}}
    command: "echo step n={n}; sleep {nap}; test {n} != 4"
"""


@pytest.fixture
def api_env(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.setenv("MLEXEC_STOP_TIMEOUT", "5")
    return build_plugins(entry_points=False)


def test_the_handle_waits_and_lists_children(api_env, project, store):
    handle = mlexec_core.sweep(str(project(PROJECT)), parameters={"n": [1, 2, 3]}, env_manager="local",
                               max_parallel=2, plugins=api_env)
    result = handle.wait(timeout=120)
    assert result["status"] == "FINISHED" and handle.status is RunStatus.FINISHED
    assert sorted(c["params"]["n"] for c in handle.children) == ["1", "2", "3"]
    parent = store.client.get_run(handle.parent_run_id)
    assert parent.info.status == "FINISHED"
    ids = {c["run_id"] for c in handle.children}
    assert {r.info.run_id for r in store.runs()} == ids | {handle.parent_run_id}


def test_input_errors_raise_before_anything_runs(api_env, project, store):
    with pytest.raises(ParameterError, match="'x' is not an int"):
        mlexec_core.sweep(str(project(PROJECT)), parameters={"n": "1,x"}, env_manager="local", plugins=api_env)
    assert store.runs() == []


def test_cancel_stops_every_child(api_env, project, store):
    handle = mlexec_core.sweep(str(project(PROJECT)), parameters={"n": "range(0, 6)", "nap": 60},
                               env_manager="local", max_parallel=2, plugins=api_env)
    deadline = time.monotonic() + 60
    while sum(c["status"] == "RUNNING" for c in handle.children) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    handle.cancel()
    result = handle.wait(timeout=60)
    assert result["status"] == "KILLED"
    assert sorted(c["status"] for c in handle.children) == ["KILLED", "KILLED"]
    assert {r.info.status for r in store.runs()} == {"KILLED"}


def test_metric_ranks_children_and_the_best_is_on_the_parent(api_env, project, store):
    proj = project("""
        entry_points:
          main:
            parameters: {x: float}
            command: "$PYTHON -c \\"import mlflow; mlflow.log_metric('score', -({x} - 2) ** 2)\\""
        """)
    import os

    os.environ["PYTHON"] = sys.executable
    try:
        handle = mlexec_core.sweep(str(proj), parameters={"x": "1,2,3.5"}, env_manager="local", metric="score",
                                   goal="maximize", max_parallel=3, plugins=api_env)
        result = handle.wait(timeout=300)
    finally:
        del os.environ["PYTHON"]
    assert [c["params"]["x"] for c in result["children"]] == ["2", "1", "3.5"]
    assert [c["metric"] for c in result["children"]] == [0.0, -1.0, -2.25]
    parent = store.client.get_run(handle.parent_run_id)
    best = result["children"][0]["run_id"]
    assert parent.data.tags["mlexec.sweep.bestRunId"] == best == result["best"]["run_id"]
    assert float(parent.data.tags["mlexec.sweep.bestValue"]) == 0.0


def test_the_docs_example_strategy_runs(project, store, monkeypatch):
    text = (ROOT / "docs" / "plugins.md").read_text()
    [block] = re.findall(r"```python\n(from mlexec_core.plugin import Registration, hookimpl\n"
                         r"from mlexec_core.sweeps.strategy import SearchStrategy\n.*?)```", text, re.S)
    module = types.ModuleType("shortest_first")
    exec(compile(block, "docs/plugins.md (shortest-first)", "exec"), module.__dict__)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    plugins = build_plugins(entry_points=False, extra=[("shortest", module)])
    proj = project("entry_points: {main: {parameters: {w: string}, command: 'echo {w}'}}\n")
    handle = mlexec_core.sweep(str(proj), parameters={"w": "ccc,a,bb"}, strategy="shortest-first",
                               env_manager="local", max_parallel=1, plugins=plugins)
    result = handle.wait(timeout=120)
    assert result["status"] == "FINISHED"
    assert [c["params"]["w"] for c in sorted(result["children"], key=lambda c: c["trial"])] == ["a", "bb", "ccc"]


def test_terminal_shows_a_live_view_and_failures(cli_env, project, store):
    from test_cli import run_in_pty

    proj = project(PROJECT)
    env = {**cli_env, "TERM": "xterm-256color", "COLUMNS": "160"}
    screen = run_in_pty(["sweep", str(proj), "--env-manager", "local", "-P", "n=3,4,5", "-P", "nap=1",
                         "--max-parallel", "3"], env)
    assert "running" in screen and "queued" in screen and "finished" in screen  # the live counts
    assert "#0 n=3 nap=1" in screen and "step n=3" in screen  # a line per running child, with its latest output
    assert "child 1 failed (n=4 nap=1), exit code 1" in screen
    assert "Traceback" not in screen


def test_the_direct_sqlite_store_is_safe_from_many_threads(store):
    import threading

    from mlexec_core.builtins.mlflow.store import forget_store, open_store

    forget_store(store.uri)
    stores, errors, ids = [], [], []

    def work():
        try:
            s = open_store(store.uri)
            stores.append(s)
            for _ in range(10):
                run_id, _ = s.create_run("0", None, {"mlflow.user": "t"}, {"p": "1"})
                s.set_tags(run_id, {"k": "v"})
                s.end_run(run_id, "FINISHED")
                ids.append(run_id)
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({id(s) for s in stores}) == 1 and stores[0].kind == "sqlite"
    runs = store.runs()
    assert sorted(r.info.run_id for r in runs) == sorted(ids) and len(ids) == 80
    assert {(r.info.status, r.data.tags["k"], r.data.params["p"]) for r in runs} == {("FINISHED", "v", "1")}


def test_resources_reach_every_child(api_env, project, store):
    handle = mlexec_core.sweep(str(project(PROJECT)), parameters={"n": [1, 2]}, env_manager="local",
                               resources={"time": "5m"}, plugins=api_env)
    assert handle.wait(timeout=120)["status"] == "FINISHED"
    children = [store.client.get_run(c["run_id"]) for c in handle.children]
    assert [c.data.tags["mlexec.resources.time"] for c in children] == ["5m", "5m"]
    with pytest.raises(UsageError, match="resources gpu-type"):
        mlexec_core.sweep(str(project(PROJECT)), parameters={"n": [1]}, env_manager="local",
                          resources={"gpu-type": "A100"}, plugins=api_env)
