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
import contextvars
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from mlexec_core.errors import TrackingError
from mlexec_core.pipeline.output import ARTIFACT_PATH as OUTPUT_ARTIFACT
from mlexec_core.pipeline.plan import RunPlan, RunRecord, RunStatus
from mlexec_core.plugin import hookimpl
from mlexec_core.plugin.interfaces import Context
from mlexec_core.sources.urls import redact, scrub, secrets_of
from mlexec_core.supervisor import ACTIVE, LIVE_TAG

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
    def client(self):
        if self._client is None:
            with _stores_lock:  # one MlflowClient, however many threads (a sweep's children) ask at once
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
                        raise _tracking_error(self.uri, exc) from None
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
            raise _tracking_error(self.uri, exc) from None
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
            raise _tracking_error(self.uri, exc) from None
        try:
            if params:
                self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        except Exception as exc:  # the run exists: it must not stay RUNNING
            with contextlib.suppress(Exception):
                self.client.set_terminated(run.info.run_id, "FAILED")
            raise _tracking_error(self.uri, exc) from None
        return run.info.run_id, run.info.run_name

    @_bounded
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

    @_bounded
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    @_bounded
    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    @_bounded
    def set_status(self, run_id: str, status: str) -> None:
        """Move a run between RUNNING and SCHEDULED; a run that has ended stays as it is."""
        if self.status(run_id) in ACTIVE:
            self.client.update_run(run_id, status=status)

    @_bounded
    def end_run(self, run_id: str, status: str, end_time: int | None = None) -> None:
        self.client.set_terminated(run_id, status, end_time=end_time)
        with contextlib.suppress(Exception):
            self.client.delete_tag(run_id, LIVE_TAG)

    @_bounded
    def finish(self, run_id: str, status: str, tags: Mapping[str, str], end_time: int | None = None,
               force: bool = False) -> bool:
        """End the run with ``tags`` unless it has already ended (``force``: whatever it says);
        the supervisor record goes either way.  Whether it was ended here.

        A server has no conditional update, so the status is read before the tags are
        written and again just before the status is (the tags first, so that a retry after a
        failed request writes them again); another writer can still come between the last
        read and the write, a single request's time (docs/cli.md, "runs repair")."""
        def ended() -> bool:
            if force or self.status(run_id) in ACTIVE:
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
            raise _tracking_error(self.uri, exc) from None
        return run.info.status, dict(run.data.tags), {"artifact_uri": run.info.artifact_uri or ""}

    @_bounded
    def download_output(self, run_id: str) -> bytes | None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="mlexec-logs-") as tmp:
            try:
                path = self.client.download_artifacts(run_id, "mlexec/output.log", tmp)
            except Exception as exc:
                if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "No such file" in str(exc) or "not found" in str(exc):
                    return None
                raise _tracking_error(self.uri, exc) from None
            return Path(path).read_bytes()

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


def _tracking_error(uri: str, exc: BaseException) -> TrackingError:
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
#: The live log path written with each run at its creation (sqlite stores), until it starts.
_live_paths: dict[str, str] = {}


def _repair_due(uri: str) -> bool:
    now = time.monotonic()
    with _stores_lock:
        last = _repaired.get(uri)
        if last is not None and now - last < REPAIR_INTERVAL:
            return False
        _repaired[uri] = now
        return True


@hookimpl
def mlexec_run_create(plan: RunPlan, context: Context) -> RunRecord:
    uri = tracking_uri()
    store = open_store(uri)
    if isinstance(store, ClientStore) and store._client is None:
        with context.reporter.status(f"Opening the MLflow tracking store {redact(uri)} "
                                     "(through MLflow: a few seconds)"):
            store.client  # noqa: B018
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
            live = str(supervisor.live_dir() / f"{new_id}.log")  # as start_live_log names it (checked there)
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
    live = supervisor.start_live_log(run.run_id, run.output)
    if live is not None and str(live.path) != written:
        open_store(run.tracking_uri).set_tags(run.run_id, {supervisor.LOG_TAG: str(live.path)})


#: Attempts at writing a run's final status before it is kept locally.
FINAL_ATTEMPTS = 3


@hookimpl
def mlexec_run_status(run: RunRecord, plan: RunPlan, status: RunStatus) -> None:
    """SCHEDULED while a batch scheduler queues the job, RUNNING once it starts (as MLflow's statuses)."""
    if run.tracker == "mlflow":
        open_store(run.tracking_uri).set_status(run.run_id, status.value)  # never un-ends a run


@hookimpl
def mlexec_run_finished(run: RunRecord, plan: RunPlan, status: RunStatus, reason: str | None) -> None:
    if run.tracker != "mlflow":
        return
    from mlexec_core import supervisor

    _live_paths.pop(run.run_id, None)
    supervisor.stop_live_log(run.run_id)
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
    why = _tracking_error(run.tracking_uri, error).message if error else "interrupted"
    where = (f"kept in {kept}; the next mlexec command on this store (or `mlexec runs repair`) records it"
             if kept else "it could not be kept locally either")
    raise TrackingError(f"run {run.run_id} ended {status.value} but the store did not record it ({why}); {where}")


def record_end(store: Any, run_id: str, status: RunStatus, reason: str | None, end_time: int | None = None) -> None:
    """Record how a run this process supervises ended."""
    # The job may have ended the run itself (mlflow.end_run()); as in MLflow, that
    # status stands, unless mlexec stopped the job: then it was killed, whatever it said.
    # One call (one transaction in a sqlite store), committed before it returns.
    tags = {FAILURE_REASON_TAG: reason[:MAX_TAG_VALUE]} if reason else {}
    store.finish(run_id, status.value, tags, end_time=end_time, force=status is RunStatus.KILLED)


def outcome_unrecorded(run: RunRecord) -> bool:
    """Whether the final status of ``run`` is waiting locally for the store."""
    from mlexec_core import supervisor

    return run.tracker == "mlflow" and supervisor.has_pending(run.tracking_uri, run.run_id)
