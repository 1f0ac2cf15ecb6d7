"""A run's resources (``-R``, the MLproject's ``resources:``) as container options.

Two parts, because they are known at different times:

* :func:`apply_resources`, when the plan is prepared (before the run exists):
  ``cpus`` becomes ``NanoCpus`` (``--cpus``), ``memory`` ``Memory`` with an
  equal ``MemorySwap`` (``--memory``, ``--memory-swap``: a real limit, no swap
  on top), ``shm`` ``ShmSize`` (``--shm-size``).  A ``-A`` option that sets the
  same thing gives way to the resource, with one warning naming both values.
* :func:`allocation_options`, when the container is created: what the local
  backend gave this job (:class:`~mlexec_core.plugin.interfaces.Allocation`):
  its cores as ``CpusetCpus``, its GPUs as a device request for exactly those
  devices.

``time`` needs nothing here: the local backend's job stops the container at
the limit as a Ctrl-C does, and it is removed like any other.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from mlexec_core.errors import UsageError
from mlexec_core.plugin.interfaces import Allocation, Resources

#: For each resource, the ``-A`` options that set the same thing (the resource wins).
SAME_AS: dict[str, tuple[str, ...]] = {
    "cpus": ("cpus",),
    "memory": ("memory", "m"),
    "shm": ("shm-size",),
    "gpus": ("gpus",),
}
#: What each sets, in a warning's words.
_WHAT = {"cpus": "CPU limit", "memory": "memory limit", "shm": "/dev/shm size", "gpus": "GPUs"}
#: The least the engine accepts: a CFS quota of 1 ms per 100 ms period, and 6 MiB of memory.
MIN_CPUS = 0.01
MIN_MEMORY = 6 * 1024**2
#: What ``NVIDIA_VISIBLE_DEVICES`` says for "no GPU" (the NVIDIA runtime then acts as runc).
NO_GPU = "void"


def _shown(key: str, resources: Resources) -> str:
    return resources.shown()[key]


def _last(docker_args: Iterable[tuple[str, str | None]], names: tuple[str, ...]) -> tuple[str, str | None] | None:
    """The last ``-A`` option among ``names`` (the one that takes effect), as given."""
    found = None
    for name, value in docker_args:
        if name.lstrip("-") in names:
            found = (name.lstrip("-"), value)
    return found


def conflicts(resources: Resources, docker_args: Iterable[tuple[str, str | None]]) -> list[str]:
    """One warning for each resource a ``-A`` option also sets, naming both values and how
    to keep the ``-A`` one."""
    docker_args = tuple(docker_args)
    out = []
    for key, names in SAME_AS.items():
        if resources.get(key) is None:
            continue
        given = _last(docker_args, names)
        if given is None:
            continue
        option = f"-A {given[0]}" + (f"={given[1]}" if given[1] is not None else "")
        out.append(f"{option} and the resource {key}={_shown(key, resources)} both set the container's "
                   f"{_WHAT[key]}: the resource is used ({_docker_flag(key, resources)}); "
                   f"to keep {option}, pass -R {key}=none")
    return out


def _docker_flag(key: str, resources: Resources) -> str:
    if key == "cpus":
        return f"--cpus {_shown('cpus', resources)}"
    if key == "memory":
        size = _shown("memory", resources)
        return f"--memory {size} --memory-swap {size}"
    if key == "shm":
        return f"--shm-size {_shown('shm', resources)}"
    count = resources.gpus or 0
    return f"--gpus {count}" if count else "no GPU"


def apply_resources(resources: Resources, docker_args: Iterable[tuple[str, str | None]],
                    host_config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``host_config`` (from the ``-A`` options) with the resources applied over it, and the
    warnings for the ``-A`` options they replace.  A ``-A memory-swap`` is kept (it allows
    swap on top of the limit); :func:`check_limits` refuses one below the limit.
    """
    docker_args = tuple(docker_args)
    host = dict(host_config)
    if resources.cpus is not None:
        host["NanoCpus"] = round(resources.cpus * 1e9)
    if resources.memory is not None:
        host["Memory"] = resources.memory
        if _last(docker_args, ("memory-swap",)) is None:
            host["MemorySwap"] = resources.memory
    if resources.shm is not None:
        host["ShmSize"] = resources.shm
    if resources.gpus is not None:
        host.pop("DeviceRequests", None)  # the devices come from the allocation, at start
    return host, conflicts(resources, docker_args)


def check_limits(resources: Resources, docker_args: tuple[tuple[str, str | None], ...],
                 host: Mapping[str, Any], engine_cpus: int | None = None) -> None:
    """Refuse resources the engine would refuse when the container is created (after the
    run exists): :class:`UsageError` naming the value and what to write instead.

    ``host`` is :func:`apply_resources`' result; ``engine_cpus`` the engine's CPU count.
    """
    if resources.cpus is not None:
        cpus = _shown("cpus", resources)
        if resources.cpus < MIN_CPUS:
            raise UsageError(f"the resource cpus={cpus}: Docker limits a container to at least {MIN_CPUS} CPUs",
                             hint=f"ask for {MIN_CPUS} or more, or pass -R cpus=none for no limit")
        if engine_cpus and resources.cpus > engine_cpus:
            raise UsageError(f"the resource cpus={cpus}: the Docker engine has {engine_cpus} CPUs",
                             hint=f"ask for at most {engine_cpus} (-R cpus={engine_cpus}), "
                                  "or pass -R cpus=none for no limit")
    if resources.memory is None:
        return
    memory = _shown("memory", resources)
    if resources.memory < MIN_MEMORY:
        raise UsageError(f"the resource memory={memory}: Docker limits a container to at least 6M",
                         hint="ask for more (-R memory=64M), or pass -R memory=none for no limit")
    swap = host.get("MemorySwap")
    if isinstance(swap, int) and swap != -1 and swap < resources.memory:
        given = _last(docker_args, ("memory-swap",))
        raise UsageError(f"-A memory-swap={given[1] if given else swap} is below the resource memory={memory}: "
                         "the engine takes memory-swap as memory plus swap",
                         hint=f"leave out -A memory-swap (no swap), or give at least {memory}")
    reservation = host.get("MemoryReservation")
    if isinstance(reservation, int) and reservation > resources.memory:
        given = _last(docker_args, ("memory-reservation",))
        raise UsageError(f"-A memory-reservation={given[1] if given else reservation} is above the resource "
                         f"memory={memory}", hint="a reservation is a soft limit below the memory limit")


def gpu_request(allocation: Allocation | None, count: int | None) -> dict[str, Any] | None:
    """The Engine API's ``DeviceRequest`` for the job's GPUs: exactly the allotted devices, or
    ``count`` of them when nothing was allotted (a request the engine fills itself); ``None``
    for no GPU."""
    if allocation is not None and allocation.gpus:
        return {"Driver": "nvidia", "Count": 0, "DeviceIDs": list(allocation.gpus), "Capabilities": [["gpu"]]}
    if count:
        return {"Driver": "nvidia", "Count": count, "DeviceIDs": None, "Capabilities": [["gpu"]]}
    return None


def allocation_options(resources: Resources | None,
                       allocation: Allocation | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The HostConfig fields and the variables for what this machine gave the job.

    * cores (``allocation.cores``): ``CpusetCpus``, the job pinned to them;
    * GPUs (``allocation.gpus``, the host's device ids ``("1", "3")``): a device request for
      exactly those; the NVIDIA runtime shows them in the container renumbered from 0, so
      the container gets ``CUDA_VISIBLE_DEVICES=0,1`` (one index per device) and
      ``NVIDIA_VISIBLE_DEVICES=1,3`` (the host's ids, as the engine also sets it);
    * ``gpus`` asked with nothing allotted: a request for that many, ``CUDA_VISIBLE_DEVICES=0,...``;
    * ``gpus=0``: no request, and ``NVIDIA_VISIBLE_DEVICES=void`` so that an image that asks
      for every GPU (the CUDA images set ``NVIDIA_VISIBLE_DEVICES=all``) gets none where the
      NVIDIA runtime is the engine's default.
    """
    resources = resources or Resources()
    host: dict[str, Any] = {}
    env: dict[str, str] = {}
    if allocation is not None and allocation.cores:
        host["CpusetCpus"] = ",".join(str(core) for core in allocation.cores)
    request = gpu_request(allocation, resources.gpus)
    if request is not None:
        host["DeviceRequests"] = [request]
        count = len(request["DeviceIDs"]) if request["DeviceIDs"] else request["Count"]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(count))
        if request["DeviceIDs"]:
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(request["DeviceIDs"])
    elif resources.gpus == 0:
        env["NVIDIA_VISIBLE_DEVICES"] = NO_GPU
    return host, env


def docker_run_options(resources: Resources, docker_args: Iterable[tuple[str, str | None]]) -> list[str]:
    """The ``docker run`` options a run gets, as the docker CLI spells them (for ``--dry-run``):
    the resources', then the ``-A`` options they did not replace.  The cores and GPU devices
    the local backend allots are known only when the job starts."""
    out = []
    if resources.cpus is not None:
        out.append(f"--cpus={_shown('cpus', resources)}")
    if resources.memory is not None:
        out.append(f"--memory={_shown('memory', resources)}")
    replaced = {name for key, names in SAME_AS.items() if resources.get(key) is not None for name in names}
    docker_args = tuple(docker_args)
    if resources.memory is not None and _last(docker_args, ("memory-swap",)) is None:
        out.append(f"--memory-swap={_shown('memory', resources)}")
    if resources.shm is not None:
        out.append(f"--shm-size={_shown('shm', resources)}")
    if resources.gpus:
        out.append(f"--gpus={resources.gpus} (the devices the local backend allots)")
    for name, value in docker_args:
        key = name.lstrip("-")
        if key in replaced:
            continue
        out.append(f"--{key}" + (f"={value}" if value is not None else ""))
    return out
