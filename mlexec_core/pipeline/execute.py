"""Running a resolved plan: prepare, create the run, submit, wait, finish.

The order is what keeps the tracking store honest: the environment (and any
image) is prepared *before* the run is created, so a failed install leaves
no run; once the run exists, every path out, including Ctrl-C, SIGTERM and
bugs, ends it with FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from mlexec_core.pipeline.plan import RunPlan, RunRecord, RunStatus
from mlexec_core.plugin.interfaces import PreparedEnvironment, SubmittedJob
from mlexec_core.plugin.manager import Plugins


class SubmittedRun:
    """A started run, as ``mlflow.projects.SubmittedRun``: ``wait()``, ``get_status()``,
    ``cancel()``, ``run_id``.  Thread-safe."""

    def __init__(self, plugins: Plugins, plan: RunPlan, run: RunRecord, job: SubmittedJob,
                 environment: PreparedEnvironment | None) -> None:
        self.plugins = plugins
        self.plan = plan
        self.run = run
        self.job = job
        self.environment = environment
        self._lock = threading.Lock()
        self._status: RunStatus | None = None
        self.failure_reason: str | None = None

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def wait(self) -> bool:
        """Block until the run ends; ``True`` if it succeeded."""
        try:
            status = self.job.wait()
        except BaseException as exc:  # interrupted while waiting, or a backend bug
            self.job.cancel()
            self._finish(RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED,
                         f"{type(exc).__name__}: {exc}".rstrip(": "))
            raise
        self._finish(status, self.job.failure_reason)
        return status is RunStatus.FINISHED

    def get_status(self) -> RunStatus:
        return self._status or self.job.get_status()

    def cancel(self, signum: int | None = None) -> None:
        """Stop the job and all it started; the run ends KILLED."""
        self.job.cancel(signum)

    @property
    def status(self) -> RunStatus | None:
        """The final status, once :meth:`wait` has returned."""
        return self._status

    @property
    def exit_code(self) -> int | None:
        return self.job.exit_code

    def _finish(self, status: RunStatus, reason: str | None) -> None:
        with self._lock:
            if self._status is not None:
                return
            self._status = status
            self.failure_reason = reason
        if self.job.tags:
            self.plugins.hook.mlexec_run_tags(run=self.run, tags=dict(self.job.tags))
        self.plugins.hook.mlexec_run_finished(run=self.run, plan=self.plan, status=status, reason=reason)


def prepare_environment(plugins: Plugins, plan: RunPlan) -> PreparedEnvironment | None:
    backend = plugins.backend(plan.backend)
    if not backend.uses_local_environment(plan):
        return None
    return plugins.environment_manager(plan.env_manager).prepare(plan)


def submit(plugins: Plugins, plan: RunPlan) -> SubmittedRun:
    """Prepare, create the run, and start the job; return without waiting."""
    backend = plugins.backend(plan.backend)
    environment = prepare_environment(plugins, plan)
    prepared: Any = backend.prepare(plan, environment)

    run = plugins.hook.mlexec_run_create(plan=plan) or RunRecord(run_id=uuid.uuid4().hex)
    try:
        tags = {"mlflow.project.backend": backend.name}
        if environment is not None:
            tags["mlflow.project.env"] = environment.name
            tags.update(environment.tags)
        plugins.hook.mlexec_run_tags(run=run, tags=tags)
        job = backend.submit(plan, run, prepared)
    except BaseException as exc:
        status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
        plugins.hook.mlexec_run_finished(run=run, plan=plan, status=status,
                                         reason=f"{type(exc).__name__}: {exc}".rstrip(": "))
        raise
    submitted = SubmittedRun(plugins, plan, run, job, environment)
    plugins.hook.mlexec_run_started(run=run, plan=plan)
    return submitted
