"""The built-in ``local`` backend and ``local`` environment manager.

The backend runs the command on this machine in its own session (so its
process group can be stopped as a whole), with output going straight to the
terminal.  The environment manager uses the environment mlexec itself runs
in, as ``mlflow run --env-manager local`` does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Any

from mlexec_core.pipeline.plan import RunPlan, RunRecord, RunStatus
from mlexec_core.plugin import hookimpl
from mlexec_core.plugin.interfaces import (
    Backend,
    CommandSpec,
    EnvironmentManager,
    Execution,
    Launcher,
    PreparedEnvironment,
    SubmittedJob,
    command_env,
)
from mlexec_core.project.model import EnvKind, Project

#: Seconds between asking a job to stop and killing it.
STOP_TIMEOUT_VAR = "MLEXEC_STOP_TIMEOUT"


def stop_timeout() -> float:
    try:
        return max(0.0, float(os.environ.get(STOP_TIMEOUT_VAR, "10")))
    except ValueError:
        return 10.0


def shell() -> list[str]:
    """The shell that runs commands: bash as in MLflow, else sh."""
    return [shutil.which("bash") or "/bin/sh", "-c"]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: ask the kernel whether anything is left at all
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


class ProcessExecution(Execution):
    """A local process leading its own session and process group."""

    def __init__(self, proc: subprocess.Popen[Any]) -> None:
        self.proc = proc
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
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


class ProcessLauncher(Launcher):
    """Starts a command with the shell, on this machine."""

    def start(self, spec: CommandSpec) -> Execution:
        proc = subprocess.Popen(
            [*shell(), spec.command],
            cwd=spec.cwd,
            env=dict(spec.env),
            start_new_session=True,
        )
        return ProcessExecution(proc)


class ExecutionJob(SubmittedJob):
    """A :class:`SubmittedJob` over one :class:`Execution`."""

    def __init__(self, execution: Execution) -> None:
        self.execution = execution
        self.cancelled = False
        self.exit_code: int | None = None
        self.failure_reason: str | None = None
        self._status = RunStatus.RUNNING

    def _settle(self, code: int) -> RunStatus:
        self.exit_code = code
        if self.cancelled:
            self._status = RunStatus.KILLED
            self.failure_reason = "stopped by the user"
        elif code == 0:
            self._status = RunStatus.FINISHED
        else:
            self._status = RunStatus.FAILED
            if code > 128 and code - 128 < signal.NSIG:
                self.failure_reason = f"the command was killed by {signal.Signals(code - 128).name}"
            else:
                self.failure_reason = f"the command exited with status {code}"
        return self._status

    def wait(self) -> RunStatus:
        if self._status.terminal:
            return self._status
        try:
            code = self.execution.wait()
        finally:
            self.execution.cleanup()
        return self._settle(code if code is not None else 1)

    def get_status(self) -> RunStatus:
        if not self._status.terminal:
            code = self.execution.wait(timeout=0)
            if code is not None:
                self.execution.cleanup()
                return self._settle(code)
        return self._status

    def cancel(self, signum: int | None = None) -> None:
        if self._status.terminal:
            return
        self.cancelled = True
        self.execution.stop(signum or signal.SIGTERM, stop_timeout())


class LocalEnvironment(EnvironmentManager):
    name = "local"
    handles = frozenset({EnvKind.NONE, EnvKind.PYTHON, EnvKind.CONDA})
    default_for = frozenset({EnvKind.NONE})
    priority = 0
    description = "the environment mlexec runs in; the project's environment file is not used"

    def prepare(self, plan: RunPlan) -> PreparedEnvironment:
        return PreparedEnvironment(name="local", location="current environment")

    def describe(self, project: Project) -> str:
        return "the current environment (nothing is installed)"


class LocalBackend(Backend):
    name = "local"
    description = "runs on this machine, output streamed to the terminal"

    def submit(self, plan: RunPlan, run: RunRecord, prepared: PreparedEnvironment | None) -> SubmittedJob:
        spec = CommandSpec(
            command=plan.command,
            cwd=plan.work_dir,
            env=command_env(os.environ, prepared, run),
            added={**(prepared.env if prepared else {}), **run.env},
        )
        launcher = (prepared.launcher if prepared else None) or ProcessLauncher()
        return ExecutionJob(launcher.start(spec))

    def dry_run(self, plan: RunPlan) -> dict[str, Any]:
        return {"cwd": str(plan.work_dir), "shell": shell()[0]}


@hookimpl
def mlexec_backends():
    return [LocalBackend]


@hookimpl
def mlexec_environment_managers():
    return [LocalEnvironment]
