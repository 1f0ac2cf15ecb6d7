"""Running a job as a process group on this machine: the pieces the built-in
``local`` backend is made of, public for plugins.

:class:`ProcessLauncher` starts a command under bash (else sh) in its own
session, so the whole process group can be stopped; its output is piped into
the run's :class:`~mlexec_core.pipeline.output.RunOutput` when the
:class:`~mlexec_core.plugin.interfaces.CommandSpec` carries one.
:class:`ProcessExecution` supervises that group, and :class:`ExecutionJob`
turns any :class:`~mlexec_core.plugin.interfaces.Execution` into a
:class:`~mlexec_core.plugin.interfaces.SubmittedJob`.

Plugins import these from :mod:`mlexec_core.plugin.interfaces`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from typing import Any, Iterator

from mlexec_core.pipeline.plan import RunStatus
from mlexec_core.pipeline.stopping import STOP_TIMEOUT_VAR, stop_timeout  # noqa: F401  (public here for plugins)
from mlexec_core.plugin.interfaces import CommandSpec, Execution, Launcher, SubmittedJob
from mlexec_core.procfs import group_members  # public here for plugins too


def shell() -> list[str]:
    """The shell that runs commands: bash as in MLflow, else sh."""
    return [_which("bash") or "/bin/sh", "-c"]


def _which(name: str) -> str | None:
    """``shutil.which(name)`` for a bare name, without importing shutil (bz2, lzma) on every run."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder or os.curdir, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class ProcessExecution(Execution):
    """A local process leading its own session and process group."""

    #: Seconds to wait, once the leader has exited, for the rest of its output (a
    #: background child that still holds the pipe does not hold up the run's end).
    OUTPUT_DRAIN_TIMEOUT = 2.0

    def __init__(self, proc: subprocess.Popen[Any], pumps: tuple[threading.Thread, ...] = ()) -> None:
        self.proc = proc
        self.pumps = pumps
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        deadline = time.monotonic() + self.OUTPUT_DRAIN_TIMEOUT
        for pump in self.pumps:  # the last lines before the run's status
            pump.join(max(0.0, deadline - time.monotonic()))
        return 128 - code if code < 0 else code

    def _signal(self, signum: int) -> bool:
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def _wait_group(self, until: float, leader_only: bool = False) -> bool:
        """Wait until the group (or just its leader) is gone; ``True`` if it is."""
        while time.monotonic() < until:
            leader_done = self.proc.poll() is not None
            if leader_done and (leader_only or not group_members(self.proc.pid)):
                return True
            time.sleep(0.05)
        return False

    def stop(self, signum: int, grace: float) -> None:
        """``signum`` to the group; SIGTERM to what is left once the leader is gone; SIGKILL at the deadline."""
        self._stopping.set()
        try:
            deadline = time.monotonic() + grace
            if not self._signal(signum):
                return
            if signum != signal.SIGKILL and self._wait_group(deadline, leader_only=True):
                if not group_members(self.proc.pid):
                    return
                if signum != signal.SIGTERM:  # e.g. background jobs of a shell ignore SIGINT
                    self._signal(signal.SIGTERM)
                if self._wait_group(deadline):
                    return
            self._signal(signal.SIGKILL)
            self._wait_group(time.monotonic() + 5)
        finally:
            self._stopped.set()

    def cleanup(self) -> None:
        if self._stopping.is_set():
            self._stopped.wait()
        elif self.proc.poll() is None:
            self.stop(signal.SIGTERM, stop_timeout())
        if not group_members(self.proc.pid):  # what is left (a background child) stays the reaper's
            from mlexec_core import reaper

            reaper.forget_group(self.proc.pid)


class ProcessLauncher(Launcher):
    """Starts a command with the shell, on this machine, in its own session.

    With ``spec.output`` set, stdout and stderr are pipes copied into it (and
    ``PYTHONUNBUFFERED=1`` is set unless the environment says otherwise, so a
    Python job's prints show as they happen); without, the command inherits
    mlexec's stdout and stderr.  Subclass it and override :meth:`start` to
    change the command (mlexec-conda sources ``activate.d`` scripts first).
    """

    def start(self, spec: CommandSpec) -> Execution:
        env = dict(spec.env)
        piped = spec.output is not None
        if piped:
            env.setdefault("PYTHONUNBUFFERED", "1")
        cores = spec.allocation.cores if spec.allocation is not None else ()
        with _pinned(cores):
            proc = subprocess.Popen(
                [*shell(), spec.command],
                cwd=spec.cwd,
                env=env,
                start_new_session=True,
                stdout=subprocess.PIPE if piped else None,
                stderr=subprocess.PIPE if piped else None,
            )
        from mlexec_core import reaper

        reaper.watch_group(proc.pid)  # stopped even if mlexec itself is killed (kill -9, OOM)
        pumps: tuple[threading.Thread, ...] = ()
        if piped:
            pumps = (spec.output.pump(proc.stdout, "stdout"), spec.output.pump(proc.stderr, "stderr"))
        return ProcessExecution(proc, pumps)


@contextlib.contextmanager
def _pinned(cores: tuple[int, ...]) -> Iterator[None]:
    """This thread pinned to ``cores`` (if any) while the block runs: what it forks inherits them."""
    if not cores:
        yield
        return
    previous = os.sched_getaffinity(0)  # pid 0: the calling thread, not the whole of mlexec
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


class ExecutionJob(SubmittedJob):
    """A :class:`SubmittedJob` over one :class:`Execution`.

    ``time_limit`` (seconds, the plan's ``resources.time``): once it has passed, the
    execution is stopped as a cancel stops it (SIGTERM, the stop timeout, SIGKILL) and
    the job ends FAILED with :func:`~mlexec_core.resources.time_limit_reason`.
    """

    def __init__(self, execution: Execution, time_limit: float | None = None) -> None:
        self.execution = execution
        self.cancelled = False
        self.timed_out = False
        self.exit_code: int | None = None
        self.failure_reason: str | None = None
        self.time_limit = time_limit
        self._timer: threading.Timer | None = None
        if time_limit is not None:
            self._timer = threading.Timer(time_limit, self._time_is_up)
            self._timer.daemon = True
            self._timer.start()

    def _time_is_up(self) -> None:
        if self.settled is not None or self.cancelled:
            return
        self.timed_out = True
        self.execution.stop(signal.SIGTERM, stop_timeout())

    def _conclude(self, code: int) -> RunStatus:
        if self._timer is not None:
            self._timer.cancel()
        if self.timed_out and not self.cancelled:
            from mlexec_core.resources import time_limit_reason

            self.settle(RunStatus.FAILED, time_limit_reason(self.time_limit), exit_code=code)
        elif self.cancelled:
            self.settle(RunStatus.KILLED, "stopped by the user", exit_code=code)
        elif code == 0:
            self.settle(RunStatus.FINISHED, exit_code=code)
        elif self.execution.failure_reason(code):
            self.settle(RunStatus.FAILED, self.execution.failure_reason(code), exit_code=code)  # a rank's
        elif code > 128 and code - 128 < signal.NSIG:
            self.settle(RunStatus.FAILED, f"the command was killed by {signal.Signals(code - 128).name}",
                        exit_code=code)
        else:
            self.settle(RunStatus.FAILED, f"the command exited with status {code}", exit_code=code)
        return self.settled

    def wait(self) -> RunStatus:
        if self.settled is not None:
            return self.settled
        try:
            code = self.execution.wait()
        finally:
            self.execution.cleanup()
        return self._conclude(code if code is not None else 1)

    def get_status(self) -> RunStatus:
        if self.settled is None:
            code = self.execution.wait(timeout=0)
            if code is not None:
                self.execution.cleanup()
                return self._conclude(code)
        return self.settled or RunStatus.RUNNING

    def cancel(self, signum: int | None = None) -> None:
        if self.settled is not None:
            return
        self.cancelled = True
        self.execution.stop(signum or signal.SIGTERM, stop_timeout())
