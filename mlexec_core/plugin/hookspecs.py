"""Every hook mlexec calls, in one module.

Two kinds of hook:

* **Registration hooks** return :class:`~mlexec_core.plugin.Registration`
  records, the one place a plugin writes what mlexec knows about a class (name,
  description, capabilities, where it lives); mlexec collects them by name
  (duplicates are an error naming both plugins), imports a class only when a
  run selects it, and instantiates it with a
  :class:`~mlexec_core.plugin.interfaces.Context` carrying its record.
* **Run lifecycle hooks** fire as a run goes through its life; trackers
  implement them.  The built-in MLflow tracker is one such plugin, registered
  through the very same hooks.  Only :func:`mlexec_run_create` returns a value;
  what the others return is ignored, and one of them that raises is reported as
  a warning naming its plugin while the other implementations still run.

Hooks are called with keyword arguments, so an implementation may accept
fewer arguments than the spec lists; arguments can be added later without
breaking plugins.  mlexec calls them only through the methods of
:class:`~mlexec_core.plugin.manager.Plugins` (one per hook), always through
pluggy, so ``wrapper=True`` implementations run.  The docs (docs/plugins.md) carry one section per hook, and
a test fails when a hook here is undocumented.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping

import pluggy

if TYPE_CHECKING:
    from mlexec_core.pipeline.plan import RunPlan, RunRecord, RunStatus
    from mlexec_core.plugin.interfaces import Context
    from mlexec_core.plugin.registration import Registration

hookspec = pluggy.HookspecMarker("mlexec")


# -- registration ------------------------------------------------------------------------


@hookspec
def mlexec_environment_managers() -> Iterable[Registration]:
    """Register environment managers (``--env-manager`` values).

    :return: ``Registration(kind="env-manager", ...)`` records, each naming an
        :class:`~mlexec_core.plugin.interfaces.EnvironmentManager` subclass.
    """


@hookspec
def mlexec_backends() -> Iterable[Registration]:
    """Register backends (``--backend`` values).

    :return: ``Registration(kind="backend", ...)`` records, each naming a
        :class:`~mlexec_core.plugin.interfaces.Backend` subclass (capabilities:
        ``detachable``, ``fan-out``, ``command-in-script``).
    """


@hookspec
def mlexec_image_builders() -> Iterable[Registration]:
    """Register image builders, which backends that need a container image use.

    :return: ``Registration(kind="image-builder", ...)`` records, each naming an
        :class:`~mlexec_core.plugin.interfaces.ImageBuilder` subclass.
    """


@hookspec
def mlexec_search_strategies() -> Iterable[Registration]:
    """Register search strategies for ``mlexec sweep`` (``--strategy`` values).

    The built-in ``grid`` and ``random`` come through this hook too.

    :return: ``Registration(kind="search-strategy", ...)`` records, each naming a
        :class:`~mlexec_core.sweeps.strategy.SearchStrategy` subclass (capabilities:
        ``adaptive``, ``finite``).
    """


# -- run lifecycle ------------------------------------------------------------------------


@hookspec(firstresult=True)
def mlexec_run_create(plan: RunPlan, context: Context) -> RunRecord | None:
    """Open the run in a tracking system, after the plan is validated and the
    environment prepared, just before the job is submitted.

    The first tracker to return a record owns the run: its ``run_id`` and
    ``env`` (``MLFLOW_RUN_ID`` ...) go to the job.  Return ``None`` to let
    another tracker answer; when none does, the run is untracked and gets a
    random id.  Raise :class:`~mlexec_core.errors.TrackingError` when the
    store refuses (an unknown experiment): nothing has run yet.

    :param plan: the resolved run.
    :param context: ``context.reporter`` talks to the user (a spinner around a slow store).
    """


@hookspec
def mlexec_run_started(run: RunRecord, plan: RunPlan) -> None:
    """The backend has accepted the job; it is running (or queued).

    :param run: the record from :func:`mlexec_run_create`.
    :param plan: the resolved run.
    """


@hookspec
def mlexec_run_restarted(run: RunRecord, plan: RunPlan, attempt: int, reason: str) -> None:
    """The job ended and is started again into the same run (``--restart-on-exit``, a
    preempted job): attempt ``attempt`` (2, 3 ...) is about to be submitted.

    The run goes on: trackers put it back to SCHEDULED, even if the last attempt's own
    MLflow client ended it when its process exited, and count the attempt.  Called from
    the thread that follows the job, between the end of one attempt and the start of the
    next; :func:`mlexec_run_status` follows (RUNNING) once the new attempt runs.

    :param run: the record from :func:`mlexec_run_create`, its ``env`` that of the new attempt.
    :param plan: the resolved run.
    :param attempt: the number of the attempt about to start.
    :param reason: why, in one line (``exited with status 75 (--restart-on-exit)``).
    """


@hookspec
def mlexec_run_status(run: RunRecord, plan: RunPlan, status: RunStatus) -> None:
    """The job moved between queued and running before it ended: SCHEDULED while a
    batch scheduler holds it in its queue, RUNNING once it starts (again, after a requeue).

    Only backends whose jobs can wait in a queue report it (through
    :meth:`~mlexec_core.plugin.interfaces.SubmittedJob.report_status`); for the
    others a run is RUNNING from :func:`mlexec_run_started` to
    :func:`mlexec_run_finished`.  Called from the thread that follows the job.

    :param run: the record from :func:`mlexec_run_create`.
    :param plan: the resolved run.
    :param status: SCHEDULED or RUNNING.
    """


@hookspec
def mlexec_run_tags(run: RunRecord, tags: Mapping[str, str]) -> None:
    """Tags to record on the run: the core's own (``mlflow.project.backend``,
    ``mlflow.project.env``) with the prepared environment's, before the job is
    submitted; then the job's :attr:`~mlexec_core.plugin.interfaces.SubmittedJob.tags`
    (``mlflow.docker.image.id``, a Job name ...), right after the backend accepted
    it and again once it has ended.  So it may fire several times for one run.

    :param run: the record from :func:`mlexec_run_create`.
    :param tags: tag names to string values.
    """


@hookspec
def mlexec_run_record(run: RunRecord, plan: RunPlan, files: Mapping[str, bytes]) -> None:
    """Keep these files with the run: the run's record of what it ran
    (:mod:`mlexec_core.reproduce`), written once, after the run exists and before
    the job is submitted.  ``files`` maps artifact paths (``mlexec/run.json``,
    ``mlexec/environment.lock``, ``mlexec/source.patch`` ...) to their contents.
    The built-in MLflow tracker stores them as the run's artifacts.

    :param run: the record from :func:`mlexec_run_create`.
    :param plan: the resolved run.
    :param files: artifact path -> contents.
    """


@hookspec
def mlexec_run_finished(run: RunRecord, plan: RunPlan, status: RunStatus, reason: str | None) -> None:
    """The run has ended; always called once for every created run, whatever
    happened (including Ctrl-C and errors inside mlexec).

    :param run: the record from :func:`mlexec_run_create`.
    :param plan: the resolved run.
    :param status: FINISHED, FAILED or KILLED.
    :param reason: why it failed or was killed, in one line; ``None`` on success.
    """
