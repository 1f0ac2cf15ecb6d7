"""mlexec: run MLflow projects, better.

The Python API mirrors ``mlflow.projects.run``::

    import mlexec_core
    submitted = mlexec_core.run("examples/wine", parameters={"alpha": 0.5}, env_manager="local")
    submitted.wait()

Heavy modules are imported only when used, so ``import mlexec_core`` is cheap.
"""

from __future__ import annotations

from mlexec_core.version import __version__

from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from mlexec_core.pipeline.execute import SubmittedRun
    from mlexec_core.sweeps import SweepHandle


def run(
    uri: str,
    entry_point: str = "main",
    version: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    docker_args: Mapping[str, Any] | Sequence[str] | None = None,
    experiment_name: str | None = None,
    experiment_id: str | None = None,
    backend: str = "local",
    backend_config: str | Mapping[str, Any] | None = None,
    storage_dir: str | None = None,
    synchronous: bool = True,
    run_id: str | None = None,
    run_name: str | None = None,
    env_manager: str | None = None,
    build_image: bool = False,
    docker_auth: Mapping[str, Any] | None = None,
    resources: Mapping[str, Any] | None = None,
    restart_on_exit: Sequence[int] | str | None = None,
    max_restarts: int | None = None,
    plugins: Any = None,
) -> "SubmittedRun":
    """Run a project, as ``mlflow.projects.run`` does.

    Problems with the input raise :class:`mlexec_core.errors.MlexecError`
    before any run is created.  With ``synchronous=True`` (the default) this
    waits and raises :class:`mlexec_core.errors.RunFailed` if the run did not
    finish; otherwise it returns as soon as the job has started, and a
    watcher thread ends the run in the tracking store when the job ends.

    :param resources: what the run needs, over the MLproject's ``resources:`` (``{"gpus": 1,
        "memory": "16G", "time": "2h"}``; ``None`` as a value drops a key), as ``-R`` does.
    :param restart_on_exit: exit statuses after which the job is started again into the same
        run, up to ``max_restarts`` times (default 3), as ``--restart-on-exit`` and ``--max-restarts``.
    :param plugins: a :class:`~mlexec_core.plugin.manager.Plugins` to use
        instead of the installed ones (tests).
    """
    import threading

    from mlexec_core.errors import RunFailed
    from mlexec_core.pipeline.execute import submit
    from mlexec_core.pipeline.options import RunOptions
    from mlexec_core.pipeline.resolve import resolve_plan
    from mlexec_core.plugin.manager import build_plugins

    import os

    plugins = plugins or build_plugins()
    if experiment_name is None and experiment_id is None:  # as mlflow.projects.run
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or None
        experiment_id = None if experiment_name else os.environ.get("MLFLOW_EXPERIMENT_ID") or None
    parent = None if run_id else _active_mlflow_run_id()
    plan = resolve_plan(plugins, RunOptions(
        uri=uri, entry_point=entry_point, version=version, parameters=parameters or {},
        docker_args=docker_args, resources=resources, experiment_name=experiment_name,
        experiment_id=experiment_id, backend=backend, backend_config=backend_config, env_manager=env_manager,
        storage_dir=storage_dir, run_id=run_id, run_name=run_name, build_image=build_image,
        restart_on_exit=restart_on_exit, max_restarts=max_restarts,
        tags={"mlflow.parentRunId": parent} if parent else {},
        extras={"docker_auth": dict(docker_auth)} if docker_auth else {},
    ))
    submitted = submit(plugins, plan)
    if synchronous:
        if not submitted.wait():
            raise RunFailed(submitted)
    else:
        threading.Thread(target=submitted.wait, name=f"mlexec-run-{submitted.run_id}").start()
    return submitted


def _active_mlflow_run_id() -> str | None:
    """The caller's active MLflow run (``with mlflow.start_run():``), which the new run becomes a child of,
    as with ``mlflow.projects.run``.  Without mlflow imported there can be none (and no import is paid)."""
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return None
    try:
        active = mlflow.active_run()
    except Exception:
        return None
    return active.info.run_id if active is not None else None


def sweep(*args: Any, **kwargs: Any) -> "SweepHandle":
    """Start a sweep, as ``mlexec sweep`` does; see :func:`mlexec_core.sweeps.sweep`
    for the parameters.  Returns a :class:`~mlexec_core.sweeps.SweepHandle` at once
    (``children``, ``wait()``, ``cancel()``)."""
    from mlexec_core.sweeps import sweep as start_sweep

    return start_sweep(*args, **kwargs)


__all__ = ["run", "sweep", "__version__"]
