"""A submitted Slurm job: its output streamed, its state followed, cancelled cleanly.

How mlexec follows a job without loading the controller and without lag:

- the output file (``job.out`` on the shared filesystem) is read every
  ``OUTPUT_INTERVAL`` s and what is new goes to the run's output;
- the batch script writes ``exit-status`` as it exits (also when Slurm stops
  it with SIGTERM); when that file appears, mlexec asks the controller at once
  and every ``FAST_INTERVAL`` s until the job has left the queue, so a run ends
  within a fraction of a second of its job;
- otherwise ``squeue`` is asked every ``QUEUE_INTERVAL`` s: for the pending
  reason, the start, and ends the script cannot report (NODE_FAIL, SIGKILL
  after KillWait, a pending job cancelled by someone else);
- once the job has left the queue its final state comes from ``scontrol show
  job`` (kept for MinJobAge), else from accounting (``sacct``), else from the
  exit status the script wrote.

A job Slurm starts again with the same job id (``--requeue``, set when the run
may restart: preempted, its node lost, ``scontrol requeue``) goes on in the same
run: when the job leaves RUNNING for the queue again (PENDING, REQUEUED), or
its restart count (``Restarts``) has grown by its end, mlexec asks accounting
why (the ended attempt's state: PREEMPTED, NODE_FAIL, REQUEUED; else
slurmstepd's line in the output) and tells the core
(:meth:`~mlexec_core.plugin.interfaces.SubmittedJob.report_restart`); when the
core says no (no restarts left, the run is being stopped), the job is cancelled
and the run ends FAILED with that reason.  A job that ended PREEMPTED or
NODE_FAIL without a requeue sets :attr:`restart_reason`, and the core submits
it again.  Every attempt appends to ``job.out`` (``--open-mode=append``).

The run's ``time`` resource is enforced here, to the second: Slurm's own limit
(``--time``) counts whole minutes and its kill comes only at its next check, so
a timer started when the job is seen RUNNING cancels it as Ctrl-C does
(``scancel``) and the run ends FAILED with
:func:`~mlexec_core.resources.time_limit_reason`, the words every backend uses;
a job Slurm ends TIMEOUT (mlexec was stopped, or Slurm came first) ends with
the same words.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Mapping

from mlexec_core import reaper
from mlexec_core.errors import MlexecError
from mlexec_core.plugin.interfaces import Reporter, RunRecord, RunStatus, SubmittedJob
from mlexec_core.distributed import rank_failure_reason
from mlexec_core.resources import format_duration, time_limit_reason

from mlexec_slurm.cluster import ACTIVE_STATES, SlurmClient
from mlexec_slurm.script import JobDir

OUTPUT_INTERVAL = 0.1
QUEUE_INTERVAL = 1.0
FAST_INTERVAL = 0.05
#: Seconds to wait for a cancelled job to leave the queue before saying so.
CANCEL_WAIT = 120
#: Seconds to wait for accounting (sacct) to record the end of a job the controller has forgotten.
ACCOUNTING_WAIT = 5
#: Seconds of controller errors in a row before the run is given up as FAILED.
GIVE_UP_SECONDS = 300

TAG_JOB_ID = "mlexec.slurm.job-id"
TAG_CLUSTER = "mlexec.slurm.cluster"
TAG_PARTITION = "mlexec.slurm.partition"
TAG_NODES = "mlexec.slurm.nodes"
TAG_STATE = "mlexec.slurm.state"

#: What the common pending reasons mean, for the terminal.
PENDING_REASONS = {
    "None": "waiting for the scheduler's next pass",
    "Priority": "jobs with a higher priority are ahead in the queue",
    "Resources": "waiting for the requested resources to become free",
    "BeginTime": "its start time has not come yet",
    "Dependency": "waiting for the jobs it depends on",
    "DependencyNeverSatisfied": "its dependency can never be satisfied: it will not start",
    "JobHeldUser": "held by its user (scontrol release)",
    "JobHeldAdmin": "held by an administrator",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "PartitionTimeLimit": "its time limit exceeds the partition's",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "ReqNodeNotAvail": "a node it needs is not available (down, drained or reserved)",
    "NodeDown": "a node it needs is down",
    "BadConstraints": "no node can satisfy its constraints: it will not start",
    "Reservation": "waiting for its advanced reservation",
    "QOSMaxJobsPerUserLimit": "the QOS limit on your running jobs is reached",
    "AssocMaxJobsLimit": "the account's limit on running jobs is reached",
    "AssocGrpCpuLimit": "the account's CPU limit is reached",
    "AssocGrpGRES": "the account's GRES (GPU) limit is reached",
    "launch failed requeued held": "its launch failed and it was requeued held",
}

#: Why Slurm ended a job, by final state (the exit code is added where it says something).
END_REASONS = {
    "TIMEOUT": "Slurm stopped the job at its time limit (TIMEOUT{limit})",
    "OUT_OF_MEMORY": "the job ran out of memory and was killed (OUT_OF_MEMORY{mem})",
    "NODE_FAIL": "a node running the job failed (NODE_FAIL{nodes})",
    "PREEMPTED": "the job was preempted by a higher-priority job (PREEMPTED)",
    "BOOT_FAIL": "the node allocated to the job failed to boot (BOOT_FAIL{nodes})",
    "DEADLINE": "the job reached its deadline before it could finish (DEADLINE)",
    "CANCELLED": "the job was cancelled outside mlexec ({state}: scancel by its user or an administrator)",
}


#: States of a job Slurm has put back in the queue to start it again.
REQUEUE_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
#: Why Slurm started the job again, in the core's words, by the state its attempt ended with.
RESTART_REASONS = {"PREEMPTED": "was preempted", "NODE_FAIL": "lost its node", "REQUEUED": "was requeued"}
#: The same from slurmstepd's line in the job's output (``*** JOB 12 ON vm CANCELLED AT ... DUE TO PREEMPTION ***``),
#: for a cluster without accounting.
OUTPUT_CAUSES = ((b"DUE TO PREEMPTION", "was preempted"), (b"DUE TO NODE FAILURE", "lost its node"),
                 (b"DUE TO JOB REQUEUE", "was requeued"))
#: A restart the core refused, as the run's reason.
REFUSED_RESTARTS = {
    "was preempted": "the job was preempted by a higher-priority job (PREEMPTED)",
    "lost its node": "a node running the job failed (NODE_FAIL)",
    "was requeued": "the job was requeued (scontrol requeue)",
}


def output_writer(run: RunRecord) -> Callable[[bytes], None]:
    """Where the job's output goes: the run's output (mlexec's output contract), which
    the core gives every run it hands a backend."""
    sink = run.output
    return lambda data: sink.write(data, "stdout")


class SlurmJob(SubmittedJob):
    """One batch job, as the run sees it."""

    def __init__(self, client: SlurmClient, job_id: str, job_dir: JobDir, reporter: Reporter,
                 tags: Mapping[str, str], write: Callable[[bytes], None], *, time_limit: str | None = None,
                 mem: str | None = None, run_time_limit: float | None = None,
                 keep_job_dir: bool = False, max_restarts: int = 0) -> None:
        self.client = client
        self.job_id = job_id
        self.job_dir = job_dir
        self.reporter = reporter
        self.tags: dict[str, str] = dict(tags)
        self.write = write
        #: Slurm's limit (``--time``) as given to sbatch.
        self.time_limit = time_limit
        #: The run's ``time`` resource in seconds: enforced by mlexec from the job's start.
        self.run_time_limit = run_time_limit
        #: Whether mlexec cancelled the job because :attr:`run_time_limit` had passed.
        self.timed_out = False
        self._timer: threading.Timer | None = None
        self.mem = mem
        self.keep_job_dir = keep_job_dir
        #: The run's ``--max-restarts`` (the job is submitted with ``--requeue`` when it is above 0).
        self.max_restarts = max_restarts
        #: Slurm's restarts of the job (``Restarts``) that the core has been told of.
        self.restarts = 0
        #: Slurm requeued the job and squeue has not yet seen it run again.
        self._awaiting_restart = False
        #: The job has run at least once (squeue said so, or its output arrived).
        self._ran = False
        self.failure_reason: str | None = None
        self.exit_code: int | None = None
        self.cancelled = False
        #: Slurm's reason while the job is pending (Priority, Resources ...), else ``None``.
        self.pending_reason: str | None = None
        self.slurm_state = "PENDING"
        #: SCHEDULED, RUNNING once it starts (SCHEDULED again if Slurm requeues it); the end is :attr:`settled`.
        self._status = RunStatus.SCHEDULED
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._gone = threading.Event()
        self._offset = 0
        self._output_lock = threading.Lock()
        self._errors_since: float | None = None
        self._following = False
        self._reported_pending = False
        self._follow_lock = threading.Lock()
        self._done = threading.Event()
        # If this mlexec is killed (kill -9, the OOM killer), its reaper cancels the job.
        reaper.watch_command(self._reaper_key, ["scancel", job_id])

    @property
    def _reaper_key(self) -> str:
        return f"slurm-{self.job_id}"

    # -- SubmittedJob -------------------------------------------------------------------

    def wait(self) -> RunStatus:
        if not self._follow_lock.acquire(blocking=False):  # another thread follows the job: wait for it
            self._done.wait()
            return self.settled or self._status
        self._following = True
        try:
            self._follow()
        finally:
            self._following = False
            self._pump_output()
            if self.settled is not None:
                reaper.forget_command(self._reaper_key)
                if not self.keep_job_dir:
                    self.job_dir.remove()
            self._follow_lock.release()
            self._done.set()
        return self.settled or self._status

    def get_status(self) -> RunStatus:
        if not self._following and self.settled is None:  # nobody in wait(): ask Slurm now
            try:
                entry = self.client.queue(self.job_id)
            except MlexecError as exc:
                self.reporter.warning(f"cannot ask Slurm about job {self.job_id}: {exc.message}")
                return self.settled or self._status
            if entry is None:
                self._gone.set()
                if self.cancelled:
                    self._settle(RunStatus.KILLED, "stopped by the user")
                else:
                    self._conclude()
            else:
                self._on_queue(entry)
        return self.settled or self._status

    def cancel(self, signum: int | None = None) -> None:
        import signal

        with self._lock:
            if self.settled is not None and not self.cancelled:
                return
            first = not self.cancelled
            self.cancelled = True
        kill = signum == signal.SIGKILL
        if first or kill:
            try:
                problem = self.client.cancel(self.job_id, kill=kill)
            except MlexecError as exc:
                problem = exc.message
            if problem:
                self.reporter.warning(f"could not cancel Slurm job {self.job_id}: {problem}; "
                                      f"cancel it with: scancel {self.job_id}")
            elif first:
                self.reporter.info(f"Cancelled Slurm job {self.job_id}; waiting for it to leave the queue")
        self._wake.set()
        # Wait (here too: the Python API's cancel() returns once the job is gone) until it left the queue.
        deadline = time.monotonic() + CANCEL_WAIT
        while not self._gone.is_set() and time.monotonic() < deadline:
            try:
                if self.client.queue(self.job_id, max_age=FAST_INTERVAL) is None:
                    self._gone.set()
                    break
            except MlexecError:
                pass
            time.sleep(FAST_INTERVAL * 2)
        if not self._gone.is_set():
            self.reporter.warning(f"Slurm job {self.job_id} is still in the queue {CANCEL_WAIT} s after scancel; "
                                  f"check it with: squeue -j {self.job_id}")
        self._settle(RunStatus.KILLED, "stopped by the user")

    # -- following the job --------------------------------------------------------------

    def _follow(self) -> None:
        next_query = 0.0
        while self.settled is None:
            self._pump_output()
            now = time.monotonic()
            ending = self.cancelled or self.timed_out or self.job_dir.exit_status.exists()
            if now >= next_query or ending:
                try:
                    # A task of an array may share an answer up to half an interval old, unless it is ending.
                    entry = self.client.queue(self.job_id, max_age=0.0 if ending else QUEUE_INTERVAL / 2)
                except MlexecError as exc:
                    self._controller_trouble(exc)
                    entry = ...  # unknown: ask again later
                else:
                    self._errors_since = None
                if entry is None:
                    self._gone.set()
                    self._pump_output()
                    if self.cancelled:
                        self._settle(RunStatus.KILLED, "stopped by the user")
                    else:
                        self._conclude()
                    return
                if entry is not ...:
                    self._on_queue(entry)
                next_query = now + (FAST_INTERVAL if ending else QUEUE_INTERVAL)
            self._wake.wait(OUTPUT_INTERVAL if not ending else FAST_INTERVAL)
            self._wake.clear()

    def _controller_trouble(self, exc: MlexecError) -> None:
        now = time.monotonic()
        if self._errors_since is None:
            self._errors_since = now
            self.reporter.warning(f"cannot ask Slurm about job {self.job_id}: {exc.message}; retrying")
        elif now - self._errors_since > GIVE_UP_SECONDS:
            self._settle(RunStatus.FAILED, f"Slurm did not answer about job {self.job_id} for "
                                           f"{GIVE_UP_SECONDS} s: {exc.message}")

    def _on_queue(self, entry) -> None:
        self.slurm_state = entry.state
        if entry.state in REQUEUE_STATES:
            with self._lock:
                requeued = self._status is RunStatus.RUNNING and self.settled is None
                if requeued:
                    self._status = RunStatus.SCHEDULED
                    self._stop_timer()  # Slurm starts the limit again with the next attempt; so does mlexec
            # Left by the attempt Slurm requeued: the next one has not ended.
            self.job_dir.exit_status.unlink(missing_ok=True)
            if requeued and not self._requeued():
                return
            if not requeued and self._ran and not self._restarts_caught_up():
                return
            if entry.state == "PENDING":
                reason = entry.reason or "None"
                if reason != self.pending_reason:
                    self.pending_reason = reason
                    meaning = PENDING_REASONS.get(reason)
                    self.reporter.info(f"Slurm job {self.job_id} is pending: {reason}"
                                       + (f" ({meaning})" if meaning else ""))
            if requeued or not self._reported_pending:
                self._reported_pending = True
                self.report_status(RunStatus.SCHEDULED)  # the tracker shows the run as queued
            return
        if entry.state in ("RUNNING", "COMPLETING", "CONFIGURING"):
            self._awaiting_restart = False
            self._started(entry.nodes)

    def _started(self, nodes: str | None) -> None:
        """The job runs (squeue says so, or its first output arrived): say where, once."""
        with self._lock:
            if self._status is not RunStatus.SCHEDULED or self.settled is not None:  # started, or ended
                return
            self._status = RunStatus.RUNNING
        self.pending_reason = None
        self._ran = True
        self._start_timer()
        if nodes:
            self.tags[TAG_NODES] = nodes
        self.reporter.info(f"Slurm job {self.job_id} is running" + (f" on {nodes}" if nodes else ""))
        if self._reported_pending:
            self.report_status(RunStatus.RUNNING)

    # -- Slurm started the job again --------------------------------------------------

    def _restarts_caught_up(self) -> bool:
        """Queued again after it ran, without mlexec seeing it run in between (an attempt that ran for
        less than mlexec's look at the queue): Slurm's own count of restarts says whether it was
        requeued meanwhile.  ``False`` when the core refused a restart and the run ended."""
        try:
            info = self.client.show_job(self.job_id)
        except MlexecError:
            return True
        count = _int((info or {}).get("Restarts")) or 0
        if count <= self.restarts:
            return True
        self._awaiting_restart = True
        return self._catch_up(count, cancel=True)

    def _requeued(self) -> bool:
        """The job left RUNNING for the queue: Slurm will start it again. Tell the core of every
        restart not yet told (usually one); ``False`` when it refused and the run ended."""
        info = None
        try:
            info = self.client.show_job(self.job_id)
        except MlexecError:
            pass
        # At least one restart (squeue saw it happen), though the controller's count may lag.
        count = max(_int((info or {}).get("Restarts")) or 0, self.restarts + 1)
        # The rest of the ended attempt's output must not count as the next attempt's start.
        self._awaiting_restart = True
        return self._catch_up(count, cancel=True)

    def _catch_up(self, count: int, *, cancel: bool) -> bool:
        """Tell the core of Slurm's restarts ``self.restarts + 1 .. count``; when it refuses one,
        cancel the job (``cancel``: it is still queued) and end the run with that reason."""
        if count <= self.restarts:
            return True
        history = self._history(count)
        while self.restarts < count:
            self.restarts += 1
            reason = self._restart_cause(history, self.restarts)
            if self.report_restart(reason):
                self.reporter.info(f"Slurm job {self.job_id} {reason}; Slurm starts it again "
                                   f"(restart {self.restarts})")
                continue
            if cancel:
                try:
                    problem = self.client.cancel(self.job_id)
                except MlexecError as exc:
                    problem = exc.message
                if problem:
                    self.reporter.warning(f"could not cancel Slurm job {self.job_id}: {problem}; "
                                          f"cancel it with: scancel {self.job_id}")
                else:
                    self._gone.set()  # a pending job leaves the queue at once
            if self.cancelled:
                self._settle(RunStatus.KILLED, "stopped by the user")
            else:
                self._settle(RunStatus.FAILED, f"{REFUSED_RESTARTS.get(reason, 'the job ' + reason)} "
                                               f"[Slurm job {self.job_id}]")
            return False
        return True

    def _history(self, count: int) -> list[str]:
        """The states the job's attempts ended with, from accounting (``sacct -D``), once it has
        recorded the first ``count``; ``[]`` without accounting."""
        deadline = time.monotonic() + ACCOUNTING_WAIT
        while True:
            try:
                states = self.client.attempts(self.job_id)
            except MlexecError:
                states = None
            if states is None:
                return []
            if len(states) >= count and all(state not in ACTIVE_STATES for state in states[:count]):
                return states
            if time.monotonic() >= deadline:
                return states
            time.sleep(0.2)

    def _restart_cause(self, history: list[str], restart: int) -> str:
        """Why Slurm made restart number ``restart`` (1, 2 ...), in the core's words."""
        if len(history) >= restart and history[restart - 1] in RESTART_REASONS:
            return RESTART_REASONS[history[restart - 1]]
        try:
            with open(self.job_dir.output, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 65536))
                tail = f.read()
        except OSError:
            tail = b""
        found = [(tail.rfind(marker), reason) for marker, reason in OUTPUT_CAUSES if marker in tail]
        return max(found)[1] if found else "was requeued"

    # -- the run's time limit ---------------------------------------------------------

    def _start_timer(self) -> None:
        if self.run_time_limit is None:
            return
        with self._lock:
            if self._timer is not None or self.settled is not None:
                return
            self._timer = threading.Timer(self.run_time_limit, self._time_is_up)
            self._timer.daemon = True
            self._timer.start()

    def _stop_timer(self) -> None:
        """Under ``self._lock``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _time_is_up(self) -> None:
        """The run's time has passed since the job started: stop it as Ctrl-C does (``scancel``);
        :meth:`_conclude` ends the run FAILED once it has left the queue."""
        with self._lock:
            if self.settled is not None or self.cancelled or self.timed_out:
                return
            self.timed_out = True
        try:
            problem = self.client.cancel(self.job_id)
        except MlexecError as exc:
            problem = exc.message
        limit = format_duration(self.run_time_limit)
        if problem:
            self.reporter.warning(f"Slurm job {self.job_id} reached its time limit ({limit}) but could not be "
                                  f"cancelled: {problem}; cancel it with: scancel {self.job_id}")
        else:
            self.reporter.info(f"Slurm job {self.job_id} reached its time limit ({limit}): cancelled it; "
                               "waiting for it to leave the queue")
        self._wake.set()

    def _pump_output(self) -> None:
        with self._output_lock:
            try:
                with open(self.job_dir.output, "rb") as f:
                    f.seek(0, 2)
                    size = f.tell()
                    if size < self._offset:  # requeued: Slurm started the file again
                        self._offset = 0
                    if size == self._offset:
                        return
                    f.seek(self._offset)
                    data = f.read(size - self._offset)
            except FileNotFoundError:
                return
            except OSError as exc:
                self.reporter.warning(f"cannot read the job's output {self.job_dir.output}: {exc}")
                return
            self._offset += len(data)
        if data:
            if not self._awaiting_restart:
                self._started(None)
            self.write(data)

    # -- the end ------------------------------------------------------------------------

    def _final_info(self) -> dict[str, str] | None:
        try:
            info = self.client.show_job(self.job_id)
        except MlexecError:
            info = None
        if info:
            return info
        # The controller has forgotten the job (MinJobAge): ask accounting. slurmdbd is
        # written asynchronously, so a record may still say RUNNING for a moment.
        deadline = time.monotonic() + ACCOUNTING_WAIT
        while True:
            try:
                info = self.client.accounting(self.job_id)
            except MlexecError:
                info = None
            state = (info or {}).get("JobState", "").split(" ")[0]
            if info and state not in ACTIVE_STATES:
                return info
            if info is None or time.monotonic() >= deadline:
                return None  # no accounting, or it never caught up: the script's exit status says
            time.sleep(0.2)

    def _output_says_out_of_memory(self) -> bool:
        try:
            with open(self.job_dir.output, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 8192))
                tail = f.read()
        except OSError:
            return False
        return b"Exceeded job memory limit" in tail or b"exceeded memory limit" in tail

    def _script_status(self) -> int | None:
        try:
            return int(self.job_dir.exit_status.read_text().strip())
        except (OSError, ValueError):
            return None

    def _conclude(self) -> None:
        info = self._final_info()
        if info is None:
            code = self._script_status()
            if self.timed_out and code != 0:
                self._settle(RunStatus.FAILED, time_limit_reason(self.run_time_limit), exit_code=code)
            elif code is None or code == 143:  # 143: the script was stopped by Slurm, which no longer says why
                self._settle(RunStatus.FAILED, f"Slurm no longer knows job {self.job_id} and there is no "
                                               "accounting (sacct) to ask how it ended"
                             + ("; its batch script says Slurm stopped it (exit status 143)" if code else ""),
                             exit_code=code)
            elif code == 0:
                self._settle(RunStatus.FINISHED, exit_code=0)
            elif self.job_dir.rank_failure() is not None:
                self._settle_rank_failure()
            else:
                self._settle(RunStatus.FAILED, f"the command exited with status {code} (Slurm job {self.job_id})",
                             exit_code=code)
            return
        state_text = info.get("JobState", "")
        state = state_text.split()[0] if state_text else "UNKNOWN"
        # Restarts Slurm made that mlexec did not see happen (the job ran again between two questions).
        if not self._catch_up(_int(info.get("Restarts")) or 0, cancel=False):
            return
        if state in ("PREEMPTED", "NODE_FAIL"):  # ended without a requeue (--no-requeue, or the cluster's choice)
            self.restart_reason = RESTART_REASONS[state]
        self.slurm_state = state
        self.tags[TAG_STATE] = state
        if info.get("NodeList") and info["NodeList"] not in ("(null)", "None assigned"):
            self.tags[TAG_NODES] = info["NodeList"]
        code, sig = _exit_code(info.get("ExitCode", ""))
        script = self._script_status()
        if state == "COMPLETED":  # also when it finished just as mlexec cancelled it for its time
            self._settle(RunStatus.FINISHED, exit_code=0)
            return
        limit_seconds = self.run_time_limit if self.run_time_limit is not None else _seconds(info.get("TimeLimit"))
        if self.timed_out or (state == "TIMEOUT" and limit_seconds is not None):
            # Stopped by mlexec at the run's time, or by Slurm at its own (whole minutes) limit, the run's
            # or the config's: the same words as every backend's.
            self._settle(RunStatus.FAILED, time_limit_reason(limit_seconds), exit_code=code or script)
            return
        if state == "FAILED" and self._output_says_out_of_memory():
            # Clusters without cgroups kill a job over --mem through job accounting (OverMemoryKill):
            # Slurm says FAILED, SIGKILL; slurmstepd says why in the output.
            self._settle(RunStatus.FAILED, "the job exceeded its memory limit and was killed"
                         + (f" (--mem={self.mem})" if self.mem else "") + f" [Slurm job {self.job_id}: FAILED]",
                         exit_code=code if code else (script or 1))
            return
        if state == "FAILED" and self.job_dir.rank_failure() is not None:
            self._settle_rank_failure()
            return
        if state == "FAILED":
            if sig:
                import signal as _signal

                name = _signal.Signals(sig).name if 0 < sig < _signal.NSIG else f"signal {sig}"
                reason = f"the command was killed by {name}"
            elif code:
                reason = f"the command exited with status {code}"
            else:
                reason = f"the job failed ({info.get('Reason') or 'no reason given'})"
            self._settle(RunStatus.FAILED, f"{reason} (Slurm job {self.job_id}: FAILED)",
                         exit_code=code if code else (script or 1))
            return
        template = END_REASONS.get(state)
        limit = info.get("TimeLimit")
        details = {
            "limit": f", time limit {limit}" if limit and limit not in ("UNLIMITED", "Partition_Limit") else "",
            "mem": f", --mem={self.mem}" if self.mem else "",
            "nodes": f" on {info['NodeList']}" if info.get("NodeList") not in (None, "", "(null)") else "",
            "state": state_text,
        }
        reason = template.format(**details) if template else \
            f"Slurm ended the job as {state}" + (f" ({info['Reason']})" if info.get("Reason") not in (None, "", "None") else "")
        self._settle(RunStatus.FAILED, f"{reason} [Slurm job {self.job_id}]", exit_code=code or script)

    def _settle_rank_failure(self) -> None:
        """A run of many processes whose first failing rank recorded itself (rank.sh): srun
        (``--kill-on-bad-exit``) stopped the others; the run fails naming it, as every backend does."""
        rank, code = self.job_dir.rank_failure()
        self._settle(RunStatus.FAILED, f"{rank_failure_reason(rank, code)} [Slurm job {self.job_id}]",
                     exit_code=code)

    def _settle(self, status: RunStatus, reason: str | None = None, exit_code: int | None = None) -> None:
        """:meth:`settle`, then wake the thread that follows the job."""
        if self.settle(status, reason, exit_code):
            with self._lock:
                self._stop_timer()
            self._wake.set()


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _exit_code(text: str) -> tuple[int | None, int | None]:
    """``ExitCode=N:S`` (exit status, signal) from scontrol or sacct."""
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


def _seconds(limit: str | None) -> float | None:
    """Slurm's ``TimeLimit`` (``00:01:00``, ``1-00:00:00``) in seconds; ``None`` for ``UNLIMITED`` and the like."""
    from mlexec_core.resources import ResourceValueError, parse_duration

    if not limit:
        return None
    try:
        return parse_duration(limit)
    except ResourceValueError:
        return None
