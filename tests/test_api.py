"""The Python API mirrors mlflow.projects.run: SubmittedRun with wait/get_status/cancel/run_id."""

from __future__ import annotations

import time

import pytest

import mlexec_core
from mlexec_core.errors import ParameterError, RunFailed
from mlexec_core.pipeline.plan import RunStatus
from mlexec_core.plugin.manager import build_plugins

PROJECT = """
entry_points:
  main:
    parameters: {n: {type: int, default: 1}}
    command: "exit $(( {n} - 1 ))"
  slow:
    command: "sleep 300"
"""


@pytest.fixture
def api_env(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.setenv("MLEXEC_STOP_TIMEOUT", "5")
    return build_plugins(entry_points=False)


def test_synchronous_success(api_env, project, store):
    submitted = mlexec_core.run(str(project(PROJECT)), parameters={"n": 1}, env_manager="local", plugins=api_env)
    assert submitted.get_status() is RunStatus.FINISHED
    assert store.only_run().info.run_id == submitted.run_id
    assert store.only_run().info.status == "FINISHED"


def test_synchronous_failure_raises(api_env, project, store):
    with pytest.raises(RunFailed, match="failed: the command exited with status 2") as info:
        mlexec_core.run(str(project(PROJECT)), parameters={"n": 3}, env_manager="local", plugins=api_env)
    assert info.value.submitted.exit_code == 2
    assert store.only_run().info.status == "FAILED"


def test_bad_parameter_raises_before_any_run(api_env, project, store):
    with pytest.raises(ParameterError, match="'x' is not an int"):
        mlexec_core.run(str(project(PROJECT)), parameters={"n": "x"}, env_manager="local", plugins=api_env)
    assert store.runs() == []


def test_asynchronous_run_can_be_cancelled(api_env, project, store):
    submitted = mlexec_core.run(str(project(PROJECT)), entry_point="slow", env_manager="local",
                                synchronous=False, plugins=api_env)
    assert submitted.get_status() is RunStatus.RUNNING  # returned while the job runs
    assert store.only_run().info.status == "RUNNING"
    submitted.cancel()
    assert submitted.wait() is False
    assert submitted.get_status() is RunStatus.KILLED
    assert store.only_run().info.status == "KILLED"


def test_asynchronous_run_finishes_by_itself(api_env, project, store):
    submitted = mlexec_core.run(str(project(PROJECT)), env_manager="local", synchronous=False, plugins=api_env)
    assert submitted.wait() is True
    deadline = time.monotonic() + 30
    while store.only_run().info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.only_run().info.status == "FINISHED"


def test_run_under_an_active_mlflow_run_is_its_child(api_env, project, store):
    """As mlflow.projects.run: the caller's active run becomes mlflow.parentRunId of the new run."""
    import mlflow

    mlflow.set_tracking_uri(store.uri)
    try:
        with mlflow.start_run() as parent:
            submitted = mlexec_core.run(str(project(PROJECT)), env_manager="local", plugins=api_env)
        child = store.client.get_run(submitted.run_id)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        # outside an active run: no parent
        alone = mlexec_core.run(str(project(PROJECT)), env_manager="local", plugins=api_env)
        assert "mlflow.parentRunId" not in store.client.get_run(alone.run_id).data.tags
    finally:
        mlflow.set_tracking_uri(None)
