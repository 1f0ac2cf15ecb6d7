"""The MLflow tracking store mlexec writes runs to: which one, and the fastest way to reach it.

* :func:`tracking_uri`: ``$MLFLOW_TRACKING_URI``, or, as in current MLflow, a
  sqlite file ``mlflow.db`` in the working directory (made absolute, so the job
  logs to the same file from the project directory).
* :func:`open_store`: a :class:`TrackingStore` for a URI, cached per URI.
  Importing mlflow costs seconds, so a sqlite store that MLflow has already
  created, at the schema revision the installed mlflow expects, is written
  directly (:mod:`mlexec_core.builtins.mlflow.sqlite`): the same rows
  ``MlflowClient`` writes, in milliseconds.  Every other store (a new sqlite
  file, a server, a file store, Databricks) goes through ``MlflowClient``
  (:mod:`mlexec_core.builtins.mlflow.client`), which the sqlite store also
  falls back to for what it does not write itself.

The tracker's hooks are in :mod:`mlexec_core.builtins.mlflow.hooks`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Protocol

if TYPE_CHECKING:
    from mlexec_core.builtins.mlflow.client import ClientStore

DEFAULT_DB = "mlflow.db"

_stores: dict[str, "TrackingStore"] = {}
#: ``open_store`` is reached from many threads at once (a sweep's children).
_stores_lock = threading.RLock()


class TrackingStore(Protocol):
    """What mlexec needs of a tracking store (both kinds implement it; ``repair`` takes it).

    Every status change that must not overwrite an ended run goes through
    :meth:`finish` (``force=False``): it ends a run only while it is RUNNING or
    SCHEDULED, and says whether it did."""

    uri: str
    #: "sqlite" (written directly) or "client" (through ``MlflowClient``).
    kind: str
    #: False until :meth:`connect` (or the first call) has opened the store: opening through
    #: ``MlflowClient`` imports MLflow, seconds, worth a status line.
    connected: bool

    def connect(self) -> None: ...

    def experiment_id(self, name: str | None, experiment_id: str | None) -> str: ...

    def create_run(self, experiment_id: str, run_name: str | None, tags: Mapping[str, str],
                   params: Mapping[str, str]) -> tuple[str, str]: ...

    def attach(self, run_id: str, params: Mapping[str, str]) -> tuple[str, str]: ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...

    def status(self, run_id: str) -> str: ...

    def set_status(self, run_id: str, status: str, reopen: bool = False) -> None: ...

    def end_run(self, run_id: str, status: str, end_time: int | None = None) -> None: ...

    def finish(self, run_id: str, status: str, tags: Mapping[str, str], end_time: int | None = None,
               force: bool = False, also: tuple[str, ...] = ()) -> bool: ...

    def live_runs(self) -> Iterable[tuple[str, str, dict[str, str]]]: ...

    def run_info(self, run_id: str) -> tuple[str, dict[str, str], dict[str, str]]: ...

    def download_output(self, run_id: str) -> bytes | None: ...

    def clear_live(self, run_id: str) -> None: ...

    def log_artifact(self, run_id: str, local_path: Path, artifact_path: str) -> None: ...

    def put_artifact(self, run_id: str, data: bytes, artifact_path: str) -> None: ...

    def read_artifact(self, run_id: str, artifact_path: str) -> bytes | None: ...

    def run_params(self, run_id: str) -> dict[str, str]: ...


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


def open_store(uri: str) -> TrackingStore:
    """The fastest store that can serve ``uri`` (cached per URI)."""
    store = _stores.get(uri)
    if store is None:
        from mlexec_core.builtins.mlflow.sqlite import SqliteStore

        with _stores_lock:
            store = _stores.get(uri)
            if store is None:
                store = SqliteStore.open(uri, fallback=lambda: client_store(uri))
                if store is None:  # (the client module only when it serves the store: off a sqlite run's path)
                    from mlexec_core.builtins.mlflow.client import ClientStore

                    store = ClientStore(uri)
                _stores[uri] = store
    return store


def client_store(uri: str) -> "ClientStore":
    """The store at ``uri`` through ``MlflowClient`` (the cached one when that is what serves it)."""
    from mlexec_core.builtins.mlflow.client import ClientStore

    store = _stores.get(uri)
    return store if isinstance(store, ClientStore) else ClientStore(uri)


def forget_store(uri: str) -> None:
    _stores.pop(uri, None)

