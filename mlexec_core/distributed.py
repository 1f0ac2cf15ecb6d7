"""One run, many processes: the rank contract and its local launcher (issue 22, first part).

For ``nodes: N`` and ``processes-per-node: P`` a backend starts the entry
point's command N x P times, each process with the variables
``torch.distributed``'s ``env://`` reads (:func:`rank_environment`):
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``NODE_RANK``,
``NNODES``, ``MASTER_ADDR`` and ``MASTER_PORT`` (free, the same for all).  With
``gpus: k``, each process of a node gets its own ``k / P`` of the node's devices
when ``k`` is a multiple of ``P``; otherwise every process sees all ``k`` and
picks its own with ``LOCAL_RANK`` (:func:`device_shares`).

:class:`RankedLauncher` does it on one node: it wraps the launcher that would
start the command once and starts it P times, each rank's output prefixed
``[rank N]``; :class:`RankedExecution` supervises them as one job: when a rank
fails, the others are stopped (as ``torchrun`` does) and the job fails naming
the first rank that failed and its exit code; a stop stops every rank.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, BinaryIO, Mapping, Sequence

import attrs

from mlexec_core.plugin.interfaces import CommandSpec, Execution, Launcher

#: The variables every process gets, in the order ``--dry-run`` shows them.
RANK_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "NNODES", "MASTER_ADDR",
             "MASTER_PORT")


def rank_failure_reason(rank: int, code: int) -> str:
    """Why a run of many processes failed, in the words every backend uses:
    ``rank 1 exited with status 3; the other ranks were stopped`` (or ``was killed by SIGKILL``)."""
    import signal

    if code > 128 and code - 128 < signal.NSIG:
        what = f"was killed by {signal.Signals(code - 128).name}"
    else:
        what = f"exited with status {code}"
    return f"rank {rank} {what}; the other ranks were stopped"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rank_environment(*, node_rank: int, local_rank: int, nodes: int, per_node: int, master_addr: str,
                     master_port: int) -> dict[str, str]:
    """The variables of one process (``RANK = NODE_RANK * P + LOCAL_RANK``)."""
    return {
        "WORLD_SIZE": str(nodes * per_node),
        "RANK": str(node_rank * per_node + local_rank),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(per_node),
        "NODE_RANK": str(node_rank),
        "NNODES": str(nodes),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
    }


def device_shares(devices: Sequence[str], per_node: int) -> list[tuple[str, ...]]:
    """Each local rank's devices: its own ``k / P`` when ``k`` is a multiple of ``P`` (so that a
    process sees only its own GPUs, as ``torchrun`` users set by hand), else all ``k`` for every
    rank (which then picks its own with ``LOCAL_RANK``: uneven shares would make ranks unequal)."""
    devices = tuple(devices)
    if devices and len(devices) % per_node == 0:
        size = len(devices) // per_node
        return [devices[i * size:(i + 1) * size] for i in range(per_node)]
    return [devices] * per_node


class PrefixedOutput:
    """A run's output seen through one rank: every line it prints starts with ``[rank N] ``.

    Lines are kept whole (a line is written once its end arrives, or at the end of the
    stream), so two ranks' lines never interleave within a line."""

    def __init__(self, output: Any, prefix: str) -> None:
        self.output = output
        self.prefix = prefix.encode()
        self._partial: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def write(self, data: bytes, stream: str = "stdout") -> None:
        if isinstance(data, str):
            data = data.encode()
        with self._lock:
            text = self._partial.get(stream, b"") + data
            *lines, self._partial[stream] = text.split(b"\n")
        if lines:
            self.output.write(b"".join(self.prefix + line + b"\n" for line in lines), stream)

    def flush(self, stream: str) -> None:
        with self._lock:
            rest = self._partial.pop(stream, b"")
        if rest:
            self.output.write(self.prefix + rest + b"\n", stream)

    def pump(self, pipe: BinaryIO, stream: str = "stdout") -> threading.Thread:
        """Copy ``pipe`` in, prefixed, until it ends, in a thread; return it (started)."""
        from mlexec_core.pipeline.output import pump

        return pump(pipe, self.write, stream, at_end=lambda: self.flush(stream))


@attrs.frozen
class Rank:
    """One process of a run: its ranks and what it sees."""

    local_rank: int
    env: Mapping[str, str]
    devices: tuple[str, ...] | None = None


def node_ranks(per_node: int, *, nodes: int = 1, node_rank: int = 0, devices: Sequence[str] | None = None,
               master_addr: str = "127.0.0.1", master_port: int | None = None) -> list[Rank]:
    """The P processes of one node: their variables, and their devices when ``devices`` is given."""
    port = master_port if master_port is not None else free_port(master_addr)
    shares = device_shares(devices, per_node) if devices is not None else [None] * per_node
    return [Rank(i, rank_environment(node_rank=node_rank, local_rank=i, nodes=nodes, per_node=per_node,
                                     master_addr=master_addr, master_port=port), shares[i])
            for i in range(per_node)]


class RankedLauncher(Launcher):
    """Starts a command as P processes of one node through ``inner`` (the launcher that would
    start it once), each with its rank's variables and devices and its output prefixed."""

    def __init__(self, inner: Launcher, per_node: int) -> None:
        self.inner = inner
        self.per_node = per_node

    def start(self, spec: CommandSpec) -> Execution:
        devices = None
        visible = spec.env.get("CUDA_VISIBLE_DEVICES")
        if spec.allocation is not None and spec.allocation.gpus:
            devices = spec.allocation.gpus
        elif visible:
            devices = tuple(d for d in visible.split(",") if d)
        ranks = node_ranks(self.per_node, devices=devices)
        executions: list[tuple[int, Execution]] = []
        try:
            for rank in ranks:
                extra = dict(rank.env)
                if rank.devices is not None:
                    extra["CUDA_VISIBLE_DEVICES"] = ",".join(rank.devices)
                output = PrefixedOutput(spec.output, f"[rank {rank.env['RANK']}] ") if spec.output is not None \
                    else None
                one = attrs.evolve(spec, env={**spec.env, **extra}, added={**spec.added, **extra}, output=output)
                executions.append((int(rank.env["RANK"]), self.inner.start(one)))
        except BaseException:
            for _, execution in executions:
                execution.stop(15, 5.0)
                execution.cleanup()
            raise
        return RankedExecution(executions)


class RankedExecution(Execution):
    """The P processes of one run as one :class:`Execution`: it ends when every rank has ended;
    the first rank to fail stops the others and is the job's failure."""


    def __init__(self, executions: Sequence[tuple[int, Execution]]) -> None:
        self.executions = list(executions)
        self.codes: dict[int, int] = {}
        #: The first rank that failed and its exit code.
        self.first_failure: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._stopping = False
        self._threads = [threading.Thread(target=self._follow, args=(rank, execution), daemon=True,
                                          name=f"mlexec-rank-{rank}")
                         for rank, execution in self.executions]
        for thread in self._threads:
            thread.start()

    @property
    def proc(self) -> Any:
        """Rank 0's process (its group is the one a lease records)."""
        return getattr(self.executions[0][1], "proc", None)

    def _follow(self, rank: int, execution: Execution) -> None:
        code = execution.wait()
        code = 1 if code is None else code
        stop_others = False
        with self._lock:
            self.codes[rank] = code
            if code != 0 and self.first_failure is None and not self._stopping:
                self.first_failure = (rank, code)
                stop_others = True
            if len(self.codes) == len(self.executions):
                self._done.set()
        if stop_others:  # as torchrun does: one rank down, the job is down
            import signal

            from mlexec_core.pipeline.stopping import stop_timeout

            grace = stop_timeout()  # what a stop gives: SIGTERM, then SIGKILL after MLEXEC_STOP_TIMEOUT
            for other, running in self.executions:
                if other != rank:
                    threading.Thread(target=running.stop, args=(signal.SIGTERM, grace), daemon=True).start()

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._done.wait(timeout):
            return None
        for thread in self._threads:
            thread.join()
        if self.first_failure is not None:
            return self.first_failure[1]
        failed = [code for _, code in sorted(self.codes.items()) if code != 0]
        return failed[0] if failed else 0

    def failure_reason(self, code: int) -> str | None:
        """``rank 2 exited with status 3`` (or was killed by a signal), for the run's reason."""
        if self.first_failure is None:
            return None
        return rank_failure_reason(*self.first_failure)

    def stop(self, signum: int, grace: float) -> None:
        with self._lock:
            self._stopping = True
        threads = [threading.Thread(target=execution.stop, args=(signum, grace), daemon=True)
                   for _, execution in self.executions]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + grace + 10
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def cleanup(self) -> None:
        for _, execution in self.executions:
            execution.cleanup()
