"""Tracking through ``mlflow.tracking.MlflowClient``: any store MLflow supports (a server, a new
sqlite file, a file store, Databricks), with mlexec's own calls bounded in time.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from pathlib import Path
from typing import Iterator, Mapping

from mlexec_core.errors import TrackingError
from mlexec_core.sources.urls import redact, scrub, secrets_of
from mlexec_core.supervisor import ACTIVE, LIVE_TAG

#: One MlflowClient per store, however many threads (a sweep's children) ask at once.
_client_lock = threading.RLock()


#: What mlexec's own calls to an MLflow server use unless these variables are set:
#: about 10 s to give up on an unreachable server, not MLflow's minutes of retries.
#: The job keeps MLflow's defaults: the limits live in this process's MLflow only, for
#: the calls inside :func:`bounded_client`, and never in ``os.environ`` (which every
#: job started meanwhile, on any thread, would inherit).
CLIENT_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "6"}
_bounded_here: contextvars.ContextVar[bool] = contextvars.ContextVar("mlexec_bounded_client", default=False)
_limits_lock = threading.Lock()
_limits_installed: list[bool] = []


def _install_limits() -> None:
    """Make MLflow's readers of :data:`CLIENT_LIMITS` answer with mlexec's values inside
    :func:`bounded_client` (on that thread only) when the user has not set the variable."""
    with _limits_lock:
        if _limits_installed:
            return
        from mlflow import environment_variables as variables

        for name, value in CLIENT_LIMITS.items():
            variable = getattr(variables, name, None)
            if variable is None:  # an MLflow without this setting
                continue

            def get(read=variable.get, name=name, value=variable.type(value)):
                return value if _bounded_here.get() and name not in os.environ else read()

            variable.get = get
        _limits_installed.append(True)


@contextlib.contextmanager
def bounded_client() -> Iterator[None]:
    """MLflow's HTTP retries bounded (:data:`CLIENT_LIMITS`) for the calls inside, on this thread."""
    if not _limits_installed:
        _install_limits()
    token = _bounded_here.set(True)
    try:
        yield
    finally:
        _bounded_here.reset(token)


def _bounded(method):
    def call(self, *args, **kwargs):
        with bounded_client():
            return method(self, *args, **kwargs)

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class ClientStore:
    """Tracking through ``mlflow.tracking.MlflowClient`` (any store MLflow supports)."""

    kind = "client"

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client = None

    @property
    def connected(self) -> bool:
        """Whether MLflow is imported and the store opened (the first time takes seconds)."""
        return self._client is not None

    def connect(self) -> None:
        """Import MLflow and open the store now (errors here, as a :class:`TrackingError`)."""
        self.client  # noqa: B018

    @property
    def client(self):
        if self._client is None:
            with _client_lock:  # one MlflowClient, however many threads (a sweep's children) ask at once
                if self._client is None:
                    import logging

                    try:
                        from mlflow.tracking import MlflowClient

                        for name in ("mlflow", "alembic"):  # after the import, which sets mlflow's own levels
                            logging.getLogger(name).setLevel(logging.WARNING)
                        client = MlflowClient(self.uri)
                        with bounded_client():
                            client._tracking_client.store  # noqa: B018  (open the store now, errors here)
                            if self.uri.startswith(("http:", "https:")):  # is anyone there? (fails in seconds)
                                client.search_experiments(max_results=1)
                        self._client = client
                    except Exception as exc:
                        raise tracking_error(self.uri, exc) from None
        return self._client

    @_bounded
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
            raise tracking_error(self.uri, exc) from None
        if exp.lifecycle_stage != "active":
            raise TrackingError(f"experiment {exp.name!r} ({exp.experiment_id}) is deleted",
                                hint="restore it with `mlflow experiments restore`, or pick another")
        return exp.experiment_id

    @_bounded
    def create_run(self, experiment_id: str, run_name: str | None, tags: Mapping[str, str],
                   params: Mapping[str, str]) -> tuple[str, str]:
        from mlflow.entities import Param

        try:
            run = self.client.create_run(experiment_id, tags=dict(tags), run_name=run_name)
        except Exception as exc:
            raise tracking_error(self.uri, exc) from None
        try:
            if params:
                self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        except Exception as exc:  # the run exists: it must not stay RUNNING
            with contextlib.suppress(Exception):
                self.client.set_terminated(run.info.run_id, "FAILED")
            raise tracking_error(self.uri, exc) from None
        return run.info.run_id, run.info.run_name

    @_bounded
    def attach(self, run_id: str, params: Mapping[str, str]) -> tuple[str, str]:
        from mlflow.entities import Param

        try:
            run = self.client.get_run(run_id)
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc):
                raise TrackingError(f"no run with id {run_id!r} in {redact(self.uri)}", hint="check --run-id") from None
            raise tracking_error(self.uri, exc) from None
        for key, value in params.items():
            if key in run.data.params and run.data.params[key] != value:
                raise TrackingError(f"run {run_id} already has param {key}={run.data.params[key]!r}, not {value!r}",
                                    hint="MLflow params cannot change; start a new run")
        try:
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()
                                                  if k not in run.data.params])
            self.client.update_run(run_id, status="RUNNING")
        except Exception as exc:
            raise tracking_error(self.uri, exc) from None
        return run.info.experiment_id, run.info.run_name

    @_bounded
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    @_bounded
    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    @_bounded
    def set_status(self, run_id: str, status: str, reopen: bool = False) -> None:
        """Move a run between RUNNING and SCHEDULED; a run that has ended stays as it is, unless
        ``reopen`` (its job is started again into it: the run goes on)."""
        if reopen or self.status(run_id) in ACTIVE:
            self.client.update_run(run_id, status=status)

    @_bounded
    def end_run(self, run_id: str, status: str, end_time: int | None = None) -> None:
        self.client.set_terminated(run_id, status, end_time=end_time)
        with contextlib.suppress(Exception):
            self.client.delete_tag(run_id, LIVE_TAG)

    @_bounded
    def finish(self, run_id: str, status: str, tags: Mapping[str, str], end_time: int | None = None,
               force: bool = False, also: tuple[str, ...] = ()) -> bool:
        """End the run with ``tags`` unless it has already ended (``force``: whatever it says; ``also``:
        statuses replaced too);
        the supervisor record goes either way.  Whether it was ended here.

        A server has no conditional update, so the status is read before the tags are
        written and again just before the status is (the tags first, so that a retry after a
        failed request writes them again); another writer can still come between the last
        read and the write, a single request's time (docs/cli.md, "runs repair")."""
        def ended() -> bool:
            if force or self.status(run_id) in (*ACTIVE, *also):
                return False
            self.clear_live(run_id)
            return True

        if ended():
            return False
        if tags:
            self.set_tags(run_id, tags)
            if ended():
                return False
        self.end_run(run_id, status, end_time=end_time)
        return True

    @_bounded
    def live_runs(self) -> list[tuple[str, str, dict[str, str]]]:
        """RUNNING and SCHEDULED runs with a supervisor record (searches; servers have no faster way)."""
        exps = [e.experiment_id for e in self.client.search_experiments()]
        if not exps:
            return []
        runs = [run for status in ACTIVE  # (a status IN (...) filter is refused)
                for run in self.client.search_runs(exps, filter_string=f"attributes.status = '{status}'",
                                                   max_results=1000)]
        return [(r.info.run_id, r.info.status, {k: v for k, v in r.data.tags.items() if k.startswith("mlexec.")})
                for r in runs if LIVE_TAG in r.data.tags]

    @_bounded
    def run_info(self, run_id: str) -> tuple[str, dict[str, str], dict[str, str]]:
        """``(status, tags, {"artifact_uri": ...})`` of a run; :class:`TrackingError` if there is none."""
        try:
            run = self.client.get_run(run_id)
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc):
                raise TrackingError(f"no run with id {run_id!r} in {redact(self.uri)}",
                                    hint="check the id (the `=== Run ID ... ===` line of mlexec run)") from None
            raise tracking_error(self.uri, exc) from None
        return run.info.status, dict(run.data.tags), {"artifact_uri": run.info.artifact_uri or ""}

    def download_output(self, run_id: str) -> bytes | None:
        return self.read_artifact(run_id, "mlexec/output.log")

    @_bounded
    def read_artifact(self, run_id: str, artifact_path: str) -> bytes | None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="mlexec-artifact-") as tmp:
            try:
                path = self.client.download_artifacts(run_id, artifact_path, tmp)
            except Exception as exc:
                if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "No such file" in str(exc) or "not found" in str(exc):
                    return None
                raise tracking_error(self.uri, exc) from None
            return Path(path).read_bytes()

    @_bounded
    def run_params(self, run_id: str) -> dict[str, str]:
        try:
            return dict(self.client.get_run(run_id).data.params)
        except Exception as exc:
            raise tracking_error(self.uri, exc) from None

    @_bounded
    def clear_live(self, run_id: str) -> None:
        with contextlib.suppress(Exception):
            self.client.delete_tag(run_id, LIVE_TAG)

    @_bounded
    def log_artifact(self, run_id: str, local_path: Path, artifact_path: str) -> None:
        """Store ``local_path`` as the artifact ``artifact_path`` (a path with its file name)."""
        import shutil
        import tempfile

        folder, _, name = artifact_path.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="mlexec-artifact-") as tmp:
            staged = Path(tmp, name)
            shutil.copyfile(local_path, staged)
            self.client.log_artifact(run_id, str(staged), folder or None)


    def put_artifact(self, run_id: str, data: bytes, artifact_path: str) -> None:
        """Store ``data`` as the artifact ``artifact_path`` (a path with its file name)."""
        import tempfile

        folder, _, name = artifact_path.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="mlexec-artifact-") as tmp:
            staged = Path(tmp, name)
            staged.write_bytes(data)
            self.client.log_artifact(run_id, str(staged), folder or None)


def tracking_error(uri: str, exc: BaseException) -> TrackingError:
    """One clear :class:`TrackingError` for what MLflow raised (credentials removed)."""
    if isinstance(exc, TrackingError):
        return exc
    text = scrub(str(exc), secrets_of(uri)).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    hint = None
    if "out-of-date database schema" in str(exc):
        hint = f"upgrade it with: mlflow db upgrade {redact(uri)}"
    elif any(word in str(exc) for word in ("Max retries exceeded", "Connection refused", "timed out",
                                           "Failed to establish", "Name or service not known")):
        message = "cannot reach the tracking server"
        hint = ("is the server running and MLFLOW_TRACKING_URI right? mlexec gives up after about 10 s "
                "(MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT change that)")
    return TrackingError(f"tracking store {redact(uri)} refused: {message}", hint=hint)

