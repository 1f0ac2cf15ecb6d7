"""Slurm's client commands (sbatch, squeue, scontrol, scancel, sacct), run as processes.

Slurm has no stable Python API; its commands are what every submit host has,
and they read the machine's Slurm configuration (``/etc/slurm/slurm.conf`` or
``$SLURM_CONF``) themselves.  Every failure that means "the user has something
to fix" (no client on PATH, the controller down, a refused option) becomes one
:class:`~mlexec_core.errors.BackendError` with a hint.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence

from attrs import frozen

from mlexec_core.errors import BackendError

#: Seconds a query (squeue, scontrol) may take before it counts as unanswered.
QUERY_TIMEOUT = 30
#: States in which a job is still in the queue (not ended).
ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "RESIZING", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT", "STOPPED", "SPECIAL_EXIT",
})

_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z_/:]*)=")


@frozen
class QueueEntry:
    """A job as ``squeue`` shows it while it is in the queue."""

    state: str
    reason: str
    nodes: str
    partition: str


def parse_scontrol(text: str) -> dict[str, str]:
    """``scontrol show job -o`` (one line of ``Key=Value``; values may hold spaces) as a dict."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    matches = list(_FIELD.finditer(line))
    out = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out[match.group(1)] = line[match.end():end].strip()
    return out


class _ArraySnapshot:
    """The last ``squeue`` of one job array, and when it was asked for."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asked = float("-inf")
        self.value: dict[str, QueueEntry] = {}

    def entries(self, fetch, max_age: float) -> dict[str, QueueEntry]:
        wanted = time.monotonic()
        with self.lock:  # askers at the same time wait for one squeue and share it
            if self.asked >= wanted - max_age:
                return self.value
            asked = time.monotonic()
            self.value = fetch()
            self.asked = asked
            return self.value


class SlurmClient:
    """The Slurm commands on this machine's PATH."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self._arrays: dict[str, _ArraySnapshot] = {}
        self._arrays_lock = threading.Lock()

    def tool(self, name: str) -> str:
        path = shutil.which(name, path=self.environ.get("PATH"))
        if path is None:
            raise BackendError(
                f"the Slurm client command {name} is not on PATH",
                hint="run mlexec on a submit host of the cluster (a login node), with Slurm's client commands "
                     "installed (Debian/Ubuntu: apt install slurm-client) or loaded (module load slurm)")
        return path

    def run(self, args: Sequence[str], *, timeout: float = QUERY_TIMEOUT, check: bool = False,
            what: str | None = None) -> subprocess.CompletedProcess[str]:
        exe = self.tool(args[0])
        try:
            proc = subprocess.run([exe, *args[1:]], capture_output=True, text=True, env=self.environ,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BackendError(f"{args[0]} did not answer within {timeout:.0f} s",
                               hint="the Slurm controller may be overloaded or unreachable; "
                                    "try `scontrol ping`") from None
        if check and proc.returncode != 0:
            raise BackendError(f"{what or args[0]} failed: {error_text(proc)}")
        return proc

    # -- before submitting ------------------------------------------------------------

    def ping(self) -> None:
        """Raise when no controller answers (slurmctld down, no or wrong configuration)."""
        proc = self.run(["scontrol", "ping"], timeout=20)
        text = (proc.stdout + proc.stderr).strip()
        if proc.returncode == 0 and " is UP" in text:
            return
        first = next((line for line in text.splitlines() if line.strip() and not line.startswith("*")),
                     "no answer")
        conf = self.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
        raise BackendError(f"the Slurm controller is unreachable: {first.strip()}",
                           hint=f"check that slurmctld runs and that {conf} (SLURM_CONF) names it; "
                                "`scontrol ping` and `sinfo` should answer")

    def cluster_name(self) -> str:
        proc = self.run(["scontrol", "show", "config"])
        for line in proc.stdout.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ClusterName":
                return value.strip()
        return ""

    def test_only(self, options: Sequence[str], script: Path) -> str:
        """``sbatch --test-only``: the cluster's verdict on ``options``, without submitting.

        Returns sbatch's forecast ("Job 12 to start at ... in partition debug");
        raises with sbatch's own message when the cluster refuses.
        """
        proc = self.run(["sbatch", "--test-only", *options, str(script)], timeout=60)
        text = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise BackendError(f"the cluster refuses the job: {error_text(proc)}",
                               hint="check partition, account, qos, time and the resources (the backend config's, "
                                    "and the run's: -R, the MLproject's resources:) against `sinfo` (`sinfo -o "
                                    "'%P %c %m %G'`: CPUs, memory and GPUs per partition) and "
                                    "`sacctmgr show assoc user=$USER`; "
                                    "`mlexec run ... --dry-run` shows the sbatch options")
        return text.splitlines()[-1].removeprefix("sbatch: ") if text else ""

    # -- the job ----------------------------------------------------------------------

    def submit(self, options: Sequence[str], script: Path) -> str:
        proc = self.run(["sbatch", "--parsable", *options, str(script)], timeout=120)
        if proc.returncode != 0:
            raise BackendError(f"sbatch refused the job: {error_text(proc)}",
                               hint="`mlexec run ... --dry-run` shows the sbatch options and the batch script")
        job_id = proc.stdout.strip().splitlines()[-1].split(";")[0].strip() if proc.stdout.strip() else ""
        if not job_id.isdigit():
            raise BackendError(f"sbatch answered {proc.stdout.strip()!r}, not a job id")
        return job_id

    def watch_array(self, array_id: str) -> None:
        """Answer :meth:`queue` for the tasks of job array ``array_id`` (``ARRAYID_i``) from one
        ``squeue`` of the whole array, shared by every task that asks at about the same time,
        instead of one ``squeue`` per task: a 100-task sweep polls the controller as one job does."""
        with self._arrays_lock:
            self._arrays.setdefault(array_id, _ArraySnapshot())

    def queue(self, job_id: str, max_age: float = 0.0) -> QueueEntry | None:
        """The job while it is in the queue; ``None`` once it has left it (or Slurm forgot it).

        ``max_age``: for a task of a watched array, an answer this many seconds old will do."""
        array_id, sep, _ = job_id.partition("_")
        snapshot = self._arrays.get(array_id) if sep else None
        if snapshot is not None:
            return snapshot.entries(lambda: self._squeue(array_id), max_age).get(job_id)
        return self._squeue(job_id).get(job_id)

    def _squeue(self, job_id: str) -> dict[str, QueueEntry]:
        """``squeue`` of a job (or of every task of an array) while in the queue, by job id
        (``-r``: an array's pending tasks each as ``ARRAYID_i`` too); ``{}`` when the controller
        does not know it (any more)."""
        proc = self.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%i|%T|%r|%N|%P"])
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr:
                return {}
            raise BackendError(f"squeue failed: {error_text(proc)}")
        entries = {}
        for line in proc.stdout.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 5 and parts[1] in ACTIVE_STATES:
                entries[parts[0]] = QueueEntry(*parts[1:])
        return entries

    def show_job(self, job_id: str) -> dict[str, str] | None:
        """``scontrol show job``: kept by the controller for MinJobAge after the end."""
        proc = self.run(["scontrol", "show", "job", "-o", job_id])
        if proc.returncode != 0 or not proc.stdout.strip():
            return None
        info = parse_scontrol(proc.stdout)
        array_task = f"{info.get('ArrayJobId')}_{info.get('ArrayTaskId')}"  # a task of a job array
        return info if job_id in (info.get("JobId"), array_task) else None

    def accounting(self, job_id: str) -> dict[str, str] | None:
        """The job's record in Slurm's accounting (``sacct``); ``None`` when there is none
        (accounting storage disabled, or sacct not installed)."""
        if shutil.which("sacct", path=self.environ.get("PATH")) is None:
            return None
        proc = self.run(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o",
                         "State,ExitCode,Reason,NodeList,Timelimit"])
        if proc.returncode != 0:
            return None
        records = [parts for parts in (line.split("|") for line in proc.stdout.splitlines())
                   if len(parts) == 5 and parts[0]]
        if not records:
            return None
        last = records[-1]  # -D: one record per attempt of a requeued job, the last one last
        return {"JobState": last[0], "ExitCode": last[1], "Reason": last[2], "NodeList": last[3],
                "TimeLimit": last[4], "Restarts": str(len(records) - 1), "source": "sacct"}

    def attempts(self, job_id: str) -> list[str] | None:
        """The state of each attempt of a job Slurm requeued, first to last (``sacct -D``: PREEMPTED,
        NODE_FAIL, REQUEUED ... then the current one); ``None`` without accounting."""
        if shutil.which("sacct", path=self.environ.get("PATH")) is None:
            return None
        proc = self.run(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o", "State"])
        if proc.returncode != 0:
            return None
        return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]

    def cancel(self, job_id: str, *, kill: bool = False) -> str | None:
        """``scancel``; ``kill``: SIGKILL to everything of the job first. Returns an error text, or ``None``."""
        if kill:
            self.run(["scancel", "--full", "--signal=KILL", job_id])
        proc = self.run(["scancel", job_id])
        if proc.returncode != 0 and "already completing or completed" not in proc.stderr \
                and "Invalid job id" not in proc.stderr:
            return error_text(proc)
        return None


def error_text(proc: subprocess.CompletedProcess[str]) -> str:
    """The interesting part of a Slurm command's complaint, in one line."""
    lines = [line.strip() for line in (proc.stderr + "\n" + proc.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "failure" in line.lower()]
    picked = errors or lines or [f"exit status {proc.returncode}"]
    seen: list[str] = []
    for line in picked:
        line = re.sub(r"^(sbatch|squeue|scontrol|scancel|sacct): (error: )?", "", line)
        if line not in seen:
            seen.append(line)
    return "; ".join(seen[:2])
