"""What a sweep reads back from MLflow: a child's metric, and (for ``--resume``) the parent and its children.

Runs are created and ended through the usual lifecycle hooks (the MLflow
tracker); this module only reads.  A sqlite store that the tracker writes
directly is read directly too (one connection per call, so it is safe from
the sweep's many threads); any other store goes through ``MlflowClient``.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from attrs import frozen

from mlexec_core.errors import TrackingError, UsageError
from mlexec_core.pipeline.plan import RunRecord

#: Tags a sweep sets.  On the parent:
PARENT_TAG = "mlexec.sweep"  # "parent" on the parent, the parent's run id on children
SPEC_TAG = "mlexec.sweep.spec"
OPTIONS_TAG = "mlexec.sweep.options"
ENTRY_POINT_TAG = "mlexec.sweep.entryPoint"
BEST_RUN_TAG = "mlexec.sweep.bestRunId"
BEST_VALUE_TAG = "mlexec.sweep.bestValue"
COUNTS_TAG = "mlexec.sweep.counts"
#: On children:
TRIAL_TAG = "mlexec.sweep.trial"
ATTEMPT_TAG = "mlexec.sweep.attempt"


def latest_metric(run: RunRecord, key: str) -> float | None:
    """The latest value of metric ``key`` logged to ``run``, or ``None``."""
    if run.tracker != "mlflow" or not run.tracking_uri:
        return None
    from mlexec_core.builtins.mlflow.store import open_store

    store = open_store(run.tracking_uri)
    if getattr(store, "kind", None) == "sqlite":
        try:
            with sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, timeout=30) as db:
                row = db.execute("SELECT value FROM latest_metrics WHERE run_uuid = ? AND key = ?",
                                 (run.run_id, key)).fetchone()
        except sqlite3.Error as exc:
            raise TrackingError(f"could not read metric {key!r} of run {run.run_id}: {exc}") from None
        return None if row is None else float(row[0])
    try:
        return store.client.get_run(run.run_id).data.metrics.get(key)
    except Exception as exc:
        raise TrackingError(f"could not read metric {key!r} of run {run.run_id}: {exc}") from None


@frozen
class EarlierChild:
    run_id: str
    trial: int
    attempt: int
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    duration: float | None


@frozen
class EarlierSweep:
    """A sweep's parent run and its children, for ``--resume``."""

    run_id: str
    experiment_id: str
    status: str
    spec_json: str
    options: dict[str, Any]
    entry_point: dict[str, Any]
    children: tuple[EarlierChild, ...]


def read_sweep(tracking_uri: str, parent_run_id: str) -> EarlierSweep:
    """The sweep whose parent run is ``parent_run_id`` (through ``MlflowClient``)."""
    from mlexec_core.builtins.mlflow.client import ClientStore
    from mlexec_core.sources.urls import redact

    client = ClientStore(tracking_uri).client
    try:
        parent = client.get_run(parent_run_id)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
            raise UsageError(f"--resume {parent_run_id}: no such run in {redact(tracking_uri)}",
                             hint="give the sweep's parent run id (the first line of `mlexec sweep` says it)") from None
        raise TrackingError(f"could not read run {parent_run_id}: {exc}") from None
    tags = parent.data.tags
    if tags.get(PARENT_TAG) != "parent" or SPEC_TAG not in tags:
        raise UsageError(f"--resume {parent_run_id}: that run is not the parent run of a sweep",
                         hint=(f"it is a child of sweep {tags[PARENT_TAG]}" if tags.get(PARENT_TAG) else
                               "give the parent run id that `mlexec sweep` printed"))
    children = []
    token = None
    while True:
        page = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        for run in page:
            ctags = run.data.tags
            try:
                trial, attempt = int(ctags[TRIAL_TAG]), int(ctags.get(ATTEMPT_TAG, "1"))
            except (KeyError, ValueError):
                continue
            end = run.info.end_time
            duration = (end - run.info.start_time) / 1000 if end and run.info.start_time else None
            children.append(EarlierChild(run.info.run_id, trial, attempt, run.info.status, dict(run.data.params),
                                         dict(run.data.metrics), duration))
        token = page.token
        if not token:
            break
    return EarlierSweep(parent_run_id, parent.info.experiment_id, parent.info.status, tags[SPEC_TAG],
                        json.loads(tags.get(OPTIONS_TAG, "{}")), json.loads(tags.get(ENTRY_POINT_TAG, "{}")),
                        tuple(sorted(children, key=lambda c: (c.trial, c.attempt))))
