"""``--backend-config`` for the ``slurm`` backend: checked once, before anything runs.

The core has already read the file (JSON or YAML) or the inline JSON; this
module checks every key, its type and its format (Slurm's time and memory
formats, ``gres`` specifications ...), and returns a frozen :class:`SlurmConfig`.
A mistake is one :class:`UsageError` naming the key.  What only the cluster
can judge (does the partition exist, is the time within its limit) is asked
of the cluster itself, with ``sbatch --test-only``, in
:meth:`mlexec_slurm.backend.SlurmBackend.check`.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any, Mapping

import attrs
from attrs import frozen

from mlexec_core.configmodel import NonEmpty, Style, Text, TextValue, keys, setting, structure
from mlexec_core.errors import UsageError

#: Seconds of warning (SIGUSR1) before the job's end when ``grace`` is not set.
DEFAULT_GRACE = 60
#: The most seconds of warning Slurm's ``--signal`` takes.
MAX_GRACE = 65535
#: Where environments and job folders go when ``shared-dir`` is not set.
DEFAULT_SHARED_DIR = "~/.mlexec-slurm"

#: Slurm's time formats: minutes, minutes:seconds, hours:minutes:seconds,
#: days-hours, days-hours:minutes, days-hours:minutes:seconds.
_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}|\d+-\d{1,2}:\d{1,2}|\d+-\d{1,2}:\d{1,2}:\d{1,2})$")
_UNLIMITED = {"unlimited", "infinite"}
#: Memory: a number of megabytes, or a number with a unit K, M, G, T.
_MEMORY = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
#: One gres: name[:type][:count] (``gpu``, ``gpu:2``, ``gpu:a100:2``).
_GRES = re.compile(r"^[A-Za-z][\w.-]*(:[\w.-]+)?(:\d+)?$")
#: --gpus: [type:]count.
_GPUS = re.compile(r"^([\w.-]+:)?\d+$")
#: --nodes: a count or min-max.
_NODES = re.compile(r"^\d+(-\d+)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[^\s,]+$")

#: sbatch options mlexec sets itself (output file, working folder) or that would
#: break how it follows the job; refused in ``sbatch-args``.
_OWNED_OPTIONS = {
    "-o": "the job's output goes to a file mlexec streams to the terminal",
    "--output": "the job's output goes to a file mlexec streams to the terminal",
    "-e": "the job's output goes to a file mlexec streams to the terminal",
    "--error": "the job's output goes to a file mlexec streams to the terminal",
    "-D": "the job runs in mlexec's working copy of the project",
    "--chdir": "the job runs in mlexec's working copy of the project",
    "-W": "mlexec follows the job itself",
    "--wait": "mlexec follows the job itself",
    "--wrap": "mlexec writes the batch script",
    "--parsable": "mlexec reads sbatch's answer itself",
    "--test-only": "mlexec asks the cluster with --test-only before submitting",
    "-a": "job arrays are not supported for one run",
    "--array": "job arrays are not supported for one run",
    "--signal": "mlexec asks for SIGUSR1 before the end itself: set the seconds with the key grace",
    "--requeue": "mlexec lets Slurm requeue the job when the run may restart (--max-restarts, default 3)",
    "--no-requeue": "mlexec lets Slurm requeue the job when the run may restart (--max-restarts 0: never)",
    "--open-mode": "every attempt of the job appends to the output mlexec keeps with the run",
    "-H": "a held job would never start",
    "--hold": "a held job would never start",
}



@frozen
class SlurmConfig:
    """The parsed backend configuration."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    #: As the user wrote it (Slurm's format), for ``--time``.
    time: str | None = None
    nodes: str | None = None
    ntasks: int | None = None
    ntasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    mem_per_cpu: str | None = None
    gres: str | None = None
    gpus: str | None = None
    constraint: str | None = None
    #: ``True`` for ``--exclusive``, or ``"user"`` / ``"mcs"``.
    exclusive: bool | str = False
    job_name: str | None = None
    env: Mapping[str, str] = attrs.field(factory=dict)
    setup: tuple[str, ...] = ()
    sbatch_args: tuple[str, ...] = ()
    #: The tracking URI the job uses (default: the run's, made absolute).
    tracking_uri: str | None = None
    #: Where environments (``envs/``) and job folders (``jobs/``) go; the compute
    #: nodes must see it at the same path.
    shared_dir: Path = Path(os.path.expanduser(DEFAULT_SHARED_DIR))
    #: Seconds before the job's end (its time limit; at once on preemption where the cluster allows)
    #: at which the batch script gets SIGUSR1 and passes it on to the command: ``--signal=B:USR1@grace``.
    #: ``0``: no warning.
    grace: int = DEFAULT_GRACE

    @property
    def env_root(self) -> Path:
        return self.shared_dir / "envs"

    @property
    def jobs_dir(self) -> Path:
        return self.shared_dir / "jobs"

    def sbatch_options(self, job_name: str) -> list[str]:
        """The ``#SBATCH`` options the keys stand for, then ``sbatch-args`` as given."""
        opts = [f"--job-name={self.job_name or job_name}"]
        for flag, value in (
            ("partition", self.partition), ("account", self.account), ("qos", self.qos), ("time", self.time),
            ("nodes", self.nodes), ("ntasks", self.ntasks), ("ntasks-per-node", self.ntasks_per_node),
            ("cpus-per-task", self.cpus_per_task), ("mem", self.mem), ("mem-per-cpu", self.mem_per_cpu),
            ("gres", self.gres), ("gpus", self.gpus), ("constraint", self.constraint),
        ):
            if value is not None:
                opts.append(f"--{flag}={value}")
        if self.exclusive is True:
            opts.append("--exclusive")
        elif self.exclusive:
            opts.append(f"--exclusive={self.exclusive}")
        if self.grace:
            opts.append(f"--signal=B:USR1@{self.grace}")
        opts.extend(self.sbatch_args)
        return opts


def _where(key: str) -> str:
    return f"--backend-config key {key!r}"


@frozen
class _SlurmFile:
    """The backend config as written: the keys and their types (the formats are checked in :func:`parse_config`)."""

    partition: Text | None = setting()
    account: Text | None = setting()
    qos: Text | None = setting()
    time: Any = setting()
    nodes: Text | None = setting()
    ntasks: int | None = setting()
    ntasks_per_node: int | None = setting("ntasks-per-node")
    cpus_per_task: int | None = setting("cpus-per-task")
    mem: Text | None = setting()
    mem_per_cpu: Text | None = setting("mem-per-cpu")
    gres: Any = setting()
    gpus: Text | None = setting()
    constraint: Text | None = setting()
    exclusive: Any = setting()
    job_name: Text | None = setting("job-name")
    env: Mapping[str, TextValue] = setting(factory=dict)
    setup: Any = setting()
    sbatch_args: Any = setting("sbatch-args")
    tracking_uri: NonEmpty | None = setting("tracking-uri")
    shared_dir: NonEmpty | None = setting("shared-dir")
    grace: Any = setting()


_STYLE = Style(backend="slurm", known_hint="; other sbatch options go in sbatch-args")
#: The keys, in the order the README documents them.
KNOWN_KEYS = keys(_SlurmFile)


def _name(key: str, value: str | None, what: str) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not text or not _NAME.match(text):
        raise UsageError(f"{_where(key)}: {value!r} is not a {what} (one word, no spaces or commas)")
    return text


def _at_least(key: str, value: int | None, minimum: int = 1) -> int | None:
    if value is not None and value < minimum:
        raise UsageError(f"{_where(key)} must be at least {minimum}, got {value}")
    return value


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(f"{_where(key)} must be a string or a number, got {value!r}")
    return str(value).strip()


def parse_time(value: Any, key: str = "time") -> str | None:
    """A Slurm time limit as written, checked; a bare number is minutes, as for sbatch."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise UsageError(f"{_where(key)} must be a Slurm time such as 30, 2:00:00 or 1-12, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise UsageError(f"{_where(key)} must be at least 1 minute, got {value}")
        return str(value)
    text = _scalar(key, value)
    if text.lower() in _UNLIMITED:
        return text.upper()
    if not _TIME.match(text):
        raise UsageError(
            f"{_where(key)}: {value!r} is not a Slurm time",
            hint="use minutes (30), minutes:seconds (30:00), hours:minutes:seconds (2:00:00), days-hours (1-12), "
                 "days-hours:minutes(:seconds) (1-12:30), or UNLIMITED; quote values with colons in YAML "
                 "(time: '2:00:00'), which YAML would otherwise read as a number")
    parts = re.split(r"[-:]", text)
    if "-" in text:
        limits = [None, 23, 59, 59]
    elif text.count(":") == 2:
        limits = [None, 59, 59]
    else:
        limits = [None, 59]
    for part, limit in zip(parts, limits):
        if limit is not None and int(part) > limit:
            raise UsageError(f"{_where(key)}: {value!r} is not a Slurm time ({part} is out of range)",
                             hint="hours go up to 23 after days-, minutes and seconds up to 59")
    if all(int(p) == 0 for p in parts):
        raise UsageError(f"{_where(key)} must be at least one second, got {value!r}")
    return text


def _memory(key: str, value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not _MEMORY.match(text):
        raise UsageError(f"{_where(key)}: {value!r} is not a Slurm memory size",
                         hint="a number of megabytes (4000) or a number with a unit K, M, G or T (4G, 500M)")
    return text.upper()


def _gres(value: Any) -> str | None:
    if value is None:
        return None
    items = value if isinstance(value, list) else _scalar("gres", value).split(",")
    out = []
    for item in items:
        text = _scalar("gres", item)
        if not _GRES.match(text):
            raise UsageError(f"{_where('gres')}: {text!r} is not a generic resource",
                             hint="name[:type][:count], for example gpu:2 or gpu:a100:1; several with commas")
        out.append(text)
    if not out:
        raise UsageError(f"{_where('gres')} is empty")
    return ",".join(out)


def _pattern(key: str, value: str | None, pattern: re.Pattern[str], hint: str) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not pattern.match(text):
        raise UsageError(f"{_where(key)}: {value!r} is not valid", hint=hint)
    return text


def _exclusive(value: Any) -> bool | str:
    if value is None or value is False:
        return False
    if value is True or value in ("user", "mcs"):
        return value
    raise UsageError(f"{_where('exclusive')} must be true, false, 'user' or 'mcs', got {value!r}")


def _env(value: Mapping[str, str]) -> dict[str, str]:
    for name in value:
        if not _ENV_NAME.match(name):
            raise UsageError(f"{_where('env')}: {name!r} is not an environment variable name",
                             hint="letters, digits and '_', not starting with a digit")
    return dict(value)


def _lines(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(line for line in value.splitlines() if line.strip())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{_where(key)} must be a list of shell lines (or one string), got {value!r}",
                         hint="for example setup: ['module load cuda/12', 'source ~/venv/bin/activate']")
    return tuple(value)


def _sbatch_args(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = shlex.split(value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{_where('sbatch-args')} must be a list of sbatch options, got {value!r}",
                         hint="for example sbatch-args: ['--mail-type=END', '--signal=USR1@60']")
    for arg in value:
        if not arg.startswith("-"):
            raise UsageError(f"{_where('sbatch-args')}: {arg!r} is not an option",
                             hint="write each option with its value in one item: '--begin=now+60' or '-d=afterok:123'")
        flag = arg.split("=", 1)[0]
        if flag in _OWNED_OPTIONS:
            raise UsageError(f"{_where('sbatch-args')}: {flag} is not allowed: {_OWNED_OPTIONS[flag]}")
        if not flag.startswith("--") and len(flag) > 2 and flag[:2] in _OWNED_OPTIONS:
            raise UsageError(f"{_where('sbatch-args')}: {flag[:2]} is not allowed: {_OWNED_OPTIONS[flag[:2]]}")
    return tuple(value)


def _grace(value: Any) -> int:
    if value is None:
        return DEFAULT_GRACE
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_GRACE:
        raise UsageError(f"{_where('grace')} must be a whole number of seconds from 0 to {MAX_GRACE}, got {value!r}",
                         hint=f"the seconds of warning (SIGUSR1) before the job ends, {DEFAULT_GRACE} by default; "
                              "0 for none")
    return value


def _shared_dir(value: str | None, base_dir: Path) -> Path:
    if value is None:
        return Path(os.path.expanduser(DEFAULT_SHARED_DIR))
    return (base_dir / os.path.expanduser(value)).resolve()


def parse_config(config: Mapping[str, Any], base_dir: Path) -> SlurmConfig:
    try:
        return _parse(config, base_dir)
    except UsageError as exc:
        if exc.hint is None:
            exc.hint = "the mlexec-slurm README lists every key with its format (section 'Configuration')"
        raise


def _parse(config: Mapping[str, Any], base_dir: Path) -> SlurmConfig:
    raw = structure(config, _SlurmFile, style=_STYLE)
    if raw.mem is not None and raw.mem_per_cpu is not None:
        raise UsageError(f"{_where('mem')} and {_where('mem-per-cpu')} exclude each other (as in sbatch)",
                         hint="keep one of them")
    return SlurmConfig(
        partition=_name("partition", raw.partition, "partition name"),
        account=_name("account", raw.account, "account name"),
        qos=_name("qos", raw.qos, "QOS name"),
        time=parse_time(raw.time),
        nodes=_pattern("nodes", raw.nodes, _NODES, "a number of nodes (2) or a range (1-4)"),
        ntasks=_at_least("ntasks", raw.ntasks),
        ntasks_per_node=_at_least("ntasks-per-node", raw.ntasks_per_node),
        cpus_per_task=_at_least("cpus-per-task", raw.cpus_per_task),
        mem=_memory("mem", raw.mem),
        mem_per_cpu=_memory("mem-per-cpu", raw.mem_per_cpu),
        gres=_gres(raw.gres),
        gpus=_pattern("gpus", raw.gpus, _GPUS, "a number of GPUs (2) or type:count (a100:2)"),
        constraint=_pattern("constraint", raw.constraint, re.compile(r"^[^\s]+$"),
                            "a node feature expression without spaces, for example 'a100|h100' or 'intel&ib'"),
        exclusive=_exclusive(raw.exclusive),
        job_name=_name("job-name", raw.job_name, "job name"),
        env=_env(raw.env),
        setup=_lines("setup", raw.setup),
        sbatch_args=_sbatch_args(raw.sbatch_args),
        tracking_uri=raw.tracking_uri,
        shared_dir=_shared_dir(raw.shared_dir, base_dir),
        grace=_grace(raw.grace),
    )
