"""The stop contract, enforced by the core whatever the backend does.

Every job gets a mark in its environment (:data:`MARK_VAR`, a random token
per run, added to ``run.env``, which backends pass to the job).  When the run
ends (the job's ``wait()`` has returned, or ``submit()`` failed), the core
looks on this machine for processes that still carry the mark, and ends them
with their whole process groups: SIGTERM, ``MLEXEC_STOP_TIMEOUT`` seconds of
grace, then SIGKILL.  So a backend that signals only its shell (a ``&`` child
ignores SIGINT) or forgets a background process cannot leave anything running
once mlexec has recorded the run's end.

Processes of a remote job (a pod, a Slurm job on another node) are not on this
machine and are the backend's to stop: :meth:`SubmittedJob.cancel` must not
return before the remote system has accepted the stop, and the core waits for
``cancel()`` (bounded, :func:`cancel_timeout`) before it records KILLED.

Linux only (it reads ``/proc``); elsewhere nothing is swept.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

from mlexec_core.procfs import group_members, stat_fields

#: The variable that marks a job's processes; its value is unique to the run.
MARK_VAR = "MLEXEC_JOB_MARK"

#: The variable that sets the stop timeout: seconds between asking a job to stop and killing it.
STOP_TIMEOUT_VAR = "MLEXEC_STOP_TIMEOUT"

#: Seconds, on top of the stop timeout, that the core waits for a backend's ``cancel()``.
CANCEL_MARGIN = 30.0


def new_mark() -> str:
    return uuid.uuid4().hex


def stop_timeout() -> float:
    """Seconds between asking a job to stop and killing it: ``$MLEXEC_STOP_TIMEOUT``, else 10."""
    try:
        return max(0.0, float(os.environ.get(STOP_TIMEOUT_VAR, "10")))
    except ValueError:
        return 10.0


def cancel_timeout() -> float:
    """How long the core waits for ``SubmittedJob.cancel()`` to return: the stop timeout + 30 s."""
    return stop_timeout() + CANCEL_MARGIN


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, process group) of ``pid``, or ``None`` if it is gone."""
    try:
        fields = stat_fields(pid)
    except OSError:
        return None
    if fields is None or len(fields) < 3:
        return None
    return fields[0].decode(), int(fields[2])


def marked_processes(mark: str) -> list[tuple[int, int]]:
    """Live processes of this machine whose environment carries ``MARK_VAR=mark``: ``(pid, pgid)``."""
    needle = f"{MARK_VAR}={mark}".encode()
    own = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone, or another user's
            continue
        if needle not in environ.split(b"\0"):
            continue
        stat = _stat(entry)
        if stat is not None and stat[0] != "Z":
            found.append((int(entry), stat[1]))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid))


def end_marked_processes(mark: str, grace: float) -> list[int]:
    """End every process carrying ``mark``, with its process group (never mlexec's own
    group: there only the marked processes are signalled).  SIGTERM, up to ``grace``
    seconds, then SIGKILL.  Returns the pids that were found (empty: nothing was left)."""
    found = marked_processes(mark)
    if not found:
        return []
    own_group = os.getpgrp()
    seen = {pid for pid, _ in found}
    groups: set[int] = set()
    singles: set[int] = set()

    def scan(current: list[tuple[int, int]]) -> None:
        for pid, pgid in current:
            seen.add(pid)
            if pgid != own_group:
                groups.add(pgid)
            else:
                singles.add(pid)

    def send(signum: int) -> None:
        scan(marked_processes(mark))  # what forked in the meantime too
        for pgid in groups:
            try:
                os.killpg(pgid, signum)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in singles:
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def left() -> bool:
        return bool(marked_processes(mark)) or any(_group_alive(g) for g in groups)

    scan(found)
    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while left():
        if time.monotonic() >= deadline:
            send(signal.SIGKILL)
            kill_deadline = time.monotonic() + 5
            while left() and time.monotonic() < kill_deadline:
                time.sleep(0.05)
            break
        time.sleep(0.05)
    return sorted(seen)
