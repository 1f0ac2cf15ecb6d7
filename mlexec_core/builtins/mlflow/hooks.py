"""The built-in ``mlflow`` tracker: records every run in MLflow tracking.

Its hooks create the run (after repairing runs whose mlexec is gone), set its
tags and statuses, keep a live copy of its output for ``mlexec logs -f``, and
record its end with its output log, keeping the final status locally when the
store cannot be reached.  Which store and how it is written:
:mod:`mlexec_core.builtins.mlflow.store`.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Mapping

from mlexec_core.builtins.mlflow.store import TrackingStore, open_store, tracking_uri
from mlexec_core.errors import TrackingError
from mlexec_core.pipeline import livelog
from mlexec_core.pipeline.output import ARTIFACT_PATH as OUTPUT_ARTIFACT
from mlexec_core.pipeline.plan import RunPlan, RunRecord, RunStatus
from mlexec_core.plugin import hookimpl
from mlexec_core.plugin.interfaces import Context
from mlexec_core.sources.urls import redact, scrub, secrets_of

#: Why a run failed or was killed, in one line (set by mlexec when it ends the run).
FAILURE_REASON_TAG = "mlexec.failureReason"
MAX_TAG_VALUE = 8000
#: The run's tag counting its attempts (a job started again into the same run).
ATTEMPT_TAG = "mlexec.attempt"
#: ``mlexec.resources.gpus = 1`` ...: the resources a run asked for, as a user writes them.
RESOURCE_TAG_PREFIX = "mlexec.resources."


def _run_tags(plan: RunPlan) -> dict[str, str]:
    source = plan.source
    tags = {
        "mlflow.user": _user(),
        # the URI as the user gave it (credentials removed); for a directory used in place
        # inside a git work tree, file://<root>#<subdirectory>, as mlflow run does
        "mlflow.source.name": source.name or source.uri,
        "mlflow.source.type": "PROJECT",
        "mlflow.project.entryPoint": plan.entry_point.name,
        "mlflow.project.backend": plan.backend,
    }
    if source.git_commit:
        tags["mlflow.source.git.commit"] = source.git_commit
    if source.git_repo_url:
        tags["mlflow.source.git.repoURL"] = source.git_repo_url
    if source.git_branch:
        tags["mlflow.source.git.branch"] = source.git_branch
    for key, value in plan.resources.shown().items():  # what was asked; what it got comes from the job
        tags[f"{RESOURCE_TAG_PREFIX}{key}"] = value
    parent = os.environ.get("MLFLOW_RUN_ID")
    if parent and not plan.tracking.run_id:
        tags["mlflow.parentRunId"] = parent
    tags.update(plan.tracking.tags)
    from mlexec_core import supervisor

    tags.update(supervisor.record())
    return {k: v[:MAX_TAG_VALUE] for k, v in tags.items()}


def _user() -> str:
    """``getpass.getuser()``, without importing getpass (and termios) on every run."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        import pwd

        return pwd.getpwuid(os.getuid())[0]
    except Exception:
        return "unknown"


#: Seconds between two repairs of one store by one process (a sweep creates runs by the hundred).
REPAIR_INTERVAL = 30.0
_repaired: dict[str, float] = {}
_repair_lock = threading.Lock()
#: The live log path written with each run at its creation (sqlite stores), until it starts.
_live_paths: dict[str, str] = {}


def _repair_due(uri: str) -> bool:
    now = time.monotonic()
    with _repair_lock:
        last = _repaired.get(uri)
        if last is not None and now - last < REPAIR_INTERVAL:
            return False
        _repaired[uri] = now
        return True


@hookimpl
def mlexec_run_create(plan: RunPlan, context: Context) -> RunRecord:
    uri = tracking_uri()
    store = open_store(uri)
    if not store.connected:
        with context.reporter.status(f"Opening the MLflow tracking store {redact(uri)} "
                                     "(through MLflow: a few seconds)"):
            store.connect()
    if _repair_due(uri):
        repair_store(store, context.reporter)
    params = plan.logged_params()
    if plan.tracking.run_id:
        experiment_id, run_name = store.attach(plan.tracking.run_id, params)
        run_id = plan.tracking.run_id
        store.set_tags(run_id, _run_tags(plan))
    else:
        experiment_id = store.experiment_id(plan.tracking.experiment_name, plan.tracking.experiment_id)
        tags = _run_tags(plan)
        if store.kind == "sqlite":  # the live log's path is known: write it with the run, not after
            import uuid

            from mlexec_core import supervisor

            new_id = uuid.uuid4().hex
            live = str(livelog.live_dir() / f"{new_id}.log")  # as start_live_log names it (checked there)
            run_id, run_name = store.create_run(experiment_id, plan.tracking.run_name,
                                                {**tags, supervisor.LOG_TAG: live}, params, run_id=new_id)
            _live_paths[run_id] = live
        else:
            run_id, run_name = store.create_run(experiment_id, plan.tracking.run_name, tags, params)
    env = {"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": str(experiment_id)}
    return RunRecord(run_id=run_id, experiment_id=str(experiment_id), tracking_uri=uri, env=env,
                     tracker="mlflow", run_name=run_name)


@hookimpl
def mlexec_run_tags(run: RunRecord, tags: Mapping[str, str]) -> None:
    if run.tracker == "mlflow" and tags:
        open_store(run.tracking_uri).set_tags(run.run_id, {k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()})


def repair_store(store, reporter=None, job_status=None) -> list:
    """Repair runs of ``store`` whose mlexec is gone (:func:`mlexec_core.supervisor.repair`);
    say so in one line.  Never fails a command: a store that cannot be repaired now is left."""
    from mlexec_core import supervisor

    try:
        changed = supervisor.repair(store, job_status)
    except Exception:  # noqa: BLE001  (repair is a courtesy; the command goes on)
        return []
    if changed and reporter is not None:
        reporter.warning(supervisor.summary(changed))
    return changed


@hookimpl
def mlexec_run_started(run: RunRecord, plan: RunPlan) -> None:
    """Keep a live copy of the output for ``mlexec logs -f``, and say where it is."""
    if run.tracker != "mlflow" or run.output is None:
        return
    from mlexec_core import supervisor

    written = _live_paths.pop(run.run_id, None)
    live = livelog.start_live_log(run.run_id, run.output)
    if live is not None and str(live.path) != written:
        open_store(run.tracking_uri).set_tags(run.run_id, {supervisor.LOG_TAG: str(live.path)})


#: Attempts at writing a run's final status before it is kept locally.
FINAL_ATTEMPTS = 3


@hookimpl
def mlexec_run_record(run: RunRecord, plan: RunPlan, files: Mapping[str, bytes]) -> None:
    """The run's record of what it ran, as its artifacts (``mlexec/run.json`` ...)."""
    if run.tracker == "mlflow":
        store = open_store(run.tracking_uri)
        for path, data in files.items():
            store.put_artifact(run.run_id, data, path)


@hookimpl
def mlexec_run_status(run: RunRecord, plan: RunPlan, status: RunStatus) -> None:
    """SCHEDULED while a batch scheduler queues the job, RUNNING once it starts (as MLflow's statuses)."""
    if run.tracker == "mlflow":
        open_store(run.tracking_uri).set_status(run.run_id, status.value)  # never un-ends a run


@hookimpl
def mlexec_run_restarted(run: RunRecord, plan: RunPlan, attempt: int, reason: str) -> None:
    """The run goes on: SCHEDULED again (whatever the last attempt's own MLflow client set as it
    exited), its attempts counted."""
    if run.tracker == "mlflow":
        store = open_store(run.tracking_uri)
        store.set_status(run.run_id, RunStatus.SCHEDULED.value, reopen=True)
        store.set_tags(run.run_id, {ATTEMPT_TAG: str(attempt)})


@hookimpl
def mlexec_run_finished(run: RunRecord, plan: RunPlan, status: RunStatus, reason: str | None) -> None:
    if run.tracker != "mlflow":
        return
    from mlexec_core import supervisor

    _live_paths.pop(run.run_id, None)
    livelog.stop_live_log(run.run_id)
    end_time = int(time.time() * 1000)
    log = run.output.log_path
    logged = log is None
    problem: TrackingError | None = None
    error: BaseException | None = None
    for attempt in range(FINAL_ATTEMPTS):
        if attempt and supervisor.interrupted.wait(2 ** (attempt - 1)):
            break  # the user wants out: keep the status locally now
        try:
            store = open_store(run.tracking_uri)
            # The output first, whatever the status: a run that ends has its log beside it.
            if not logged:
                try:
                    store.log_artifact(run.run_id, log, OUTPUT_ARTIFACT)
                    logged = True
                except Exception as exc:
                    problem = TrackingError(f"the run's output could not be stored as {OUTPUT_ARTIFACT}: "
                                            f"{scrub(str(exc), secrets_of(run.tracking_uri or ''))}")
            record_end(store, run.run_id, status, reason, end_time)
        except Exception as exc:  # noqa: BLE001  (the store is down: try again, then keep it locally)
            error = exc
            continue
        if problem is not None and not logged:
            raise problem
        return
    tags = {FAILURE_REASON_TAG: reason[:MAX_TAG_VALUE]} if reason else {}
    kept = supervisor.save_pending(run.tracking_uri, run.run_id, status.value, None, end_time, tags,
                                   log=None if logged else log)
    from mlexec_core.builtins.mlflow.client import tracking_error  # (only when a final status is kept)

    why = tracking_error(run.tracking_uri, error).message if error else "interrupted"
    where = (f"kept in {kept}; the next mlexec command on this store (or `mlexec runs repair`) records it"
             if kept else "it could not be kept locally either")
    raise TrackingError(f"run {run.run_id} ended {status.value} but the store did not record it ({why}); {where}")


def record_end(store: Any, run_id: str, status: RunStatus, reason: str | None, end_time: int | None = None) -> None:
    """Record how a run this process supervises ended."""
    # The job may have ended the run itself (mlflow.end_run()); as in MLflow, that
    # status stands, unless mlexec stopped the job: then it was killed, whatever it said.
    # One call (one transaction in a sqlite store), committed before it returns.
    # A failed command whose run says FINISHED was ended by MLflow's own exit handler in the job
    # (it ends an active run FINISHED whatever the exit status): the command failed, so the run did.
    tags = {FAILURE_REASON_TAG: reason[:MAX_TAG_VALUE]} if reason else {}
    store.finish(run_id, status.value, tags, end_time=end_time, force=status is RunStatus.KILLED,
                 also=("FINISHED",) if status is RunStatus.FAILED else ())


def outcome_unrecorded(run: RunRecord) -> bool:
    """Whether the final status of ``run`` is waiting locally for the store."""
    from mlexec_core import supervisor

    return run.tracker == "mlflow" and supervisor.has_pending(run.tracking_uri, run.run_id)
