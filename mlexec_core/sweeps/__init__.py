"""Sweeps: one entry point over many parameter values, tracked as one parent run.

The room holds the sweep spec and its syntax (:mod:`.spec`), the search
strategies and their interface (:mod:`.strategy`), the scheduler
(:mod:`.engine`), what it reads back from MLflow (:mod:`.tracking`) and what
the CLI shows (:mod:`.view`).

The Python API is :func:`sweep` (also ``mlexec_core.sweep``)::

    import mlexec_core
    handle = mlexec_core.sweep("examples/wine", parameters={"alpha": "0.1,0.5,0.9"}, env_manager="local")
    handle.wait()
    handle.children  # one record per child run

Importing it is cheap: the scheduler, MLflow and the strategies' libraries load when a sweep runs.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping, Sequence


class SweepHandle:
    """A sweep running in a background thread: ``children``, ``wait()``, ``cancel()``."""

    def __init__(self, runner) -> None:
        self._runner = runner
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mlexec-sweep", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._runner.run()
        except BaseException as exc:  # raised again from wait()
            self._error = exc

    @property
    def parent_run_id(self) -> str | None:
        """The parent run's id, once it exists."""
        return self._runner.parent.run_id if self._runner.parent else None

    @property
    def children(self) -> list[dict[str, Any]]:
        """Every child so far (each attempt), as ``--json`` shows them: trial, run_id, params, status, metric ..."""
        return [c.to_dict() for c in list(self._runner.children)]

    @property
    def status(self):
        """The parent's final :class:`~mlexec_core.pipeline.plan.RunStatus`, once :meth:`wait` has returned."""
        return self._runner.status

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until the sweep ends; return what ``--json`` prints (``None`` if ``timeout`` passed first)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return None
        if self._error is not None:
            raise self._error
        return self._runner.summary()

    def cancel(self) -> None:
        """Stop every running child and start no more; they and the parent end KILLED."""
        import signal

        self._runner.stop(signal.SIGTERM)


def sweep(
    uri: str | None = None,
    entry_point: str | None = None,
    parameters: Mapping[str, Any] | Sequence[str] = (),
    *,
    sweep_file: str | None = None,
    strategy: str | None = None,
    trials: int | None = None,
    seed: int | None = None,
    metric: str | None = None,
    goal: str | None = None,
    max_parallel: int | None = None,
    max_failures: int | None = None,
    fail_fast: bool = False,
    retries: int | None = None,
    resume: str | None = None,
    version: str | None = None,
    docker_args: Sequence[str] | Mapping[str, Any] = (),
    resources: Mapping[str, Any] | None = None,
    restart_on_exit: Sequence[int] | str | None = None,
    max_restarts: int | None = None,
    experiment_name: str | None = None,
    experiment_id: str | None = None,
    backend: str | None = None,
    backend_config: str | Mapping[str, Any] | None = None,
    env_manager: str | None = None,
    storage_dir: str | None = None,
    run_name: str | None = None,
    build_image: bool = False,
    plugins: Any = None,
) -> SweepHandle:
    """Start a sweep, as ``mlexec sweep`` does, and return a :class:`SweepHandle` at once.

    ``parameters`` maps names to the same values ``-P`` takes (``"0.1,0.2"``,
    ``"range(1, 5)"``, ``"uniform(0, 1)"``) or to a Python list of values.
    ``resources`` is what every child needs (``{"gpus": 1}``), over the sweep file's and the
    MLproject's, as ``-R`` does.
    Problems with the input raise :class:`~mlexec_core.errors.MlexecError` here,
    before anything runs; preparing the environment happens here too.
    """
    from pathlib import Path

    from mlexec_core.pipeline.options import RunOptions
    from mlexec_core.plugin.manager import build_plugins
    from mlexec_core.sweeps.engine import Sweep, plan_sweep
    from mlexec_core.sweeps.spec import build_spec

    plugins = plugins or build_plugins()
    spec = build_spec(parameters, sweep_file=Path(sweep_file) if sweep_file else None, strategy=strategy,
                      trials=trials, seed=seed, metric=metric, goal=goal, max_parallel=max_parallel,
                      max_failures=max_failures, fail_fast=fail_fast or None, retries=retries,
                      entry_point=entry_point)
    options = RunOptions(uri=uri, version=version, docker_args=docker_args, resources=resources or {},
                         experiment_name=experiment_name, experiment_id=experiment_id, backend=backend,
                         backend_config=backend_config, env_manager=env_manager, storage_dir=storage_dir,
                         run_name=run_name, build_image=build_image, restart_on_exit=restart_on_exit,
                         max_restarts=max_restarts)
    plan = plan_sweep(plugins, options, spec, resume=resume)
    runner = Sweep(plugins, plan)
    runner.prepare()
    return SweepHandle(runner)
