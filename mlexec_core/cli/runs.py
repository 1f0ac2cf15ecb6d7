"""``mlexec runs list/repair``, ``mlexec attach``, ``mlexec cancel`` and ``mlexec logs``: runs after the fact.

Each command opens the tracking store of ``$MLFLOW_TRACKING_URI`` (as ``mlexec
run`` does) and works on runs by id.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import click

from mlexec_core.cli.common import fail, load_plugins, make_terminal, open_store
from mlexec_core.errors import MlexecError, TrackingError


def _job_status(plugins):
    """For repair: the status of a detachable run's job, asked of its backend."""

    def ask(run_id: str, tags: dict[str, str]) -> str | None:
        backend_name = tags.get("mlexec.job.backend")
        if not backend_name:
            return None
        try:
            job = plugins.backend(backend_name).attach(_record(run_id, tags), tags)
            status = job.get_status()
        except Exception:  # noqa: BLE001  (cannot tell: leave the run as it is)
            return None
        return status.value if status.terminal else "RUNNING"

    return ask


def _record(run_id: str, tags: dict[str, str]):
    from mlexec_core.builtins.mlflow.store import tracking_uri
    from mlexec_core.pipeline.plan import RunRecord

    return RunRecord(run_id=run_id, tracking_uri=tracking_uri(), tracker="mlflow")


@click.group("runs")
def runs() -> None:
    """List runs in flight and repair those whose mlexec is gone."""


@runs.command("repair")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def runs_repair(as_json: bool) -> None:
    """End runs whose mlexec exited unexpectedly; write final statuses kept locally."""
    from mlexec_core import supervisor

    terminal = make_terminal()
    try:
        store = open_store(terminal, repair=False)
        plugins = load_plugins(terminal, warn=False)
        changed = supervisor.repair(store, _job_status(plugins))
    except MlexecError as exc:
        fail(terminal, exc)
    if as_json:
        terminal.echo(json.dumps([{"run_id": r.run_id, "status": r.status, "why": r.why} for r in changed],
                                 indent=2))
        return
    if not changed:
        terminal.success("Nothing to repair: every run in flight has its mlexec (or its cluster job) alive.")
        return
    terminal.table("Repaired", ["run", "now", "why"], [(r.run_id, r.status, r.why) for r in changed])


@runs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def runs_list(as_json: bool) -> None:
    """Runs in flight: who supervises each, and whether it is still there."""
    from mlexec_core import supervisor

    terminal = make_terminal()
    try:
        store = open_store(terminal, repair=False)  # it shows what a repair would change
        live = [r for r in store.live_runs() if r[1] == "RUNNING"]
    except MlexecError as exc:
        fail(terminal, exc)
    rows = []
    for run_id, status, tags in live:
        parsed = supervisor.parse_live(tags.get(supervisor.LIVE_TAG, "")) or ("?", 0, "")
        if tags.get(supervisor.DETACHED_TAG) == "true":
            state = "detached (mlexec attach RUN_ID follows it)"
        elif parsed[0] != supervisor.hostname():
            state = "on another host"
        elif supervisor.supervisor_gone(tags.get(supervisor.LIVE_TAG, "")):
            state = "gone (mlexec runs repair ends it)"
        else:
            state = "running"
        rows.append({"run_id": run_id, "status": status, "host": parsed[0], "pid": parsed[1],
                     "backend": tags.get("mlexec.job.backend", ""), "supervisor": state})
    if as_json:
        terminal.echo(json.dumps(rows, indent=2))
        return
    terminal.table("Runs in flight", ["run", "status", "host", "pid", "supervisor"],
                   [(r["run_id"], r["status"], r["host"], r["pid"], r["supervisor"]) for r in rows])


# -- one run -------------------------------------------------------------------------------------


def _run_tags(terminal, store, run_id: str) -> tuple[str, dict[str, str], Any]:
    """(status, tags, run info) of ``run_id``; a clear error when it does not exist."""
    try:
        return store.run_info(run_id)
    except TrackingError as exc:
        fail(terminal, exc)
    raise AssertionError  # unreachable


def _attachable(terminal, plugins, run_id: str, status: str, tags: dict[str, str]):
    backend_name = tags.get("mlexec.job.backend")
    if status != "RUNNING":
        fail(terminal, MlexecError(f"run {run_id} has ended ({status})",
                                    hint=f"its output: mlexec logs {run_id}"))
    if not backend_name:
        fail(terminal, MlexecError(f"run {run_id} does not run on a cluster: only cluster runs can be attached",
                                    hint=f"follow its output with: mlexec logs -f {run_id}"))
    from mlexec_core.builtins.mlflow.store import tracking_uri
    from mlexec_core.pipeline.output import RunOutput
    from mlexec_core.pipeline.plan import RunRecord

    record = RunRecord(run_id=run_id, tracking_uri=tracking_uri(), tracker="mlflow", output=RunOutput())
    try:
        backend = plugins.backend(backend_name)
        return record, backend.attach(record, tags)
    except MlexecError as exc:
        fail(terminal, exc)


def _open_run(run_id: str):
    """What ``attach`` and ``cancel`` start with: the terminal, the (repaired) store, the plugins,
    and the run's status and tags (a clear error when the run does not exist)."""
    terminal = make_terminal()
    try:
        store = open_store(terminal)
        plugins = load_plugins(terminal, warn=False)
    except MlexecError as exc:
        fail(terminal, exc)
    status, tags, _ = _run_tags(terminal, store, run_id)
    return terminal, store, plugins, status, tags


@click.command("attach")
@click.argument("run_id")
def attach(run_id: str) -> None:
    """Follow a detached (or orphaned) cluster run: stream its output, wait, record how it ended."""
    from mlexec_core import supervisor
    from mlexec_core.pipeline.plan import RunStatus

    terminal, store, plugins, status, tags = _open_run(run_id)
    live = tags.get(supervisor.LIVE_TAG, "")
    parsed = supervisor.parse_live(live)
    if (status == "RUNNING" and tags.get(supervisor.DETACHED_TAG) != "true" and parsed
            and parsed[0] == supervisor.hostname() and not supervisor.supervisor_gone(live)):
        fail(terminal, MlexecError(f"run {run_id} is followed by mlexec process {parsed[1]} on this machine",
                                    hint=f"watch its output with: mlexec logs -f {run_id}"))
    record, job = _attachable(terminal, plugins, run_id, status, tags)
    # This process supervises the run from now on (so repair leaves it alone).
    store.set_tags(run_id, {**supervisor.record(), supervisor.DETACHED_TAG: ""})
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        supervisor.interrupted.set()
        if len(received) == 1:
            terminal.warning(f"{signal.Signals(signum).name}: detaching; the job goes on "
                             f"(`mlexec cancel {run_id}` stops it)")
            raise KeyboardInterrupt

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    terminal.info(f"=== Attached to run {run_id} ===")
    try:
        final = job.wait()
    except KeyboardInterrupt:
        store.set_tags(run_id, {supervisor.DETACHED_TAG: "true"})
        terminal.info(f"Detached from run {run_id}; attach again with: mlexec attach {run_id}")
        sys.exit(128 + (received[0] if received else signal.SIGINT))
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    _end(store, run_id, final, job.failure_reason, record.output)
    if final is RunStatus.FINISHED:
        terminal.success(f"=== Run {run_id} succeeded ===")
        sys.exit(0)
    reason = f": {job.failure_reason}" if job.failure_reason else ""
    terminal.failure(f"=== Run {run_id} {final.value.lower()}{reason} ===")
    sys.exit(1 if final is RunStatus.FAILED else 128 + signal.SIGTERM)


def _end(store, run_id: str, status, reason: str | None, output=None) -> None:
    """Record how the run ended (and the output this command saw, as ``mlexec/output.log``)."""
    from mlexec_core.builtins.mlflow.hooks import record_end
    from mlexec_core.pipeline.output import ARTIFACT_PATH

    if output is not None:
        log = output.close()
        if log is not None:
            try:
                store.log_artifact(run_id, log, ARTIFACT_PATH)
            except Exception:  # noqa: BLE001  (the status matters more than the log)
                pass
        output.discard()
    record_end(store, run_id, status, reason)


@click.command("cancel")
@click.argument("run_id")
def cancel(run_id: str) -> None:
    """Stop a cluster run's job (from any machine that reaches the cluster); the run ends KILLED."""
    from mlexec_core.pipeline.plan import RunStatus

    terminal, store, plugins, status, tags = _open_run(run_id)
    record, job = _attachable(terminal, plugins, run_id, status, tags)
    job.cancel()
    _end(store, run_id, RunStatus.KILLED, "cancelled with mlexec cancel")
    record.output.discard()
    terminal.success(f"=== Run {run_id} killed ===")


@click.command("logs")
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the run goes on.")
def logs(run_id: str, follow: bool) -> None:
    """Print a run's output: kept with the run once it ended, live while it runs."""
    from mlexec_core import supervisor

    terminal = make_terminal()
    try:
        store = open_store(terminal)
    except MlexecError as exc:
        fail(terminal, exc)
    status, tags, info = _run_tags(terminal, store, run_id)
    out = sys.stdout.buffer
    if status == "RUNNING":
        path = tags.get(supervisor.LOG_TAG)
        if tags.get("mlexec.job.backend"):
            plugins = load_plugins(terminal, warn=False)
            record, job = _attachable(terminal, plugins, run_id, status, tags)
            printer = getattr(job, "print_logs", None)
            if printer is None:
                fail(terminal, MlexecError(f"backend {tags['mlexec.job.backend']!r} cannot show live output"))
            try:
                printer(follow=follow)
            except KeyboardInterrupt:
                sys.exit(130)
            finally:
                record.output.discard()
            return
        if path and tags.get(supervisor.HOST_TAG) == supervisor.hostname() and os.path.isfile(path):
            try:
                _tail_file(path, out, follow, lambda: store.run_info(run_id)[0] == "RUNNING")
            except OSError as exc:
                fail(terminal, MlexecError(f"cannot read the live output of run {run_id}: {exc}"))
            return
        fail(terminal, MlexecError(f"run {run_id} runs on {tags.get(supervisor.HOST_TAG, 'another machine')}; "
                                    "its output is kept with the run when it ends",
                                    hint=f"run `mlexec logs {run_id}` there, or once it has ended"))
    try:
        data = store.download_output(run_id)
    except TrackingError as exc:
        fail(terminal, exc)
    if data is None:
        fail(terminal, MlexecError(f"run {run_id} has no output kept (no mlexec/output.log artifact)",
                                    hint="runs made before mlexec kept output, or by another tool, have none"))
    out.write(data)
    out.flush()


def _tail_file(path: str, out, follow: bool, running) -> None:
    with open(path, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if not follow or not running():
                rest = f.read()
                if rest:
                    out.write(rest)
                    out.flush()
                return
            time.sleep(0.3)
