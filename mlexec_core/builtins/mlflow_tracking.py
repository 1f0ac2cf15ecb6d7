"""The built-in ``mlflow`` tracker: records every run in MLflow tracking.

The store is ``$MLFLOW_TRACKING_URI``, or, as in current MLflow, a sqlite
file ``mlflow.db`` in the working directory (made absolute, so the job logs
to the same file from the project directory).

Importing mlflow costs seconds, so a sqlite store that MLflow has already
created and that is at the schema revision the installed mlflow expects is
written directly (:mod:`mlexec_core.builtins._mlflow_sqlite`): the same rows
``MlflowClient`` writes, in milliseconds.  Every other store (a new sqlite
file, a server, a file store, Databricks) goes through ``MlflowClient``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import threading
from pathlib import Path
from typing import Any, Mapping

from mlexec_core.errors import TrackingError
from mlexec_core.pipeline.output import ARTIFACT_PATH as OUTPUT_ARTIFACT
from mlexec_core.pipeline.plan import RunPlan, RunRecord, RunStatus
from mlexec_core.plugin import hookimpl
from mlexec_core.plugin.interfaces import Context
from mlexec_core.sources.urls import redact, scrub, secrets_of

DEFAULT_DB = "mlflow.db"
#: Why a run failed or was killed, in one line (set by mlexec when it ends the run).
FAILURE_REASON_TAG = "mlexec.failureReason"
MAX_TAG_VALUE = 8000

_stores: dict[str, Any] = {}
#: ``open_store`` and the lazy MlflowClient are reached from many threads at once (a sweep's children).
_stores_lock = threading.RLock()


def tracking_uri(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """The tracking URI for this process, with local paths made absolute."""
    environ = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    uri = environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{cwd / DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rest = uri[len("sqlite:///"):]
        if rest and rest != ":memory:" and not rest.startswith("/"):
            return f"sqlite:///{(cwd / rest).resolve()}"
        return uri
    if uri.startswith("file:"):
        return uri
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return Path(cwd, uri).resolve().as_uri()
    return uri


def open_store(uri: str):
    """The fastest store that can serve ``uri`` (cached per URI)."""
    store = _stores.get(uri)
    if store is None:
        from mlexec_core.builtins import _mlflow_sqlite

        with _stores_lock:
            store = _stores.get(uri)
            if store is None:
                store = _mlflow_sqlite.SqliteStore.open(uri) or ClientStore(uri)
                _stores[uri] = store
    return store


def forget_store(uri: str) -> None:
    _stores.pop(uri, None)


class ClientStore:
    """Tracking through ``mlflow.tracking.MlflowClient`` (any store MLflow supports)."""

    kind = "client"

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client = None

    @property
    def client(self):
        if self._client is None:
            with _stores_lock:  # one MlflowClient, however many threads (a sweep's children) ask at once
                if self._client is None:
                    import logging

                    try:
                        from mlflow.tracking import MlflowClient

                        for name in ("mlflow", "alembic"):  # after the import, which sets mlflow's own levels
                            logging.getLogger(name).setLevel(logging.WARNING)
                        self._client = MlflowClient(self.uri)
                        self._client._tracking_client.store  # noqa: B018  (open the store now, errors here)
                    except Exception as exc:
                        raise _tracking_error(self.uri, exc) from None
        return self._client

    def experiment_id(self, name: str | None, experiment_id: str | None) -> str:
        try:
            if experiment_id is not None:
                exp = self.client.get_experiment(experiment_id)
            elif name is not None:
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    return self.client.create_experiment(name)
            else:
                exp = self.client.get_experiment("0")
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "No Experiment with id" in str(exc):
                raise TrackingError(f"no experiment with id {experiment_id!r} in {redact(self.uri)}",
                                    hint="check --experiment-id, or use --experiment-name to create one") from None
            raise _tracking_error(self.uri, exc) from None
        if exp.lifecycle_stage != "active":
            raise TrackingError(f"experiment {exp.name!r} ({exp.experiment_id}) is deleted",
                                hint="restore it with `mlflow experiments restore`, or pick another")
        return exp.experiment_id

    def create_run(self, experiment_id: str, run_name: str | None, tags: Mapping[str, str],
                   params: Mapping[str, str]) -> tuple[str, str]:
        from mlflow.entities import Param

        try:
            run = self.client.create_run(experiment_id, tags=dict(tags), run_name=run_name)
        except Exception as exc:
            raise _tracking_error(self.uri, exc) from None
        try:
            if params:
                self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        except Exception as exc:  # the run exists: it must not stay RUNNING
            with contextlib.suppress(Exception):
                self.client.set_terminated(run.info.run_id, "FAILED")
            raise _tracking_error(self.uri, exc) from None
        return run.info.run_id, run.info.run_name

    def attach(self, run_id: str, params: Mapping[str, str]) -> tuple[str, str]:
        from mlflow.entities import Param

        try:
            run = self.client.get_run(run_id)
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc):
                raise TrackingError(f"no run with id {run_id!r} in {redact(self.uri)}", hint="check --run-id") from None
            raise _tracking_error(self.uri, exc) from None
        for key, value in params.items():
            if key in run.data.params and run.data.params[key] != value:
                raise TrackingError(f"run {run_id} already has param {key}={run.data.params[key]!r}, not {value!r}",
                                    hint="MLflow params cannot change; start a new run")
        try:
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()
                                                  if k not in run.data.params])
            self.client.update_run(run_id, status="RUNNING")
        except Exception as exc:
            raise _tracking_error(self.uri, exc) from None
        return run.info.experiment_id, run.info.run_name

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def end_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def log_artifact(self, run_id: str, local_path: Path, artifact_path: str) -> None:
        """Store ``local_path`` as the artifact ``artifact_path`` (a path with its file name)."""
        import shutil
        import tempfile

        folder, _, name = artifact_path.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="mlexec-artifact-") as tmp:
            staged = Path(tmp, name)
            shutil.copyfile(local_path, staged)
            self.client.log_artifact(run_id, str(staged), folder or None)


def _tracking_error(uri: str, exc: BaseException) -> TrackingError:
    if isinstance(exc, TrackingError):
        return exc
    text = scrub(str(exc), secrets_of(uri)).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    hint = None
    if "out-of-date database schema" in str(exc):
        hint = f"upgrade it with: mlflow db upgrade {redact(uri)}"
    return TrackingError(f"tracking store {redact(uri)} refused: {message}", hint=hint)


def _run_tags(plan: RunPlan) -> dict[str, str]:
    source = plan.source
    tags = {
        "mlflow.user": _user(),
        # the URI as the user gave it (credentials removed); for a directory used in
        # place, its git remote when it has one, as mlflow run does
        "mlflow.source.name": source.uri if source.kind != "local" else (source.git_repo_url or source.uri),
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
    parent = os.environ.get("MLFLOW_RUN_ID")
    if parent and not plan.tracking.run_id:
        tags["mlflow.parentRunId"] = parent
    tags.update(plan.tracking.tags)
    return {k: v[:MAX_TAG_VALUE] for k, v in tags.items()}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


@hookimpl
def mlexec_run_create(plan: RunPlan, context: Context) -> RunRecord:
    uri = tracking_uri()
    store = open_store(uri)
    if isinstance(store, ClientStore) and store._client is None:
        with context.reporter.status(f"Opening the MLflow tracking store {redact(uri)} "
                                     "(through MLflow: a few seconds)"):
            store.client  # noqa: B018
    params = plan.logged_params()
    if plan.tracking.run_id:
        experiment_id, run_name = store.attach(plan.tracking.run_id, params)
        run_id = plan.tracking.run_id
        store.set_tags(run_id, _run_tags(plan))
    else:
        experiment_id = store.experiment_id(plan.tracking.experiment_name, plan.tracking.experiment_id)
        run_id, run_name = store.create_run(experiment_id, plan.tracking.run_name, _run_tags(plan), params)
    env = {"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": str(experiment_id)}
    return RunRecord(run_id=run_id, experiment_id=str(experiment_id), tracking_uri=uri, env=env,
                     tracker="mlflow", run_name=run_name)


@hookimpl
def mlexec_run_tags(run: RunRecord, tags: Mapping[str, str]) -> None:
    if run.tracker == "mlflow" and tags:
        open_store(run.tracking_uri).set_tags(run.run_id, {k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()})


@hookimpl
def mlexec_run_finished(run: RunRecord, plan: RunPlan, status: RunStatus, reason: str | None) -> None:
    if run.tracker != "mlflow":
        return
    store = open_store(run.tracking_uri)
    # The output first, whatever the status: a run that ends has its log beside it.
    problem = None
    log = run.output.log_path
    if log is not None:
        try:
            store.log_artifact(run.run_id, log, OUTPUT_ARTIFACT)
        except Exception as exc:
            problem = TrackingError(f"the run's output could not be stored as {OUTPUT_ARTIFACT}: "
                                    f"{scrub(str(exc), secrets_of(run.tracking_uri or ''))}")
    _end(store, run, status, reason)
    if problem is not None:
        raise problem


def _end(store: Any, run: RunRecord, status: RunStatus, reason: str | None) -> None:
    # The job may have ended the run itself (mlflow.end_run()); as in MLflow, that
    # status stands, unless mlexec stopped the job: then it was killed, whatever it said.
    if status is not RunStatus.KILLED and store.status(run.run_id) != RunStatus.RUNNING.value:
        return
    if reason:
        store.set_tags(run.run_id, {FAILURE_REASON_TAG: reason[:MAX_TAG_VALUE]})
    store.end_run(run.run_id, status.value)
