"""The built-in ``local`` backend and ``local`` environment manager.

The backend runs the command on this machine in its own session (so its
process group can be stopped as a whole), with its output piped through the
run's output (shown live, kept with the run).  The environment manager uses
the environment mlexec itself runs in, as ``mlflow run --env-manager local`` does.
The process pieces are in :mod:`mlexec_core.plugin.process`; the hooks that
register these classes (as records) are in :mod:`mlexec_core.builtins.local_plugin`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable

import attrs

from mlexec_core.pipeline.plan import RunPlan, RunRecord, RunStatus
from mlexec_core.plugin.interfaces import (
    Allocation,
    Backend,
    CommandSpec,
    EnvironmentManager,
    Launcher,
    PreparedEnvironment,
    SubmittedJob,
    command_env,
)
from mlexec_core.plugin.process import ExecutionJob, ProcessLauncher, shell
from mlexec_core.project.model import Project


class LocalEnvironment(EnvironmentManager):
    """The environment mlexec runs in (registered in :mod:`mlexec_core.builtins.local_plugin`)."""

    def prepare(self, plan: RunPlan) -> PreparedEnvironment:
        from mlexec_core.reproduce import recording

        lock = None
        if recording():  # the lock is only for the run's record (MLEXEC_RECORD=off: no record, no probe)
            from mlexec_core.reproduce.interpreter import local_lock

            lock = local_lock()
        return PreparedEnvironment(name="local", location="current environment", lock=lock)

    def describe(self, project: Project) -> str:
        return "the current environment (nothing is installed)"


class LocalBackend(Backend):
    """Runs on this machine (registered in :mod:`mlexec_core.builtins.local_plugin`).

    A plan that asks for ``gpus``, ``cpus`` or ``memory`` gets its own share of the
    machine (:mod:`mlexec_core.allocation`): the job waits, SCHEDULED, until it is
    free, then runs with its devices, pinned to its cores, in a memory cgroup where
    mlexec may make one.  A plan that asks for none of them runs as it always did."""

    def check(self, plan: RunPlan) -> None:
        if _asks(plan):
            from mlexec_core import allocation

            allocation.check(plan.resources)
            if allocation.request_for(plan.resources):
                allocation.LeaseStore().check()

    def submit(self, plan: RunPlan, run: RunRecord, prepared: PreparedEnvironment | None) -> SubmittedJob:
        spec = CommandSpec(
            command=plan.command,
            cwd=plan.work_dir,
            env=command_env(os.environ, prepared, run),
            added={**(prepared.env if prepared else {}), **run.env},
            output=run.output,
        )
        launcher = (prepared.launcher if prepared else None) or ProcessLauncher()
        if (plan.resources.processes_per_node or 1) > 1:  # one run, P processes of this node
            from mlexec_core.distributed import RankedLauncher

            per_node = plan.resources.processes_per_node
            launcher = launcher.ranked(per_node) or RankedLauncher(launcher, per_node)
        if _asks(plan):
            from mlexec_core.allocation import CUDA_VAR, request_for

            if request_for(plan.resources):
                return AllocatedJob(plan, spec, launcher)
            spec = attrs.evolve(spec, env={**spec.env, CUDA_VAR: ""})  # gpus: 0, and nothing else to lease
            job = ExecutionJob(launcher.start(spec), time_limit=plan.resources.time)
            job.tags = {"mlexec.gpus": ""}
            return job
        return ExecutionJob(launcher.start(spec), time_limit=plan.resources.time)

    def dry_run(self, plan: RunPlan) -> dict[str, Any]:
        out: dict[str, Any] = {"cwd": str(plan.work_dir), "shell": shell()[0]}
        if (plan.resources.processes_per_node or 1) > 1:
            from mlexec_core.distributed import node_ranks

            ranks = node_ranks(plan.resources.processes_per_node, master_port=0)
            out["processes"] = [" ".join(f"{k}={v if k != 'MASTER_PORT' else '<free port>'}"
                                         for k, v in rank.env.items()) for rank in ranks]
        if _asks(plan):
            from mlexec_core import allocation

            request = allocation.request_for(plan.resources)
            out["machine"] = allocation.describe_pool()
            out["allocation"] = (f"{request.describe()} of its own, leased on this machine "
                                 f"(waits while they are held)") if request else "no GPU (CUDA_VISIBLE_DEVICES='')"
            found = allocation.problem(plan.resources)
            if found is not None:
                out["refused"] = found[0]
        return out


def _asks(plan: RunPlan) -> bool:
    """Whether the plan asks for this machine's GPUs, cores or memory (only then is
    :mod:`mlexec_core.allocation` imported)."""
    resources = plan.resources
    return resources.gpus is not None or resources.cpus is not None or resources.memory is not None


class AllocatedJob(SubmittedJob):
    """A job that runs once its share of the machine is leased to it.

    Submitted, it asks the lease store; while what it needs is held by other jobs
    (of this mlexec or another), it is SCHEDULED with a :attr:`pending_reason`
    naming who holds what, and a thread asks again.  Granted, it starts the command
    with its devices (``CUDA_VISIBLE_DEVICES``), pinned to its cores, in its memory
    cgroup, reports RUNNING and behaves as an :class:`ExecutionJob` (whose time limit
    counts from then).  The lease is given back however the job ends; cancelled while
    it waits, it ends KILLED with nothing started.
    """

    def __init__(self, plan: RunPlan, spec: CommandSpec, launcher: Launcher) -> None:
        import uuid

        from mlexec_core import allocation

        self.plan = plan
        self.spec = spec
        self.launcher = launcher
        self.request = allocation.request_for(plan.resources)
        self.pool = allocation.gpu_pool() if self.request.gpus else allocation.GpuPool()
        self.store = allocation.LeaseStore()
        self.ticket = uuid.uuid4().hex
        #: What this machine gave the job (its GPUs, cores, memory), once it has it; ``None`` while it waits.
        self.allocation: Allocation | None = None
        self.inner: ExecutionJob | None = None
        self.lease: str | None = None
        self.cgroup: str | None = None
        self._lock = threading.RLock()
        self._deliver = threading.RLock()
        self._reported: RunStatus | None = None
        self._listener: Callable[[RunStatus], None] | None = None
        self._cancelled = False
        self._begun = threading.Event()  # the command started, or the job ended before it could
        self._released = False
        self._waiter: threading.Thread | None = None
        grant = self._ask()
        if grant is not None:
            with self._lock:
                self._start(grant)  # an error here is submit()'s: nothing is left held
            return
        self._report(RunStatus.SCHEDULED)
        if spec.output is not None:  # one line, kept with the run: why nothing happens yet
            spec.output.write(f"mlexec: {self.pending_reason}\n".encode(), "stderr")
        self._waiter = threading.Thread(target=self._wait_for_lease, name="mlexec-lease", daemon=True)
        self._waiter.start()

    # -- the lease --------------------------------------------------------------------

    def _ask(self):
        from mlexec_core.allocation import Grant
        from mlexec_core.pipeline.stopping import MARK_VAR

        try:
            answer = self.store.acquire(self.request, self.ticket, pool=self.pool,
                                        mark=self.spec.env.get(MARK_VAR))
        except OSError as exc:
            from mlexec_core.errors import BackendError

            raise BackendError(f"the local backend cannot use its lease store {self.store.path}: "
                               f"{exc.strerror or exc}",
                               hint="it is under $XDG_STATE_HOME (~/.local/state): make it writable") from None
        if isinstance(answer, Grant):
            return answer
        self.pending_reason = answer
        return None

    def _wait_for_lease(self) -> None:
        import time

        from mlexec_core.allocation import wait_for_release

        asked = time.monotonic()
        try:
            while True:
                with self._lock:
                    if self._cancelled:
                        self.store.withdraw(self.ticket)
                        self.settle(RunStatus.KILLED, "stopped by the user while it waited for "
                                    f"{self.request.describe()}")
                        return
                    grant = self._ask()
                    if grant is not None:
                        self._start(grant, waited=time.monotonic() - asked)
                        break
                wait_for_release()
        except BaseException as exc:  # noqa: BLE001  (the job ends FAILED; nothing is left held)
            with contextlib.suppress(Exception):
                self.store.withdraw(self.ticket)
            self.settle(RunStatus.FAILED, f"could not start: {type(exc).__name__}: {exc}".rstrip(": "))
            return
        finally:
            self._begun.set()
        self._report(RunStatus.RUNNING)

    def _start(self, grant, waited: float | None = None) -> None:
        """Start the command with what ``grant`` holds (under ``self._lock``); on any error the lease is released."""
        from mlexec_core import allocation
        from mlexec_core.resources import format_size

        self.lease = grant.lease
        try:
            got = grant.allocation
            env = dict(self.spec.env)
            added = dict(self.spec.added)
            extra = allocation.job_environment(got, env)
            env.update(extra)
            added.update({k: v for k, v in extra.items() if k != allocation.CUDA_VAR})  # a container numbers its own
            command = self.spec.command
            note = None
            if got.memory and isinstance(self.launcher, ProcessLauncher):
                folder, why = allocation.memory_cgroup(f"mlexec-{grant.lease}", got.memory)
                if folder is not None:
                    self.cgroup = str(folder)
                    command = allocation.enter_cgroup_prefix(folder) + command
                else:
                    note = (f"mlexec: memory {format_size(got.memory)} is admission only here, "
                            f"not enforced: {why}\n")
            spec = attrs.evolve(self.spec, command=command, env=env, added=added, allocation=got)
            if waited is not None and (got.gpus or got.cores):
                note = (note or "") + (f"mlexec: starting on {allocation.describe_allocation(got)} "
                                       f"after waiting {waited:.1f}s\n")
            if note and spec.output is not None:
                spec.output.write(note.encode(), "stderr")
            execution = self.launcher.start(spec)
            proc = getattr(execution, "proc", None)
            self.store.started(grant.lease, getattr(proc, "pid", None), self.cgroup)
        except BaseException:
            self._release()
            raise
        self.allocation = got
        tags = {}
        if got.gpus:
            tags["mlexec.gpus"] = ",".join(got.gpus)
        if got.cores:
            tags["mlexec.cores"] = ",".join(map(str, got.cores))
        self.tags = tags
        self.pending_reason = None
        self.inner = ExecutionJob(execution, time_limit=self.plan.resources.time)
        self._begun.set()

    def _release(self) -> None:
        with self._lock:
            if self._released or self.lease is None:
                return
            self._released = True
        from mlexec_core.allocation import remove_cgroup

        if self.cgroup is not None and remove_cgroup(self.cgroup):
            self.cgroup = None
        self.store.release(self.lease)

    def _ended(self, status: RunStatus) -> RunStatus:
        """Settle as the command ended (the kernel's memory kill named as such); give the lease back."""
        inner = self.inner
        reason = inner.failure_reason if inner else None
        if status is RunStatus.FAILED and self.cgroup is not None and not (inner and inner.timed_out):
            from mlexec_core.allocation import oom_kills
            from mlexec_core.resources import format_size

            if oom_kills(self.cgroup):
                reason = (f"out of memory: the job went over its memory={format_size(self.allocation.memory)} "
                          f"and the kernel killed it ({reason})")
        self._release()
        self.settle(status, reason, exit_code=inner.exit_code if inner else None)
        return self.settled or status

    # -- SubmittedJob -----------------------------------------------------------------

    def wait(self) -> RunStatus:
        self._begun.wait()
        if self.inner is None:
            return self.settled or RunStatus.FAILED
        try:
            status = self.inner.wait()
        except BaseException:
            self._release()
            raise
        return self._ended(status)

    def get_status(self) -> RunStatus:
        if self.settled is not None:
            return self.settled
        inner = self.inner
        if inner is None:
            return RunStatus.SCHEDULED
        status = inner.get_status()
        return self._ended(status) if status.terminal else status

    def cancel(self, signum: int | None = None) -> None:
        with self._lock:
            if self.inner is None and self.settled is None:
                self._cancelled = True
        if self.inner is None:
            from mlexec_core.allocation import wake_waiters

            wake_waiters()
            self._begun.wait()
            if self.inner is None:
                return
        self.inner.cancel(signum)

    # -- SCHEDULED, then RUNNING, in that order, whenever mlexec starts listening ------

    def _report(self, status: RunStatus) -> None:
        with self._deliver:
            self._reported = status
            if self._listener is not None:
                self._listener(status)

    @property  # type: ignore[override]
    def status_listener(self) -> Callable[[RunStatus], None] | None:
        return self._listener

    @status_listener.setter
    def status_listener(self, listener: Callable[[RunStatus], None] | None) -> None:
        """Set by mlexec after :meth:`Backend.submit` returns: what was reported before is told now."""
        with self._deliver:
            self._listener = listener
            if listener is not None and self._reported is not None:
                listener(self._reported)
