"""``processes-per-node: P`` for docker_env projects: the P processes of a run in one container.

One container per run, as for one process, so that its limits (``cpus``,
``memory``, ``shm``, the GPUs' device request) are the run's: it starts with an
idle process under Docker's init, and each rank is a ``docker exec`` into it
with its own variables (:func:`mlexec_core.distributed.node_ranks`: the rank
variables, ``MASTER_ADDR=127.0.0.1`` since the ranks share the container's
network, its share of ``CUDA_VISIBLE_DEVICES``), its own output stream
(prefixed ``[rank N]``) and its own exit code.  The ranks are supervised as one
job by :class:`~mlexec_core.distributed.RankedExecution` (the first to fail
stops the others; a stop stops all); the container is stopped and removed at
the end, as for one process, with the reaper told about it meanwhile.

An exec cannot be signalled through the Engine API, so each rank starts by
printing its process id on stderr (``mlexec-rank-pid N``, taken out of its
output here) and is stopped with ``kill`` run in the container: ``SIGTERM``
(or the signal mlexec got), then ``SIGKILL`` after the grace period.
"""

from __future__ import annotations

import signal as signals
import threading
import time
import uuid
from typing import Any, Iterable

from mlexec_core import reaper
from mlexec_core.distributed import PrefixedOutput, RankedExecution, node_ranks
from mlexec_core.errors import BackendError
from mlexec_core.plugin.interfaces import CommandSpec, Execution, Launcher, echo_to_terminal, stop_timeout

from mlexec_docker.engine import Engine, EngineError
from mlexec_docker.launcher import RUN_LABEL, ContainerLauncher, remove_container

#: The container's own process while the ranks run in it (under Docker's init, which stops it on SIGTERM).
IDLE = ["tail", "-f", "/dev/null"]
#: The first line a rank prints on stderr: its process id in the container.
PID_MARK = b"mlexec-rank-pid "
#: Prints the mark, then becomes ``sh -c <command>`` (the same process, so the id stays right).
WRAPPER = 'echo "mlexec-rank-pid $$" >&2; exec sh -c "$1"'
#: How much output is searched for the mark before giving up (an entrypoint that talks first).
_MARK_WINDOW = 8192


class _Terminal:
    """mlexec's own stdout and stderr, for a launcher used without a run's output."""

    write = staticmethod(echo_to_terminal)


class RankExecution(Execution):
    """One rank: a process ``docker exec``-ed into the run's container, followed until it ends."""

    def __init__(self, engine: Engine, container: str, exec_id: str, rank: int, attached: tuple[Any, Any],
                 tty: bool, output: PrefixedOutput) -> None:
        self.engine = engine
        self.container = container
        self.exec_id = exec_id
        self.rank = rank
        self.output = output
        #: The rank's process id in the container, once its first line said it.
        self.pid: int | None = None
        self._pid_known = threading.Event()
        self._exit: int | None = None
        self._conn = attached[0]
        self._logs = threading.Thread(target=self._stream, args=(attached, tty), name=f"mlexec-rank-{rank}",
                                      daemon=True)
        self._logs.start()

    def _stream(self, attached: tuple[Any, Any], tty: bool) -> None:
        conn, resp = attached
        marked = 1 if tty else 2  # the stream the mark comes on (a TTY has one)
        head = b""
        try:
            for stream, data in self.engine.frames(resp, tty=tty):
                name = "stderr" if stream == 2 else "stdout"
                if not self._pid_known.is_set() and stream == marked:
                    data = self._take_mark(head + data)
                    head = b""
                    if not self._pid_known.is_set():  # the mark's line is not complete yet
                        head, data = data, b""
                if data:
                    self.output.write(data, name)
        except Exception:  # the container went away while attached: nothing more to show
            pass
        finally:
            if head:
                self.output.write(head, "stdout" if tty else "stderr")
            self._pid_known.set()
            self.output.flush("stdout")
            self.output.flush("stderr")
            conn.close()

    def _take_mark(self, data: bytes) -> bytes:
        """``data`` without the mark's line, the pid taken from it; lines before it are kept. While
        the line is incomplete, returns ``data`` unchanged with the pid still unknown."""
        shown = []
        rest = data
        while b"\n" in rest:
            line, rest = rest.split(b"\n", 1)
            if line.rstrip(b"\r").startswith(PID_MARK):
                try:
                    self.pid = int(line.rstrip(b"\r")[len(PID_MARK):])
                except ValueError:
                    pass
                self._pid_known.set()
                return b"".join(shown) + rest
            shown.append(line + b"\n")
        if len(data) > _MARK_WINDOW:  # not ours to find: give up, show everything
            self._pid_known.set()
        return data

    def _state(self) -> int | None:
        """The exit code once the process has ended; ``None`` while it runs."""
        try:
            state = self.engine.exec_inspect(self.exec_id)
        except EngineError:
            state = None
        if state is None:  # the container is gone, and the process with it
            return 128 + signals.SIGKILL
        if state.get("Running") or state.get("ExitCode") is None:
            return None
        return int(state["ExitCode"])

    def wait(self, timeout: float | None = None) -> int | None:
        if self._exit is not None:
            return self._exit
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if self._logs.is_alive():  # its output ends when it does: wait for that first
                self._logs.join(1.0 if left is None else max(0.0, min(1.0, left)))
            code = self._state()
            if code is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return None
            if not self._logs.is_alive():
                time.sleep(0.05)
        self._logs.join(timeout=10)  # the last lines of output before the run's status
        self._exit = code
        return code

    def _signal(self, signum: int) -> None:
        if self.pid is None:  # it never said which process it is: stop the container, and it with it
            self.engine.kill(self.container, "SIGKILL")
            return
        name = signals.Signals(signum).name[3:]
        self.engine.exec_detached(self.container, ["sh", "-c", f"kill -s {name} {self.pid} 2>/dev/null"])

    def stop(self, signum: int, grace: float) -> None:
        """``signum`` to the rank's process, with ``kill`` in the container; SIGKILL after ``grace`` s."""
        if self.wait(0) is not None:
            return
        self._pid_known.wait(min(max(grace, 0.1), 5.0))
        try:
            if signum != signals.SIGKILL:
                self._signal(signum)
                if self.wait(max(grace, 0.1)) is not None:
                    return
                if signum != signals.SIGTERM:  # SIGINT ignored (a shell's background job ...): ask again
                    self._signal(signals.SIGTERM)
                    if self.wait(1.0) is not None:
                        return
            self._signal(signals.SIGKILL)
            self.wait(10)
        except EngineError:  # the container is gone: so is the rank
            pass

    def cleanup(self) -> None:
        self._conn.close()
        self._logs.join(timeout=5)


class ContainerRanks(RankedExecution):
    """The ranks of one container as one job; the container is removed once they have ended."""

    def __init__(self, engine: Engine, container: str, name: str,
                 executions: list[tuple[int, Execution]]) -> None:
        self.engine = engine
        self.container = container
        self.name = name
        self.stopped = False
        self.cleaned = False
        super().__init__(executions)

    def stop(self, signum: int, grace: float) -> None:
        self.stopped = True
        super().stop(signum, grace)

    def cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        if not self.stopped and self.wait(0) is None:  # not seen to end: stop the ranks first
            self.stop(signals.SIGTERM, stop_timeout())
        remove_container(self.engine, self.container)
        reaper.forget_container(self.container)
        super().cleanup()


def rank_variables(container_env: Iterable[str], per_node: int) -> list[tuple[int, dict[str, str]]]:
    """Each rank and what its exec adds to the container's variables (``NAME=value`` items): the rank
    variables, ``MASTER_ADDR=127.0.0.1``, and its share of the container's ``CUDA_VISIBLE_DEVICES``
    (the devices as the container numbers them) when the run has GPUs."""
    visible = dict(item.split("=", 1) for item in container_env if "=" in item).get("CUDA_VISIBLE_DEVICES")
    devices = tuple(d for d in visible.split(",") if d) if visible else None
    out = []
    for rank in node_ranks(per_node, devices=devices, master_addr="127.0.0.1"):
        env = dict(rank.env)
        if rank.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(rank.devices)
        out.append((int(env["RANK"]), env))
    return out


class RankedContainerLauncher(Launcher):
    """Starts a command as ``per_node`` ranks in one new container of ``launcher``'s image, with
    ``launcher``'s configuration (:meth:`ContainerLauncher.body`: mounts, variables, limits)."""

    def __init__(self, launcher: ContainerLauncher, per_node: int) -> None:
        self.launcher = launcher
        self.per_node = per_node

    def start(self, spec: CommandSpec) -> Execution:
        engine = self.launcher.engine
        body = self.launcher.body(spec)
        tty = bool(body.get("Tty"))
        entrypoint = body.get("Entrypoint")
        if entrypoint is None:  # the image's, as `docker run` would put in front of the command
            entrypoint = ((engine.image(body["Image"]) or {}).get("Config") or {}).get("Entrypoint")
        entrypoint = [part for part in entrypoint or () if part]
        ranks = rank_variables(body["Env"], self.per_node)
        body = {**body, "Entrypoint": IDLE, "Cmd": [], "AttachStdout": False, "AttachStderr": False}
        run_id = body["Labels"].get(RUN_LABEL) or "norun"
        name = f"mlexec-{self.launcher.project}-{run_id[:12]}-{uuid.uuid4().hex[:6]}"
        output = spec.output if spec.output is not None else _Terminal()
        container = None
        executions: list[tuple[int, Execution]] = []
        try:
            container = engine.create(body, name=name)
            reaper.watch_container(container)  # stopped and removed even if mlexec is killed
            engine.start(container)
            for number, env in ranks:
                exec_id = engine.exec_create(container, {
                    "Cmd": [*entrypoint, "sh", "-c", WRAPPER, "mlexec-rank", spec.command],
                    "Env": [f"{k}={v}" for k, v in env.items()],
                    "WorkingDir": body.get("WorkingDir") or "",
                    "User": body.get("User") or "",
                    "Tty": tty, "AttachStdout": True, "AttachStderr": True,
                })
                attached = engine.exec_start(exec_id, tty=tty)
                executions.append((number, RankExecution(engine, container, exec_id, number, attached, tty,
                                                         PrefixedOutput(output, f"[rank {number}] "))))
            return ContainerRanks(engine, container, name, executions)
        except BaseException as exc:
            if container is not None:
                remove_container(engine, container)  # the ranks started end with it
                reaper.forget_container(container)
            for _, execution in executions:
                execution.cleanup()
            if isinstance(exc, EngineError) and exc.status == 409:  # no running container to exec into
                raise BackendError(f"the container's idle process ({' '.join(IDLE)}) ended at once: {exc.message}",
                                   hint="processes-per-node needs an image with sh and tail") from None
            if isinstance(exc, EngineError):
                raise BackendError(f"the container could not start: {exc.message}",
                                   hint="check the -A options and docker_env.volumes") from None
            raise
