"""Running a resolved plan: prepare, create the run, submit, wait, finish.

The order is what keeps the tracking store honest: the environment (and any
image) is prepared *before* the run is created, so a failed install leaves
no run; once the run exists, every path out, including Ctrl-C, SIGTERM and
bugs, ends it with FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
from attrs import frozen

from mlexec_core.pipeline.output import RunOutput
from mlexec_core.pipeline.plan import RunPlan, RunRecord, RunStatus
from mlexec_core.plugin.interfaces import PreparedEnvironment, SubmittedJob
from mlexec_core.plugin.manager import Plugins


#: Every attempt of a run that may be started again: its number (1, 2 ...) and the folder the attempts share.
ATTEMPT_VAR = "MLEXEC_ATTEMPT"
CHECKPOINT_VAR = "MLEXEC_CHECKPOINT_DIR"


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
        self._recorded = threading.Event()  # set once the end is in the tracking store
        self.failure_reason: str | None = None
        self._cancel_requested = False
        self._cancels = 0  # cancel() calls still running
        self._cancels_done = threading.Event()
        self._cancels_done.set()
        #: Pids of the job's processes that were still running on this machine when the job
        #: ended, and that mlexec stopped (the stop contract, :mod:`mlexec_core.pipeline.stopping`).
        self.left_behind: list[int] = []
        #: The job's tags as written to the run so far.
        self._tags_written: dict[str, str] = {}
        #: What :func:`prepare` made, to start the job again (set by :func:`start`).
        self._prepared: Prepared | None = None
        #: Which attempt the job is (``--restart-on-exit``, a preempted job): 1, 2 ...
        self.attempt = 1
        #: Why the job was not started again although its end asked for it (``--max-restarts`` used up).
        self._restart_refused: str | None = None

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def wait(self, job_ended: Callable[[RunStatus], None] | None = None) -> bool:
        """Block until the run ends; ``True`` if it succeeded.

        ``job_ended``, if given, is called with the job's status once the job is over and
        nothing of it runs any more, before its end is recorded (a sweep starts its next
        child then).

        Before the end is recorded: a ``cancel()`` still running (on another thread)
        is waited for, up to :func:`~mlexec_core.pipeline.stopping.cancel_timeout`;
        and whatever of the job is still running on this machine is stopped, with
        its process groups (SIGTERM, the stop timeout, SIGKILL).  A cancelled job
        that did not finish is recorded KILLED, whatever the backend said.
        """
        try:
            status = self.job.wait()
            while (why := self._restart_reason(status)) is not None:
                self._end_job()  # nothing of this attempt runs any more
                if not self._start_again(why):
                    break
                status = self.job.wait()
        except BaseException as exc:  # interrupted while waiting, or a backend bug
            try:
                self.cancel()
            finally:
                try:
                    self._end_job()
                finally:
                    self._finish(RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED,
                                 f"{type(exc).__name__}: {exc}".rstrip(": "))
            raise
        reason = self.job.failure_reason
        if status is RunStatus.FAILED and self._restart_refused is not None:
            reason = self._restart_refused
        try:
            self._end_job()
            if job_ended is not None:
                job_ended(status)
        finally:  # the end is recorded even if the sweep is interrupted
            if self._cancel_requested and status is not RunStatus.FINISHED and status is not RunStatus.KILLED:
                status, reason = RunStatus.KILLED, reason or "stopped by the user"
            self._finish(status, reason)
        return status is RunStatus.FINISHED

    def get_status(self) -> RunStatus:
        return self._status or self.job.get_status()

    def cancel(self, signum: int | None = None) -> None:
        """Stop the job and all it started; the run ends KILLED.  May be called from
        another thread while :meth:`wait` blocks, and more than once."""
        with self._lock:
            self._cancel_requested = True
            self._cancels += 1
            self._cancels_done.clear()
            job = self.job  # the attempt running now (a restart checks the request under this lock)
        try:
            job.cancel(signum)
        finally:
            with self._lock:
                self._cancels -= 1
                if self._cancels == 0:
                    self._cancels_done.set()

    def _restart_reason(self, status: RunStatus) -> str | None:
        """Why the job that ended with ``status`` is started again, or ``None``."""
        restarts = self.plan.restarts
        if status is not RunStatus.FAILED or self._cancel_requested or self._prepared is None:
            return None
        if self.plan.resources.time is not None:  # stopped at its time limit: the run is over, whatever the code
            from mlexec_core.resources import time_limit_reason

            if self.job.failure_reason == time_limit_reason(self.plan.resources.time):
                return None
        code = self.job.exit_code
        if code is not None and code in restarts.exit_codes:
            why = f"exited with status {code} (--restart-on-exit)"
        else:
            why = getattr(self.job, "restart_reason", None)
        if why is not None and self.attempt > restarts.max_restarts:
            self._restart_refused = _not_restarted(self.job.failure_reason or f"the job {why}", restarts)
            return None
        return why

    def _restarted_by_backend(self, reason: str) -> bool:
        """The job's scheduler started it again by itself (SubmittedJob.report_restart):
        count the attempt, or refuse it (``False``)."""
        plan = self.plan
        with self._lock:
            if self._cancel_requested or self._status is not None:
                return False
            if self.attempt > plan.restarts.max_restarts:
                self._restart_refused = _not_restarted(reason, plan.restarts)
                return False
            self.attempt += 1
            attempt = self.attempt
            self.run = run = attrs.evolve(self.run, env={**self.run.env, ATTEMPT_VAR: str(attempt)})
        run.output.write(f"mlexec: the job {reason}: attempt {attempt} of at most "
                         f"{plan.restarts.max_restarts + 1}, into the same run\n".encode(), "stderr")
        self.plugins.run_restarted(run=run, plan=plan, attempt=attempt, reason=reason)
        return True

    def _listen(self, job: SubmittedJob) -> None:
        """Follow what ``job`` reports: queued or running again, started again by its scheduler."""
        job.status_listener = self._report_status
        job.restart_listener = self._restarted_by_backend

    def _start_again(self, why: str) -> bool:
        """Start the next attempt into the same run: SCHEDULED, then RUNNING once it runs;
        ``False`` (nothing started) when a stop was asked for meanwhile."""
        from mlexec_core.pipeline.stopping import MARK_VAR, new_mark

        plugins, plan = self.plugins, self.plan
        attempt = self.attempt + 1
        self.run.output.write(f"mlexec: the job {why}: attempt {attempt} of at most "
                              f"{plan.restarts.max_restarts + 1}, into the same run\n".encode(), "stderr")
        run = attrs.evolve(self.run, env={**self.run.env, ATTEMPT_VAR: str(attempt), MARK_VAR: new_mark()})
        plugins.run_restarted(run=run, plan=plan, attempt=attempt, reason=why)
        with self._lock:
            if self._cancel_requested:
                return False
            job = plugins.backend(plan.backend).submit(plan, run, self._prepared.backend)
            self.run, self.job, self.attempt = run, job, attempt
        self._tags_written = {}
        self._listen(job)
        if job.get_status() is RunStatus.RUNNING:
            plugins.run_status(run=run, plan=plan, status=RunStatus.RUNNING)
        self._write_job_tags()
        return True

    def _end_job(self) -> None:
        """The stop contract's core side, once the job's wait() is over."""
        from mlexec_core.pipeline.stopping import cancel_timeout

        reporter = self.plugins.context.reporter
        if self._cancel_requested and not self._cancels_done.wait(cancel_timeout()):
            reporter.warning(f"backend {self.plan.backend!r}: cancel() did not return within "
                             f"{cancel_timeout():.0f} s; the job may still be running where it was submitted")
        self.left_behind = _end_job_processes(self.run, self.plan, reporter)

    @property
    def status(self) -> RunStatus | None:
        """The final status, once :meth:`wait` has returned."""
        return self._status

    @property
    def exit_code(self) -> int | None:
        return self.job.exit_code

    @property
    def pending_reason(self) -> str | None:
        """Why a queued job is not running yet (a scheduler's reason), while ``get_status()`` is SCHEDULED."""
        return None if self._status is not None else getattr(self.job, "pending_reason", None)

    @property
    def output(self) -> RunOutput:
        """What the job printed (:class:`~mlexec_core.pipeline.output.RunOutput`)."""
        return self.run.output

    def _report_status(self, status: RunStatus) -> None:
        """A queued job started, or a started one was queued again (SubmittedJob.report_status).
        A job that started after waiting has its tags now (the devices it got): they are written."""
        if self._status is None:
            self.plugins.run_status(run=self.run, plan=self.plan, status=status)
            if status is RunStatus.RUNNING:
                self._write_job_tags()

    def _write_job_tags(self) -> None:
        """The job's tags not written yet (each once: a tag write is a store round trip)."""
        tags = dict(self.job.tags)
        with self._lock:
            new = {k: v for k, v in tags.items() if self._tags_written.get(k) != v}
            self._tags_written.update(new)
        if new:
            self.plugins.run_tags(run=self.run, tags=new)

    def _finish(self, status: RunStatus, reason: str | None) -> None:
        """Record the end once; a second ``wait()`` (the API's watcher thread and the
        caller's) returns only when the first has recorded it."""
        with self._lock:
            if self._status is not None:
                first = False
            else:
                first = True
                self._status = status
                self.failure_reason = reason
        if not first:
            self._recorded.wait()
            return
        try:
            self._write_job_tags()
            _finish_run(self.plugins, self.run, self.plan, status, reason)
        finally:
            self._recorded.set()


def _end_job_processes(run: RunRecord, plan: RunPlan, reporter) -> list[int]:
    """Stop what of the job still runs on this machine (marked with the run's mark)."""
    from mlexec_core.pipeline.stopping import MARK_VAR, end_marked_processes
    from mlexec_core.pipeline.stopping import stop_timeout

    mark = run.env.get(MARK_VAR)
    if not mark:
        return []
    left = end_marked_processes(mark, stop_timeout())
    if left:
        shown = ", ".join(map(str, left[:5])) + (" ..." if len(left) > 5 else "")
        reporter.warning(f"the job left {len(left)} process{'es' if len(left) > 1 else ''} running on this "
                         f"machine after it ended (pid {shown}); mlexec stopped "
                         f"{'them' if len(left) > 1 else 'it'} with {'their' if len(left) > 1 else 'its'} "
                         f"process group (backend {plan.backend!r})")
    return left


def _record(plugins: Plugins, plan: RunPlan, run: RunRecord, environment: PreparedEnvironment | None) -> None:
    """Keep with the run what it runs (:mod:`mlexec_core.reproduce`): its record, the
    environment's lock, the code's patch or snapshot; tags saying whether the code was committed."""
    from mlexec_core.reproduce import record_files, recording

    if not recording():
        return
    files, tags, warnings = record_files(plan, environment, plugins.versions(), run.experiment_id)
    for warning in warnings:
        plugins.context.reporter.warning(warning)
    plugins.run_tags(run=run, tags=tags)
    plugins.run_record(run=run, plan=plan, files=files)


def _may_restart(backend: Any, plan: RunPlan) -> bool:
    """Whether the run's job may be started again: restarts asked for, or a scheduler that requeues."""
    return plan.restarts.asked or "requeues" in backend.registration.capabilities


def _not_restarted(reason: str, restarts: Any) -> str:
    """Why a job that asked to be started again was not (``--max-restarts``)."""
    if restarts.max_restarts == 0:
        return f"{reason}; not started again (--max-restarts 0)"
    return f"{reason}; not started again: --max-restarts {restarts.max_restarts} used up"


def _finish_run(plugins: Plugins, run: RunRecord, plan: RunPlan, status: RunStatus, reason: str | None) -> None:
    """End the run: close its output (the tracker stores the log), then tell every plugin."""
    run.output.close()
    try:
        plugins.run_finished(run=run, plan=plan, status=status, reason=reason)
    finally:
        run.output.discard()


@frozen
class Prepared:
    """What :func:`prepare` made ready, before any run exists."""

    environment: PreparedEnvironment | None
    backend: Any


def prepare(plugins: Plugins, plan: RunPlan) -> Prepared:
    """Prepare the environment and let the backend do its pre-run work (build, push).

    Nothing exists in the tracking store yet: an error or Ctrl-C here leaves no run.
    """
    backend = plugins.backend(plan.backend)
    backend.check(plan)
    environment = None
    if backend.uses_local_environment(plan):
        with _environment_root(backend.environment_root(plan)):
            environment = plugins.environment_manager(plan.env_manager).prepare(plan)
    return Prepared(environment, backend.prepare(plan, environment))


@contextlib.contextmanager
def _environment_root(root: Path | None) -> Iterator[None]:
    """``$MLEXEC_ENV_ROOT`` set to ``root`` (a backend's shared folder) while the environment is prepared."""
    if root is None:
        yield
        return
    from mlexec_core.envcache import ENV_ROOT_VAR

    old = os.environ.get(ENV_ROOT_VAR)
    os.environ[ENV_ROOT_VAR] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_ROOT_VAR, None)
        else:
            os.environ[ENV_ROOT_VAR] = old


def start(plugins: Plugins, plan: RunPlan, prepared: Prepared, *, output: RunOutput | None = None,
          announce: Callable[[RunRecord], None] | None = None) -> SubmittedRun:
    """Create the run and start the job; return without waiting.

    From the moment the run exists, every way out ends it (FAILED, or KILLED for
    an interrupt).  ``announce(run)``, if given, is called once the run exists and
    before the job is submitted (the CLI prints its ``=== Run ... ===`` header
    there, so it comes before the job's first line, as in MLflow).

    :param output: where the job's output goes (``run.output``); by default a
        :class:`~mlexec_core.pipeline.output.RunOutput` that shows it on mlexec's
        stdout and stderr.  Either way it is kept with the run.
    """
    backend = plugins.backend(plan.backend)
    environment = prepared.environment
    run = plugins.run_create(plan) or RunRecord(run_id=uuid.uuid4().hex)
    from mlexec_core.pipeline.stopping import MARK_VAR, new_mark

    run = attrs.evolve(run, output=output if output is not None else RunOutput(),
                       env={**run.env, MARK_VAR: new_mark()})
    try:
        tags = {"mlflow.project.backend": backend.name}
        if environment is not None:
            tags["mlflow.project.env"] = environment.name
            tags.update(environment.tags)
        if _may_restart(backend, plan):  # the attempts share a folder that belongs to the run
            run = attrs.evolve(run, env={**run.env, ATTEMPT_VAR: "1",
                                         CHECKPOINT_VAR: backend.checkpoint_dir(plan, run)})
            tags["mlexec.attempt"] = "1"
        plugins.run_tags(run=run, tags=tags)
        _record(plugins, plan, run, environment)
        if announce is not None:
            announce(run)
        job = backend.submit(plan, run, prepared.backend)
        if job.tags:  # visible while the job runs (image digest, Job name ...)
            plugins.run_tags(run=run, tags=dict(job.tags))
    except BaseException as exc:
        status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
        try:
            _end_job_processes(run, plan, plugins.context.reporter)  # what submit() started before failing
        finally:
            _finish_run(plugins, run, plan, status, f"{type(exc).__name__}: {exc}".rstrip(": "))
        raise
    submitted = SubmittedRun(plugins, plan, run, job, environment)
    submitted._tags_written = dict(job.tags)
    submitted._prepared = prepared
    plugins.run_started(run=run, plan=plan)
    submitted._listen(job)
    return submitted


def start_many(plugins: Plugins, base: RunPlan, plans: list[RunPlan], prepared: Prepared, *,
               outputs: list[RunOutput], max_parallel: int) -> list[SubmittedRun]:
    """Create one run per plan, then start them all with the backend's native fan-out
    (:meth:`~mlexec_core.plugin.interfaces.Backend.submit_many`); return without waiting.

    Every run exists before the submission; if it fails (or Ctrl-C), every run is
    ended FAILED (KILLED) and the error raised, as :func:`start` does for one.
    """
    from mlexec_core.errors import PluginError
    from mlexec_core.pipeline.stopping import MARK_VAR, new_mark

    backend = plugins.backend(base.backend)
    environment = prepared.environment
    runs: list[RunRecord] = []
    try:
        for plan, output in zip(plans, outputs):
            run = plugins.run_create(plan) \
                or RunRecord(run_id=uuid.uuid4().hex)
            run = attrs.evolve(run, output=output, env={**run.env, MARK_VAR: new_mark()})
            runs.append(run)
            tags = {"mlflow.project.backend": backend.name}
            if environment is not None:
                tags["mlflow.project.env"] = environment.name
                tags.update(environment.tags)
            plugins.run_tags(run=run, tags=tags)
            _record(plugins, plan, run, environment)
        jobs = list(backend.submit_many(base, list(zip(plans, runs)), prepared.backend, max_parallel))
        if len(jobs) != len(runs):
            for job in jobs:
                job.cancel()
            raise PluginError(f"backend {backend.name!r}: submit_many returned {len(jobs)} jobs for "
                              f"{len(runs)} children")
        for run, job in zip(runs, jobs):
            if job.tags:
                plugins.run_tags(run=run, tags=dict(job.tags))
    except BaseException as exc:
        status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
        for run, plan in zip(runs, plans):
            try:
                _end_job_processes(run, plan, plugins.context.reporter)
            finally:
                _finish_run(plugins, run, plan, status, f"{type(exc).__name__}: {exc}".rstrip(": "))
        raise
    started = []
    for plan, run, job in zip(plans, runs, jobs):
        submitted = SubmittedRun(plugins, plan, run, job, environment)
        submitted._tags_written = dict(job.tags)
        plugins.run_started(run=run, plan=plan)
        submitted._listen(job)
        started.append(submitted)
    return started


def submit(plugins: Plugins, plan: RunPlan, *, output: RunOutput | None = None) -> SubmittedRun:
    """:func:`prepare`, then :func:`start`."""
    return start(plugins, plan, prepare(plugins, plan), output=output)
