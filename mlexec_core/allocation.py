"""This machine as a small cluster: its GPUs, cores and memory, leased to jobs.

The local backend gives a run that asks for ``gpus``, ``cpus`` or ``memory``
(:class:`~mlexec_core.resources.Resources`) a share of this machine of its own:

* **GPUs** come from a pool: the devices in mlexec's own ``CUDA_VISIBLE_DEVICES``
  when it is set (indices or UUIDs; set and empty: none), else those
  ``nvidia-smi`` lists, else none (:func:`gpu_pool`).  A job asking for ``k``
  gets ``k`` devices that no other running job holds.
* **Cores**: ``cpus: n`` takes ``ceil(n)`` of the cores mlexec may run on
  (``os.sched_getaffinity``), and the job is pinned to them.
* **Memory** is admission: the memory of the jobs holding a lease never adds
  up to more than the machine's ``MemTotal``.  It is enforced with a memory
  cgroup where mlexec may create one (:func:`memory_cgroup`).

What is held is written in one small lease store on disk
(:class:`LeaseStore`: a JSON file under a lock file taken with ``flock``),
shared by every mlexec of this user on this machine, so that two sweeps (two
mlexec processes) never hand out one device twice.  A lease records the
mlexec that holds it and the job's process group; it is free again once that
mlexec has released it or is gone *and* no process of the job's group is left,
so devices come back when a job ends, fails, is killed, or its mlexec is
killed with SIGKILL (once the reaper has stopped the job).  Requests that do
not fit wait in the store's queue, first come first served.

For the sweep engine and the CLI: :func:`capacity` (how many jobs of these
resources fit on this machine at once), :func:`describe_pool` (the machine, for
messages), :func:`check` (refuse what can never fit).

This module is imported only when a run asks for resources: ``mlexec run``
without any loads none of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

from attrs import frozen

from mlexec_core.procfs import group_members
from mlexec_core.resources import Allocation, Resources, format_size
from mlexec_core.xdg import state_home

#: Seconds between two looks at the lease store while a job waits (a release by
#: this process wakes its waiters at once).
POLL_INTERVAL = 0.1

#: The variable whose devices make the GPU pool (and that each job gets, set to its own).
CUDA_VAR = "CUDA_VISIBLE_DEVICES"
#: Thread-count variables set to the job's number of cores unless the user set them.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


# -- the machine ------------------------------------------------------------------------------


@frozen
class GpuPool:
    """The GPUs mlexec may hand out, and where that list came from."""

    #: As ``CUDA_VISIBLE_DEVICES`` names them (``"0"``, ``"GPU-8f6c…"``).
    devices: tuple[str, ...] = ()
    #: ``"CUDA_VISIBLE_DEVICES"``, ``"nvidia-smi"``, or ``""`` (no GPU found).
    source: str = ""

    def describe(self) -> str:
        """``0,1,2,3 (from CUDA_VISIBLE_DEVICES)``, ``none (CUDA_VISIBLE_DEVICES is empty)`` ..."""
        if self.devices:
            return f"{','.join(self.devices)} (from {self.source})"
        if self.source == CUDA_VAR:
            return f"none ({CUDA_VAR} is empty)"
        return f"none ({CUDA_VAR} is not set and nvidia-smi lists no GPU)"


def parse_visible_devices(text: str) -> tuple[str, ...]:
    """The devices of a ``CUDA_VISIBLE_DEVICES`` value, in order, each once.

    As CUDA reads it: an empty value is no device, and a negative index ends the
    list (``0,-1,2`` is ``0``)."""
    devices: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("-"):
            break
        if part not in devices:
            devices.append(part)
    return tuple(devices)


def gpu_pool(environ: Mapping[str, str] | None = None) -> GpuPool:
    """The pool: mlexec's ``CUDA_VISIBLE_DEVICES`` when set, else what ``nvidia-smi`` lists, else none."""
    environ = os.environ if environ is None else environ
    if CUDA_VAR in environ:
        return GpuPool(parse_visible_devices(environ[CUDA_VAR]), CUDA_VAR)
    devices = _nvidia_smi_devices(environ)
    return GpuPool(devices, "nvidia-smi" if devices else "")


#: What ``nvidia-smi`` listed, by ``PATH``: asked once per process (a sweep's children ask again and again).
_listed: dict[str | None, tuple[str, ...]] = {}


def _nvidia_smi_devices(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The indices ``nvidia-smi`` lists (``()`` without it, or when it fails: no driver)."""
    key = environ.get("PATH")
    if key not in _listed:
        _listed[key] = _ask_nvidia_smi(key)
    return _listed[key]


def _ask_nvidia_smi(path: str | None) -> tuple[str, ...]:
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi", path=path)
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, "--query-gpu=index,uuid", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ()
    if out.returncode != 0:
        return ()
    devices = []
    for line in out.stdout.splitlines():
        index = line.split(",")[0].strip()
        if index.isdigit():
            devices.append(index)
    return tuple(devices)


def machine_cores() -> tuple[int, ...]:
    """The cores mlexec may run on (its affinity), in order."""
    return tuple(sorted(os.sched_getaffinity(0)))


def machine_memory() -> int | None:
    """``MemTotal`` of ``/proc/meminfo`` in bytes (``None`` where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def describe_pool(environ: Mapping[str, str] | None = None) -> str:
    """This machine as the local backend hands it out, for messages and ``--dry-run``:
    ``GPUs 0,1,2,3 (from CUDA_VISIBLE_DEVICES); cores 0,1; memory 23G``."""
    memory = machine_memory()
    cores = machine_cores()
    return (f"GPUs {gpu_pool(environ).describe()}; cores {_ranges(cores)}; "
            f"memory {_gigabytes(memory) if memory else 'unknown'}")


def _gigabytes(size: int) -> str:
    """``23.5G``: a machine's memory, near enough."""
    return f"{size / 1024 ** 3:.1f}G"


# -- what a run takes ------------------------------------------------------------------------


@frozen
class Request:
    """What one job takes from this machine: whole GPUs, whole cores, bytes of memory."""

    gpus: int = 0
    cores: int = 0
    memory: int = 0

    def __bool__(self) -> bool:
        return bool(self.gpus or self.cores or self.memory)

    def describe(self) -> str:
        parts = []
        if self.gpus:
            parts.append(f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}")
        if self.cores:
            parts.append(f"{self.cores} core{'s' if self.cores > 1 else ''}")
        if self.memory:
            parts.append(f"{format_size(self.memory)} of memory")
        return " and ".join(parts) or "nothing"


def request_for(resources: Resources) -> Request:
    """What ``resources`` take here: ``gpus``, ``ceil(cpus)`` cores, ``memory``; falsy when nothing."""
    return Request(gpus=resources.gpus or 0, cores=math.ceil(resources.cpus) if resources.cpus else 0,
                   memory=resources.memory or 0)


def asks_for_machine(resources: Resources) -> bool:
    """Whether ``resources`` ask for any of this machine's GPUs, cores or memory (``gpus: 0`` too:
    such a job is shown no GPU)."""
    return resources.gpus is not None or resources.cpus is not None or resources.memory is not None


def problem(resources: Resources, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(message, hint)`` when ``resources`` can never fit on this machine, else ``None``."""
    request = request_for(resources)
    if request.gpus:
        pool = gpu_pool(environ)
        if request.gpus > len(pool.devices):
            return (f"gpus={request.gpus}: the local backend's GPU pool has {len(pool.devices)} "
                    f"device{'s' if len(pool.devices) != 1 else ''}: {pool.describe()}",
                    "ask for fewer, set CUDA_VISIBLE_DEVICES to the devices mlexec may hand out, "
                    "or run on a cluster backend (-b slurm, -b kubernetes)")
    if request.cores:
        cores = machine_cores()
        if request.cores > len(cores):
            return (f"cpus={resources.cpus:g}: this machine has {len(cores)} core{'s' if len(cores) != 1 else ''} "
                    f"mlexec may use ({_ranges(cores)})",
                    f"ask for at most cpus={len(cores)}, or run on a cluster backend")
    if request.memory:
        total = machine_memory()
        if total is not None and request.memory > total:
            return (f"memory={format_size(request.memory)}: this machine has {_gigabytes(total)} (MemTotal)",
                    "ask for less, or run on a cluster backend")
    return None


def check(resources: Resources, environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`~mlexec_core.errors.MlexecError` when ``resources`` can never fit on this machine
    (more GPUs than the pool, more cores or memory than the machine); the message names the pool."""
    found = problem(resources, environ)
    if found is not None:
        from mlexec_core.errors import MlexecError

        raise MlexecError(found[0], hint=found[1])


def capacity(resources: Resources, environ: Mapping[str, str] | None = None) -> int | None:
    """How many jobs asking for ``resources`` this machine runs at once: the least, over
    GPUs, cores and memory, of how many such shares it has (``None``: no bound, nothing
    asked).  ``0`` when one job can never fit (:func:`check` refuses such a plan).

    The machine's whole size, not what is free now: what other mlexec processes hold
    is waited for (a job stays SCHEDULED until its lease is granted)."""
    request = request_for(resources)
    bounds = []
    if request.gpus:
        bounds.append(len(gpu_pool(environ).devices) // request.gpus)
    if request.cores:
        bounds.append(len(machine_cores()) // request.cores)
    if request.memory:
        total = machine_memory()
        if total is not None:
            bounds.append(total // request.memory)
    return min(bounds) if bounds else None


def describe_allocation(allocation: Allocation | None) -> str:
    """What a job got, for a run's header and a sweep's live view: ``GPUs 0,1; cores 2-3; memory 16G``
    (``""`` for ``None`` or an empty allocation)."""
    if allocation is None:
        return ""
    parts = []
    if allocation.gpus:
        parts.append(f"GPU{'s' if len(allocation.gpus) > 1 else ''} {','.join(allocation.gpus)}")
    if allocation.cores:
        parts.append(f"core{'s' if len(allocation.cores) > 1 else ''} {_ranges(allocation.cores)}")
    if allocation.memory:
        parts.append(f"memory {format_size(allocation.memory)}")
    return "; ".join(parts)


def job_environment(allocation: Allocation, env: Mapping[str, str]) -> dict[str, str]:
    """The variables a job with ``allocation`` gets on top of ``env`` (its environment so far):
    ``CUDA_VISIBLE_DEVICES`` (its devices) when it got GPUs, and ``OMP_NUM_THREADS``/
    ``MKL_NUM_THREADS`` (its number of cores) when it got cores, unless ``env`` sets them."""
    out = {}
    if allocation.gpus:
        out[CUDA_VAR] = ",".join(allocation.gpus)
    if allocation.cores:
        for name in THREAD_VARS:
            if name not in env:
                out[name] = str(len(allocation.cores))
    return out


# -- the lease store --------------------------------------------------------------------------


def leases_path(environ: Mapping[str, str] | None = None) -> Path:
    """The lease store of this machine: ``<state>/leases/<hostname>.json`` (a home shared over NFS
    holds one store per machine)."""
    return state_home(environ) / "leases" / f"{socket.gethostname() or 'localhost'}.json"


#: Wakes this process's waiting jobs when one of its jobs releases a lease.
_released = threading.Condition()


def wait_for_release(timeout: float = POLL_INTERVAL) -> None:
    """Sleep until a lease of this process is released, or ``timeout`` seconds."""
    with _released:
        _released.wait(timeout)


def wake_waiters() -> None:
    """Wake this process's waiting jobs now (a lease was released, a job was cancelled)."""
    with _released:
        _released.notify_all()


@frozen
class Grant:
    """A lease the store granted: its id and what it holds."""

    lease: str
    allocation: Allocation


def _process_alive(pid: int | None, start: str | None) -> bool:
    """Whether ``pid`` is the live (not zombie) process that started at ``start`` (what
    :func:`~mlexec_core.supervisor.process_start` said of it: a reused pid is another process)."""
    if not pid:
        return False
    from mlexec_core.supervisor import process_start

    now = process_start(pid)
    return now is not None and (not start or not now or now == start)


def _ranges(numbers) -> str:
    """``0-3,6``: cores as ``taskset`` writes them."""
    numbers = sorted(numbers)
    out = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(str(numbers[i]) if i == j else f"{numbers[i]}-{numbers[j]}")
        i = j + 1
    return ",".join(out) or "none"


class LeaseStore:
    """The leases and the queue of this machine, in one JSON file under an ``flock``ed lock file.

    Every method takes the lock, reads the file, drops what is dead, and writes the
    file back atomically (a new file renamed over the old) before letting go.  A
    lease is live while the mlexec that holds it is alive and has not released it,
    or while any process of the job's process group is (or, before the group is
    known, any process carrying the job's mark); a queued request lives as long as
    its mlexec.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else leases_path()
        self.lock_path = self.path.with_suffix(".lock")
        self._me = os.getpid()
        from mlexec_core.supervisor import process_start

        self._my_start = process_start(self._me)

    # -- the file ---------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`~mlexec_core.errors.MlexecError` when the store cannot be used (its folder not writable)."""
        try:
            with self._locked():
                pass
        except OSError as exc:
            from mlexec_core.errors import MlexecError

            raise MlexecError(f"the local backend cannot use its lease store {self.path}: {exc.strerror or exc}",
                              hint="it is under $XDG_STATE_HOME (~/.local/state): make that writable") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The store's state, read and pruned under the lock; written back if changed."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self._read()
            before = json.dumps(state, sort_keys=True)
            self._prune(state)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                self._write(state)
        finally:
            os.close(fd)  # closing drops the lock

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                state = json.load(f)
        except (OSError, ValueError):
            state = {}
        if not isinstance(state, dict):
            state = {}
        state.setdefault("leases", [])
        state.setdefault("queue", [])
        return state

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, self.path)

    # -- liveness ---------------------------------------------------------------------

    @staticmethod
    def _job_alive(lease: Mapping[str, Any]) -> bool:
        if lease.get("pgid"):
            return bool(group_members(int(lease["pgid"])))
        if lease.get("mark"):  # started, but its group not written yet (its mlexec died then)
            from mlexec_core.pipeline.stopping import marked_processes

            return bool(marked_processes(str(lease["mark"])))
        return False

    def _lease_live(self, lease: Mapping[str, Any]) -> bool:
        return _process_alive(lease.get("holder"), lease.get("holder_start")) or self._job_alive(lease)

    def _prune(self, state: dict[str, Any]) -> None:
        live = []
        for lease in state["leases"]:
            if self._lease_live(lease):
                live.append(lease)
            elif lease.get("cgroup"):
                remove_cgroup(lease["cgroup"])
        state["leases"] = live
        state["queue"] = [q for q in state["queue"] if _process_alive(q.get("holder"), q.get("holder_start"))]

    # -- asking -----------------------------------------------------------------------

    def acquire(self, request: Request, ticket: str, *, pool: GpuPool, mark: str | None = None) -> Grant | str:
        """A lease for ``request`` if it fits now and no earlier request waits before it,
        else why not (a line for ``pending_reason``); ``ticket`` (one per job) keeps the
        job's place in the queue between calls.  :meth:`withdraw` the ticket of a job
        that stops waiting."""
        cores = machine_cores()
        total = machine_memory() or 0
        with self._locked() as state:
            queue = state["queue"]
            mine = next((q for q in queue if q["ticket"] == ticket), None)
            if mine is None:
                mine = {"ticket": ticket, "holder": self._me, "holder_start": self._my_start,
                        "gpus": request.gpus, "cores": request.cores, "memory": request.memory,
                        "pool": list(pool.devices), "machine_cores": list(cores), "machine_memory": total,
                        "since": time.time()}
                queue.append(mine)
            held_gpus = {g: lease for lease in state["leases"] for g in lease.get("gpus", ())}
            held_cores = {c: lease for lease in state["leases"] for c in lease.get("cores", ())}
            held_memory = sum(int(lease.get("memory") or 0) for lease in state["leases"])
            taken_gpus: set[str] = set()
            taken_cores: set[int] = set()
            taken_memory = 0
            earlier = None
            fits = False
            for entry in sorted(queue, key=lambda q: (q["since"], q["ticket"])):
                free_gpus = [g for g in entry["pool"] if g not in held_gpus and g not in taken_gpus]
                free_cores = [c for c in entry["machine_cores"] if c not in held_cores and c not in taken_cores]
                fits = (len(free_gpus) >= entry["gpus"] and len(free_cores) >= entry["cores"]
                        and (not entry["memory"] or not entry["machine_memory"]  # (no MemTotal: not admitted)
                             or held_memory + taken_memory + entry["memory"] <= entry["machine_memory"]))
                if entry is mine:
                    break
                if not fits:  # first come, first served: nothing overtakes a request that waits
                    return self._why(request, pool, cores, total, state, ahead=entry)
                earlier = earlier or entry  # it fits too: it takes its share when its mlexec looks
                taken_gpus.update(free_gpus[:entry["gpus"]])
                taken_cores.update(free_cores[:entry["cores"]])
                taken_memory += entry["memory"]
            if not fits:
                return self._why(request, pool, cores, total, state, ahead=earlier)
            allocation = Allocation(gpus=tuple(free_gpus[:request.gpus]), cores=tuple(free_cores[:request.cores]),
                                    memory=request.memory or None)
            lease = {"id": uuid.uuid4().hex, "holder": self._me, "holder_start": self._my_start, "pgid": None,
                     "mark": mark, "gpus": list(allocation.gpus), "cores": list(allocation.cores),
                     "memory": request.memory, "cgroup": None, "since": time.time()}
            state["leases"].append(lease)
            queue.remove(mine)
            return Grant(lease["id"], allocation)

    def _why(self, request: Request, pool: GpuPool, cores: tuple[int, ...], total: int,
             state: Mapping[str, Any], ahead: Mapping[str, Any] | None) -> str:
        """``waiting for 1 GPU (pool 0,1,2,3: 0,1 held by pid 123, 2,3 by pid 456)``."""
        leases = state["leases"]

        def holders(items: Mapping[Any, Mapping[str, Any]], shown) -> str:
            by: dict[str, list] = {}
            for item, lease in items.items():
                by.setdefault(self._holder(lease), []).append(item)
            return ", ".join(f"{shown(v)} held by {k}" for k, v in by.items())

        parts = []
        if request.gpus:
            held = {g: lease for lease in leases for g in lease.get("gpus", ()) if g in pool.devices}
            parts.append(f"pool {','.join(pool.devices)}: {holders(held, ','.join) or 'all free'}")
        if request.cores:
            held_c = {c: lease for lease in leases for c in lease.get("cores", ()) if c in cores}
            parts.append(f"cores {_ranges(cores)}: {holders(held_c, _ranges) or 'all free'}")
        if request.memory:
            used = sum(int(lease.get("memory") or 0) for lease in leases)
            parts.append(f"memory {_gigabytes(used)} of {_gigabytes(total)} held")
        if ahead is not None:
            who = "this mlexec" if ahead.get("holder") == self._me else f"pid {ahead.get('holder')}"
            parts.append(f"after an earlier request of {who}")
        return f"waiting for {request.describe()} ({'; '.join(parts)})"

    def _holder(self, lease: Mapping[str, Any]) -> str:
        holder = lease.get("holder")
        if holder and _process_alive(holder, lease.get("holder_start")):
            return f"pid {holder}" if holder != self._me else "this mlexec"
        if holder:
            return f"the job of a gone mlexec (process group {lease.get('pgid')})"
        return f"what is left of an ended job (process group {lease.get('pgid')})"

    def withdraw(self, ticket: str) -> None:
        """Take ``ticket`` out of the queue (its job stopped waiting)."""
        with self._locked() as state:
            state["queue"] = [q for q in state["queue"] if q["ticket"] != ticket]
        wake_waiters()

    def started(self, lease: str, pgid: int | None, cgroup: str | None = None) -> None:
        """Write the job's process group (and memory cgroup) into its lease, once it runs."""
        with self._locked() as state:
            for entry in state["leases"]:
                if entry["id"] == lease:
                    entry["pgid"] = pgid
                    entry["cgroup"] = cgroup

    def release(self, lease: str) -> None:
        """Give the lease back.  While processes of the job's group are still running (a
        background child the stop contract has yet to end), it stays held by them, and is
        freed (its cgroup removed) by whichever mlexec looks once they are gone."""
        with self._locked() as state:
            for entry in list(state["leases"]):
                if entry["id"] != lease:
                    continue
                entry["holder"] = None
                if self._job_alive(entry):
                    continue
                state["leases"].remove(entry)
                if entry.get("cgroup"):
                    remove_cgroup(entry["cgroup"])
        wake_waiters()

    def leases(self) -> list[dict[str, Any]]:
        """The live leases (for ``mlexec`` views and tests)."""
        with self._locked() as state:
            return [dict(lease) for lease in state["leases"]]


# -- memory cgroups ---------------------------------------------------------------------------

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_cgroup(controller: str | None) -> str | None:
    """mlexec's own cgroup path in the ``controller`` hierarchy (v1), or the unified one (``None``)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if controller is None and parts[0] == "0" and parts[1] == "":
            return parts[2]
        if controller is not None and controller in parts[1].split(","):
            return parts[2]
    return None


def memory_cgroup(name: str, limit: int) -> tuple[Path | None, str]:
    """A new memory cgroup ``name`` below mlexec's own, limited to ``limit`` bytes:
    ``(its folder, "")``, or ``(None, why not)`` where mlexec may not create one.

    cgroup v1 (``/sys/fs/cgroup/memory``: ``memory.limit_in_bytes``) or v2 (``memory.max``;
    only where mlexec's own cgroup already hands the memory controller to its children)."""
    v1 = CGROUP_ROOT / "memory"
    if (v1 / "memory.limit_in_bytes").is_file():
        own = _own_cgroup("memory")
        if own is None:
            return None, "mlexec's memory cgroup is unknown"
        parent = v1 / own.lstrip("/")
        limit_file = "memory.limit_in_bytes"
    elif (CGROUP_ROOT / "cgroup.controllers").is_file():
        own = _own_cgroup(None)
        parent = CGROUP_ROOT / (own or "").lstrip("/")
        try:
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                return None, "cgroup v2: mlexec's cgroup does not delegate the memory controller"
        except OSError:
            return None, "cgroup v2: mlexec's cgroup cannot be read"
        limit_file = "memory.max"
    else:
        return None, "no memory cgroup on this machine"
    folder = parent / name
    try:
        folder.mkdir()
    except OSError as exc:
        return None, f"mlexec may not create a cgroup ({exc.strerror or exc})"
    try:
        (folder / limit_file).write_text(str(int(limit)))
    except OSError as exc:
        remove_cgroup(str(folder))
        return None, f"mlexec may not set a cgroup's memory limit ({exc.strerror or exc})"
    return folder, ""


def enter_cgroup_prefix(folder: Path) -> str:
    """Shell text that moves the shell running it into cgroup ``folder`` (so that every
    process it starts is in it from the start), or exits 125 if it cannot."""
    import shlex

    return f"echo $$ > {shlex.quote(str(folder / 'cgroup.procs'))} || exit 125; "


def oom_kills(folder: str | Path) -> int:
    """How many processes the kernel killed in cgroup ``folder`` for going over its memory
    (``oom_kill`` of ``memory.oom_control`` on v1, of ``memory.events`` on v2); 0 if unknown."""
    for name in ("memory.oom_control", "memory.events"):
        try:
            text = (Path(folder) / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return 0


def remove_cgroup(folder: str | Path) -> bool:
    """Remove a job's cgroup (empty once its processes are gone); ``False`` if it is still in use."""
    try:
        os.rmdir(folder)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
