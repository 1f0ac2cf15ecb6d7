"""The run's resources (``plan.resources``: the MLproject's ``resources:`` and ``-R``) as sbatch options.

=========  ==========================================  ==============================================
key        sbatch option                               how
=========  ==========================================  ==============================================
cpus       ``--cpus-per-task=N``                       whole CPUs: a fraction rounds up, with a warning
memory     ``--mem=NM``                                megabytes (MiB), rounded up
gpus       ``--gres=gpu:N``                            ``--gres``, not ``--gpus``: older clusters
gpu-type   ``--gres=gpu:TYPE:N``                       (and any without select/cons_tres) know only it
time       ``--time=D-HH:MM:SS``                       Slurm counts whole minutes: rounded up; mlexec
                                                       itself stops the job at the exact time
nodes      ``--nodes=N``                               with processes-per-node: ``--ntasks-per-node=P``;
processes- ``--ntasks-per-node=P``                     N x P > 1 starts the command with ``srun``, one
per-node                                               task per process (:mod:`mlexec_slurm.script`)
=========  ==========================================  ==============================================

The backend config has keys for the same things (``cpus-per-task``, ``mem`` and
``mem-per-cpu``, ``gres`` and ``gpus``, ``time``, or the same options in
``sbatch-args``).  Where a resource and the config say different things, the
resource wins and :func:`apply_resources` says so, naming the key, both values
and how to keep the config's (``-R cpus=none``); where they say the same,
nothing is said.  A ``gres`` item that is not a GPU (``nic:1``) is kept.  The
config's own ``nodes``, ``ntasks`` and ``ntasks-per-node`` are sbatch options
only (the command still runs once); ``nodes`` and ``processes-per-node`` are
what starts it once per process.  GPUs (``--gres``) stay per node, as Slurm
counts them.
"""

from __future__ import annotations

import math
from typing import Iterable

import attrs

from mlexec_core.errors import UsageError
from mlexec_core.plugin.interfaces import Resources

from mlexec_slurm.config import SlurmConfig

#: sbatch options in ``sbatch-args`` that say what a resource says (the resource then wins).
_CPU_FLAGS = ("-c", "--cpus-per-task")
_MEM_FLAGS = ("--mem", "--mem-per-cpu", "--mem-per-gpu")
_GPU_FLAGS = ("-G", "--gpus", "--gpus-per-node", "--gpus-per-task", "--gpus-per-socket", "--gres")
_TIME_FLAGS = ("-t", "--time")
_NODES_FLAGS = ("-N", "--nodes")
_TASKS_FLAGS = ("-n", "--ntasks", "--ntasks-per-node")


def cpus_option(cpus: float) -> int:
    """Slurm allocates whole CPUs: ``0.5`` asks for 1, ``2.5`` for 3."""
    return max(1, math.ceil(cpus))


def mem_option(memory: int) -> str:
    """Bytes as sbatch's ``--mem`` value: megabytes (MiB), rounded up."""
    return f"{max(1, math.ceil(memory / 1024 ** 2))}M"


def time_option(seconds: float) -> str:
    """Seconds as Slurm's ``D-HH:MM:SS``, rounded up to the minute (Slurm enforces whole minutes)."""
    minutes = max(1, math.ceil(seconds / 60))
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:00"


def slurm_seconds(text: str) -> float:
    """A Slurm time as the config checked it (``30``, ``30:00``, ``2:00:00``, ``1-12``, ``1-12:30:00``)
    in seconds; ``math.inf`` for UNLIMITED."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return math.inf
    days = 0
    if "-" in text:
        day, text = text.split("-", 1)
        days = int(day)
        parts = [int(p) for p in text.split(":")] + [0] * (3 - len(text.split(":")))  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = parts
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:  # minutes
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:  # minutes:seconds
            hours, (minutes, seconds) = 0, parts
        else:
            hours, minutes, seconds = parts
    return float(days * 86400 + hours * 3600 + minutes * 60 + seconds)


def slurm_bytes(text: str) -> int:
    """A Slurm memory size as the config checked it (``4000``: megabytes; ``4G``, ``500M``) in bytes."""
    unit = text[-1].upper() if text[-1].isalpha() else "M"
    number = int(text[:-1] if text[-1].isalpha() else text)
    return number * 1024 ** {"K": 1, "M": 2, "G": 3, "T": 4}[unit]


@attrs.frozen
class Gpu:
    """A GPU request: how many, and of what type (``None``: any)."""

    count: int
    type: str | None = None

    @property
    def gres(self) -> str:
        return f"gpu:{self.type}:{self.count}" if self.type else f"gpu:{self.count}"


def _gres_gpu(item: str) -> Gpu | None:
    """A ``gres`` item (``gpu``, ``gpu:2``, ``gpu:a100``, ``gpu:a100:2``) as a :class:`Gpu`; ``None`` if
    it is not a GPU."""
    name, *rest = item.split(":")
    if name != "gpu":
        return None
    if len(rest) >= 2:
        return Gpu(int(rest[1]), rest[0])
    if rest and rest[0].isdigit():
        return Gpu(int(rest[0]))
    return Gpu(1, rest[0] if rest else None)


def _is_gpu(item: str) -> bool:
    return item.split(":", 1)[0] == "gpu"


def _gpus_key(text: str) -> Gpu:
    """The config's ``gpus`` (``2``, ``a100:2``) as a :class:`Gpu`."""
    kind, _, count = text.rpartition(":")
    return Gpu(int(count), kind or None)


@attrs.frozen
class Applied:
    """The backend config with the run's resources written over it, and what to tell the user."""

    config: SlurmConfig
    #: Warnings: a resource that overrode the config, a fraction of a CPU rounded up.
    notes: tuple[str, ...] = ()
    #: The run's ``time`` in seconds, which mlexec enforces itself from the job's start; ``None``: no limit.
    time_limit: float | None = None
    #: ``(nodes, processes per node)`` when the run has more than one process (started with srun).
    ranks: tuple[int, int] | None = None


def apply_resources(config: SlurmConfig, resources: Resources) -> Applied:
    """``config`` with ``resources`` written over it (see the module's table); raises
    :class:`UsageError` for a ``gpu-type`` with no count of GPUs anywhere."""
    if not resources:
        return Applied(config)
    notes: list[str] = []
    shown = resources.shown()
    changes: dict[str, object] = {}
    args = list(config.sbatch_args)

    def differs(keys: Iterable[str], config_says: str, option: str) -> None:
        asked = ", ".join(f"{k}={shown[k]}" for k in keys)
        keep = " ".join(f"-R {k}=none" for k in keys)
        notes.append(f"the run asks for {asked} but the backend config's {config_says}: "
                     f"the job gets {option}; to keep the config's value, run with {keep}")

    if resources.cpus is not None:
        cpus = cpus_option(resources.cpus)
        if cpus != resources.cpus:
            notes.append(f"cpus={shown['cpus']}: Slurm allocates whole CPUs, so the job asks for "
                         f"--cpus-per-task={cpus} (rounded up)")
        if config.cpus_per_task is not None and config.cpus_per_task != cpus:
            differs(["cpus"], f"cpus-per-task is {config.cpus_per_task}", f"--cpus-per-task={cpus}")
        changes["cpus_per_task"] = cpus
        args, _ = _drop_args(args, ["cpus"], _CPU_FLAGS, f"--cpus-per-task={cpus}",
                          lambda flag, value: value == str(cpus), differs)

    if resources.memory is not None:
        mem = mem_option(resources.memory)
        if config.mem is not None and slurm_bytes(config.mem) != slurm_bytes(mem):
            differs(["memory"], f"mem is {config.mem}", f"--mem={mem}")
        if config.mem_per_cpu is not None:
            differs(["memory"], f"mem-per-cpu is {config.mem_per_cpu}",
                    f"--mem={mem} instead (sbatch takes one of --mem and --mem-per-cpu)")
        changes.update(mem=mem, mem_per_cpu=None)
        args, _ = _drop_args(args, ["memory"], _MEM_FLAGS, f"--mem={mem}",
                          lambda flag, value: flag == "--mem" and _same_size(value, mem), differs)

    if resources.gpus is not None or resources.gpu_type is not None:
        gpu_keys = [k for k in ("gpus", "gpu-type") if resources.get(k) is not None]
        wanted, gpu_changes = _apply_gpus(config, resources, gpu_keys, differs)
        changes.update(gpu_changes)
        option = f"--gres={wanted.gres}" if wanted else "no GPU"
        args, other_gres = _drop_args(args, gpu_keys, _GPU_FLAGS, option,
                                      lambda flag, value: _same_gpus(flag, value, wanted), differs)
        if other_gres:  # sbatch keeps the last --gres only: one --gres says everything
            changes["gres"] = ",".join(filter(None, [changes["gres"], *other_gres]))

    if resources.time is not None:
        limit = time_option(resources.time)
        option = f"--time={limit}"
        if slurm_seconds(limit) != resources.time:
            option += f" (Slurm counts whole minutes; mlexec stops the job at {shown['time']})"
        if config.time is not None and slurm_seconds(config.time) != resources.time:
            differs(["time"], f"time is {config.time}", option)
        changes["time"] = limit
        args, _ = _drop_args(args, ["time"], _TIME_FLAGS, option,
                          lambda flag, value: _same_time(value, resources.time), differs)

    ranks = None
    if resources.nodes is not None or resources.processes_per_node is not None:
        nodes, per_node = resources.nodes or 1, resources.processes_per_node or 1
        if nodes * per_node > 1:  # one process stays exactly what it was: no srun, no task options
            ranks = (nodes, per_node)
            keys = [k for k in ("nodes", "processes-per-node") if resources.get(k) is not None]
            option = f"--nodes={nodes} --ntasks-per-node={per_node}"
            if config.nodes is not None and config.nodes != str(nodes):
                differs(keys, f"nodes is {config.nodes}", option)
            if config.ntasks_per_node is not None and config.ntasks_per_node != per_node:
                differs(keys, f"ntasks-per-node is {config.ntasks_per_node}", option)
            if config.ntasks is not None and config.ntasks != nodes * per_node:
                differs(keys, f"ntasks is {config.ntasks}", option)
            changes.update(nodes=str(nodes), ntasks_per_node=per_node, ntasks=None)
            args, _ = _drop_args(args, keys, _NODES_FLAGS, option,
                                 lambda flag, value: value == str(nodes), differs)
            args, _ = _drop_args(args, keys, _TASKS_FLAGS, option,
                                 lambda flag, value: value == str(per_node if flag == "--ntasks-per-node"
                                                                   else nodes * per_node), differs)

    changes["sbatch_args"] = tuple(args)
    return Applied(attrs.evolve(config, **changes), tuple(notes), resources.time, ranks)


def _apply_gpus(config: SlurmConfig, resources: Resources, keys: list[str],
                differs) -> tuple[Gpu | None, dict[str, object]]:
    """The GPUs asked for, and the config's ``gres`` (its GPU item replaced, other items kept) and
    ``gpus`` (dropped: ``--gres`` says it) for them."""
    items = config.gres.split(",") if config.gres else []
    in_gres = next((g for g in map(_gres_gpu, items) if g is not None), None)
    in_gpus = _gpus_key(config.gpus) if config.gpus else None
    had = in_gres or in_gpus
    count = resources.gpus if resources.gpus is not None else (had.count if had else None)
    if count is None:
        raise UsageError(f"gpu-type={resources.gpu_type} says which GPU but not how many, and the slurm backend "
                         "config asks for none", hint="add -R gpus=1 (or gpus: 1 next to gpu-type in the "
                                                      "MLproject's resources)")
    kind = resources.gpu_type if resources.gpu_type is not None else (had.type if had else None)
    wanted = Gpu(count, kind) if count else None
    option = f"--gres={wanted.gres}" if wanted else "no GPU"
    if in_gres is not None and in_gres != wanted:
        differs(keys, f"gres is {config.gres}", option)
    if in_gpus is not None and in_gpus != wanted:
        differs(keys, f"gpus is {config.gpus}", option)
    others = [item for item in items if _gres_gpu(item) is None]
    gres = ",".join(([wanted.gres] if wanted else []) + others) or None
    return wanted, {"gres": gres, "gpus": None}


def _same_size(value: str | None, mem: str) -> bool:
    try:
        return value is not None and slurm_bytes(value.upper()) == slurm_bytes(mem)
    except (ValueError, KeyError, IndexError):
        return False


def _same_time(value: str | None, seconds: float) -> bool:
    try:
        return value is not None and slurm_seconds(value) == seconds
    except ValueError:
        return False


def _same_gpus(flag: str, value: str | None, wanted: Gpu | None) -> bool:
    try:
        if flag == "--gres":
            gpus = [g for g in map(_gres_gpu, (value or "").split(",")) if g is not None]
            return gpus == ([wanted] if wanted else [])
        return flag in ("-G", "--gpus") and value is not None and _gpus_key(value) == wanted
    except ValueError:
        return False


def _drop_args(args: list[str], keys: list[str], flags: tuple[str, ...], option: str, same,
               differs) -> tuple[list[str], list[str]]:
    """``sbatch-args`` without the options in ``flags`` (they say what the resources ``keys`` say), each
    one that says something else (``same(flag, value)`` is false) named in a note; and the items of a
    ``--gres`` among them that are not GPUs (``nic:1``), which the resources' ``--gres`` must carry on."""
    out: list[str] = []
    other_gres: list[str] = []
    for arg in args:  # one option with its value in each item (the config checked that)
        flag, value = _split_arg(arg, flags)
        if flag is None:
            out.append(arg)
            continue
        if flag == "--gres":
            items = [item for item in (value or "").split(",") if item]
            other_gres += [item for item in items if not _is_gpu(item)]  # (sbatch-args are not checked)
            if not any(map(_is_gpu, items)):
                continue  # no GPU in it: its items go into the one --gres
        if not same(flag, value):
            differs(keys, f"sbatch-args has {arg!r} (left out)", option)
    return out, other_gres


def _split_arg(arg: str, flags: tuple[str, ...]) -> tuple[str | None, str | None]:
    """``(flag, value)`` when ``arg`` is one of ``flags`` (``--mem=4G``, ``--mem``, ``-c4``, ``-c=4``)."""
    name, eq, value = arg.partition("=")
    if name in flags:
        return name, value if eq else None
    if not arg.startswith("--") and arg[:2] in flags and len(arg) > 2:
        return arg[:2], arg[2:].lstrip("=")
    return None, None
