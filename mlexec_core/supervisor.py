"""Who supervises a run, and what to do when that supervisor is gone.

Every run mlexec creates records its supervisor, the ``mlexec`` process that
waits on its job, as tags:

* ``mlexec.supervisor.host``: this machine's host name;
* ``mlexec.supervisor.pid``: the process id;
* ``mlexec.supervisor.started``: ``<boot id>:<start time in clock ticks>`` from
  ``/proc``, so a reused pid (or a reboot) is not taken for the same process;
* ``mlexec.supervisor.live``: the three above in one value; removed when the run
  ends, so finding the runs that may need repair is one indexed lookup of a
  single tag key (``tags`` is keyed by ``(key, run_uuid)``).

A run whose supervisor is gone (same host, and the pid dead or reused) while
the store still says RUNNING (or SCHEDULED: queued by a batch scheduler) is repaired: it ends FAILED with the reason
"mlexec exited unexpectedly" and when that was noticed.  Cluster runs are
different: their job lives on without the supervisor, so a run tagged
``mlexec.job.detachable`` is only ended once its backend says the job ended.

When the final status of a run cannot be written (the store went away during
the run), it is kept as a small JSON file under ``~/.cache/mlexec/pending/``
(``$MLEXEC_PENDING_DIR``) and written by the next repair once the store answers.

This module imports nothing heavy: it runs on every ``mlexec run``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from mlexec_core.procfs import exists, stat_fields

if TYPE_CHECKING:
    from mlexec_core.builtins.mlflow.store import TrackingStore

HOST_TAG = "mlexec.supervisor.host"
PID_TAG = "mlexec.supervisor.pid"
STARTED_TAG = "mlexec.supervisor.started"
LIVE_TAG = "mlexec.supervisor.live"
#: Path of the run's output log while it runs (for ``mlexec logs -f``).
LOG_TAG = "mlexec.supervisor.log"
#: Set (to "true") by a backend whose job outlives its supervisor (a cluster Job).
DETACHABLE_TAG = "mlexec.job.detachable"
#: Set (to "true") on a run submitted with ``--detach``: nobody supervises it.
DETACHED_TAG = "mlexec.detached"
REASON = "mlexec exited unexpectedly"
PENDING_VAR = "MLEXEC_PENDING_DIR"

#: Set by the CLI's signal handler: stop retrying the store, keep what is left locally.
interrupted = threading.Event()

_me: dict[str, str] = {}


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """``<boot id>:<start ticks>`` of process ``pid``; ``None`` if it does not exist.

    Without procfs, ``""`` for a process that exists (its start cannot be checked).
    """
    try:
        fields = stat_fields(pid)
    except OSError:  # no permission: the kernel says whether it exists, its start cannot be checked
        return "" if exists(pid) else None
    if fields is None:
        return None
    if fields and fields[0] in (b"Z", b"X"):  # a zombie is gone for our purposes
        return None
    return f"{_boot_id()}:{int(fields[19])}"


def hostname() -> str:
    # os.uname() gives what socket.gethostname() does on POSIX, without importing socket
    try:
        return os.uname().nodename or "localhost"
    except OSError:
        return "localhost"


def record() -> dict[str, str]:
    """The supervisor tags for a run this process creates."""
    if not _me:
        pid = os.getpid()
        started = process_start(pid) or ""
        host = hostname()
        _me.update({HOST_TAG: host, PID_TAG: str(pid), STARTED_TAG: started,
                    LIVE_TAG: f"{host} {pid} {started}"})
    return dict(_me)


def parse_live(value: str) -> tuple[str, int, str] | None:
    parts = value.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""


def supervisor_gone(value: str, host: str | None = None) -> bool:
    """Whether the supervisor in a ``mlexec.supervisor.live`` value is known to be gone.

    Only a supervisor on this host can be checked; one elsewhere is never judged.
    """
    parsed = parse_live(value)
    if parsed is None:
        return False
    sup_host, pid, started = parsed
    if sup_host != (host or hostname()):
        return False
    if pid == os.getpid() and started == record()[STARTED_TAG]:
        return False
    now = process_start(pid)
    if now is None:
        return True
    return bool(started) and bool(now) and now != started


def noticed() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


# -- final statuses kept locally ------------------------------------------------------------


def pending_dir() -> Path:
    if os.environ.get(PENDING_VAR):
        return Path(os.environ[PENDING_VAR]).expanduser()
    from mlexec_core.xdg import cache_home

    return cache_home() / "pending"


def save_pending(uri: str, run_id: str, status: str, reason: str | None, end_time: int,
                 tags: Mapping[str, str] | None = None, log: Path | None = None) -> Path | None:
    """Keep a final status the store did not take (and the run's output log, when given);
    ``None`` if even that failed."""
    folder = pending_dir()
    path = folder / f"{run_id}.json"
    data = {"tracking_uri": uri, "run_id": run_id, "status": status, "reason": reason,
            "end_time": end_time, "tags": dict(tags or {}), "log": None}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if log is not None:
            import shutil

            with contextlib.suppress(OSError):
                shutil.copyfile(log, folder / f"{run_id}.log")
                data["log"] = str(folder / f"{run_id}.log")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def pending_for(uri: str) -> list[tuple[Path, dict[str, Any]]]:
    """Final statuses kept for the store at ``uri``."""
    folder = pending_dir()
    try:
        files = sorted(folder.glob("*.json"))
    except OSError:
        return []
    found = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and data.get("tracking_uri") == uri and data.get("run_id"):
            found.append((file, data))
    return found


def has_pending(uri: str, run_id: str) -> bool:
    return any(data["run_id"] == run_id for _, data in pending_for(uri))


# -- repair ------------------------------------------------------------------------------------


class Repaired:
    """One change a repair made (or, ``kind="stale"``, a kept status it dropped), for the
    one-line notice and ``mlexec runs repair``."""

    def __init__(self, run_id: str, status: str, why: str, kind: str = "orphaned") -> None:
        self.run_id = run_id
        self.status = status
        self.why = why
        #: "orphaned" (ended FAILED: its mlexec is gone), "job" (its cluster job ended), "late" (a final
        #: status kept locally, now written) or "stale" (a kept status not written: the run had ended).
        self.kind = kind

    def __repr__(self) -> str:
        return f"Repaired({self.run_id!r}, {self.status!r}, {self.why!r}, {self.kind!r})"


ACTIVE = ("RUNNING", "SCHEDULED")


def repair(store: "TrackingStore", job_status=None) -> list[Repaired]:
    """Repair the runs of ``store`` whose supervisor is gone, and write pending final statuses.

    ``store`` is a :class:`~mlexec_core.builtins.mlflow.store.TrackingStore` (it uses
    ``live_runs()``, ``finish()``, ``status()``, ``clear_live()``, ``log_artifact()``).
    ``job_status(run_id, tags)`` answers for runs whose job outlives its supervisor
    (a cluster Job): a terminal status string, ``"RUNNING"``, or ``None`` when it
    cannot tell (the run is then left alone).

    Repair never overwrites an ended run: every status it writes is a compare-and-set
    (``store.finish(..., force=False)``) that changes a run only while it is still RUNNING
    or SCHEDULED.  A run whose mlexec ended it and exited between ``live_runs()`` and the
    liveness check is judged orphaned, and then left as its mlexec recorded it.
    """
    changed: list[Repaired] = []
    for file, data in pending_for(store.uri):
        run_id, status = data["run_id"], data["status"]
        try:
            tags = dict(data.get("tags") or {})
            if data.get("reason"):
                tags["mlexec.failureReason"] = str(data["reason"])
            log = data.get("log")
            now = store.status(run_id)
            if now in ACTIVE and log and Path(log).is_file():
                store.log_artifact(run_id, Path(log), "mlexec/output.log")
            ended = now in ACTIVE and store.finish(run_id, status, tags, end_time=data.get("end_time"))
            if not ended:
                store.clear_live(run_id)
        except Exception:  # still unreachable: keep it for the next time
            break
        file.unlink(missing_ok=True)
        if log:
            Path(log).unlink(missing_ok=True)
        if ended:
            changed.append(Repaired(run_id, status, "final status recorded late (kept locally while the store "
                                                    "was unreachable)", "late"))
        else:
            changed.append(Repaired(run_id, now, f"the {status} kept locally was not written: the run had "
                                                 f"ended {now} meanwhile", "stale"))
    done = {r.run_id for r in changed}
    host = hostname()
    for run_id, status, tags in store.live_runs():
        if run_id in done:
            continue
        if status not in ACTIVE:  # ended by the job itself or another tool
            store.clear_live(run_id)
            continue
        live = tags.get(LIVE_TAG, "")
        detachable = tags.get(DETACHABLE_TAG) == "true"
        if not detachable and not supervisor_gone(live, host):
            continue
        if detachable:
            if not tags.get(DETACHED_TAG) and not supervisor_gone(live, host):
                continue
            if job_status is None:
                continue
            answer = job_status(run_id, tags)
            if answer is None or answer == "RUNNING":
                continue
            if store.finish(run_id, answer, {}):
                changed.append(Repaired(run_id, answer, "its cluster job ended while no mlexec was attached", "job"))
            continue
        why = f"{REASON} (noticed {noticed()})"
        if store.finish(run_id, "FAILED", {"mlexec.failureReason": why}):
            changed.append(Repaired(run_id, "FAILED", why))
    return changed


def summary(changed: Iterable[Repaired]) -> str:
    changed = list(changed)
    parts = []
    for kind, said in (("orphaned", "marked {n} FAILED whose mlexec exited unexpectedly"),
                       ("late", "recorded the final status of {n}"),
                       ("job", "recorded the end of {n} whose cluster job ended unattended"),
                       ("stale", "dropped the kept final status of {n} that had ended meanwhile")):
        these = [r for r in changed if r.kind == kind]
        if these:
            ids = ", ".join(r.run_id for r in these[:3]) + (" ..." if len(these) > 3 else "")
            n = f"{len(these)} run{'s' if len(these) != 1 else ''}"
            parts.append(f"{said.format(n=n)}: {ids}")
    return "; ".join(parts) + " (`mlexec runs repair` lists such changes)"
