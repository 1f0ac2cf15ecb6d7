"""What a run needs from the machine: CPUs, memory, GPUs, shared memory, time.

A project declares it in its MLproject (``resources:`` at the top level for
every entry point, under an entry point for that one, key by key), the user
overrides it with ``-R NAME=VALUE``, a sweep file or ``resources={...}`` in the
Python API, and the plan carries one :class:`Resources` record.  Every backend
declares which keys it honours (``Registration.resources``); a plan asking for
one it does not honour is refused before anything exists.

What a backend makes of the record is its own: ``--cpus-per-task`` for Slurm,
requests and limits for Kubernetes, ``--cpus``/``--memory`` for a container,
cores and devices of this machine for the local backend (the devices it got
arrive in :class:`Allocation`).

This module imports only attrs: the MLproject loader uses it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping

import attrs
from attrs import frozen

#: The keys, as written in an MLproject and after ``-R``, with what each means.
KEYS: dict[str, str] = {
    "cpus": "CPU cores (a number; fractional where the backend allows)",
    "memory": "memory (512M, 16G, 1T: binary units; Mi/Gi spellings accepted)",
    "gpus": "GPUs (a whole number)",
    "gpu-type": "the kind of GPU (A100, h100 ...), for backends that can select one",
    "shm": "shared memory, /dev/shm (512M, 8G)",
    "time": "the run's wall-clock limit (90s, 30m, 2h, 1h30m, 1:30:00, 2-00:00:00)",
    "nodes": "machines the run spans (a whole number; 1: one machine)",
    "processes-per-node": "processes started on each node, each with its rank (a whole number)",
}
#: Python-style spellings accepted for a key (``resources={"gpu_type": ...}``).
_ALIASES = {"gpu_type": "gpu-type", "processes_per_node": "processes-per-node"}
_FIELDS = {"cpus": "cpus", "memory": "memory", "gpus": "gpus", "gpu-type": "gpu_type", "shm": "shm", "time": "time",
           "nodes": "nodes", "processes-per-node": "processes_per_node"}
#: Values that ask for nothing a backend must honour (no GPU, one machine, one process).
TRIVIAL = {"gpus": 0, "nodes": 1, "processes-per-node": 1}

_UNITS = {"": None, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.IGNORECASE)
_CLOCK = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_GPU_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class ResourceValueError(ValueError):
    """A value that is not what its key takes; the message says what is."""


@frozen
class Resources:
    """A run's resources, resolved: ``None`` for what was not asked for.

    ``memory`` and ``shm`` are in bytes, ``time`` in seconds."""

    cpus: float | None = None
    memory: int | None = None
    gpus: int | None = None
    gpu_type: str | None = None
    shm: int | None = None
    time: float | None = None
    nodes: int | None = None
    processes_per_node: int | None = None

    def asked(self) -> tuple[str, ...]:
        """The keys set (as written: ``gpu-type``), in :data:`KEYS` order."""
        return tuple(key for key, field in _FIELDS.items() if getattr(self, field) is not None)

    def __bool__(self) -> bool:
        return bool(self.asked())

    def get(self, key: str) -> Any:
        return getattr(self, _FIELDS[key])

    def merged(self, other: "Resources") -> "Resources":
        """These resources with every key ``other`` sets replaced by ``other``'s value."""
        return attrs.evolve(self, **{_FIELDS[k]: other.get(k) for k in other.asked()})

    def without(self, keys: "frozenset[str] | set[str]") -> "Resources":
        """These resources with ``keys`` not asked for (``-R time=none``)."""
        return attrs.evolve(self, **{_FIELDS[k]: None for k in keys}) if keys else self

    def shown(self) -> dict[str, str]:
        """``{key: value as a user writes it}`` for the keys set (``16G``, ``2h``)."""
        out = {}
        for key in self.asked():
            value = self.get(key)
            if key in ("memory", "shm"):
                out[key] = format_size(value)
            elif key == "time":
                out[key] = format_duration(value)
            elif key == "cpus":
                out[key] = format_number(value)
            else:
                out[key] = str(value)
        return out

    def to_json(self) -> dict[str, Any]:
        """``{key: value}`` in base units (bytes, seconds), for ``--dry-run --json`` and records."""
        return {key: self.get(key) for key in self.asked()}

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.shown().items()) or "none"


# -- reading ------------------------------------------------------------------------------


def canonical_key(key: Any) -> str | None:
    """The key as :data:`KEYS` spells it, or ``None`` if it is not one."""
    text = str(key).strip()
    text = _ALIASES.get(text, text)
    return text if text in KEYS else None


def unknown_key_message(key: Any) -> tuple[str, str]:
    """``(message, hint)`` for a key that is not a resource."""
    import difflib

    text = str(key)
    close = difflib.get_close_matches(text.lower().replace("_", "-"), list(KEYS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"unknown resource {text[:80]!r}",
            f"{hint}resources are {', '.join(KEYS)}")


def parse_value(key: str, value: Any) -> Any:
    """One value of ``key`` (canonical) as :class:`Resources` keeps it; :class:`ResourceValueError` if bad."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict, tuple, set)):
        raise ResourceValueError(f"expected {_expected(key)}, got {_kind(value)}")
    if key == "cpus":
        number = _number(value, "a number of cores such as 4 or 0.5")
        if not number > 0:
            raise ResourceValueError(f"{format_number(number)} cores: expected a number above 0")
        return float(number)
    if key == "gpus":
        number = _number(value, "a whole number of GPUs such as 1")
        if number != int(number) or number < 0:
            raise ResourceValueError(f"{value}: expected a whole number of GPUs (0, 1, 2 ...)")
        return int(number)
    if key in ("nodes", "processes-per-node"):
        number = _number(value, "a whole number such as 2")
        if number != int(number) or number < 1:
            raise ResourceValueError(f"{value}: expected a whole number of at least 1")
        return int(number)
    if key in ("memory", "shm"):
        return parse_size(value)
    if key == "time":
        return parse_duration(value)
    if key == "gpu-type":
        text = str(value).strip()
        if not _GPU_TYPE.match(text):
            raise ResourceValueError(f"{str(value)[:80]!r}: expected a name such as A100 "
                                     "(letters, digits, '_', '.', '+', '-')")
        return text
    raise ResourceValueError(f"unknown resource {key!r}")  # pragma: no cover (callers check the key)


def parse_resources(data: Mapping[Any, Any], fail: Callable[[str, str | None], Exception],
                    prefix: str = "") -> Resources:
    """A mapping of resource keys to values as a :class:`Resources`.

    ``fail(message, hint)`` makes the exception raised for the first problem
    (the message starts with ``prefix`` + the key: ``resources.memory: ...``).
    """
    values: dict[str, Any] = {}
    for raw_key, raw_value in data.items():
        key = canonical_key(raw_key)
        if key is None:
            message, hint = unknown_key_message(raw_key)
            raise fail(f"{prefix}{str(raw_key)[:80]}: {message}", hint)
        if key in values:
            raise fail(f"{prefix}{key}: given twice", None)
        try:
            values[key] = parse_value(key, raw_value)
        except ResourceValueError as exc:
            raise fail(f"{prefix}{key}: {exc}", _hint(key)) from None
    return Resources(**{_FIELDS[k]: v for k, v in values.items()})


def _hint(key: str) -> str:
    return f"{key}: {KEYS[key]}"


def _expected(key: str) -> str:
    return {"cpus": "a number of cores", "gpus": "a whole number of GPUs", "memory": "a size such as 16G",
            "shm": "a size such as 1G", "time": "a duration such as 2h", "gpu-type": "a name such as A100",
            "nodes": "a whole number of nodes", "processes-per-node": "a whole number of processes"}[key]


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", tuple: "a list", set: "a set", type(None): "nothing",
            bool: "a boolean"}.get(type(value), type(value).__name__)


def _number(value: Any, expected: str) -> float:
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ResourceValueError(f"{str(value)[:80]!r}: expected {expected}") from None
    if not math.isfinite(number):
        raise ResourceValueError(f"{value}: expected {expected}")
    return number


def parse_size(value: Any) -> int:
    """``512M``, ``16G``, ``16Gi``, ``1.5g``, ``1T`` in bytes (binary units, as Slurm and Docker read them).

    A bare number is refused: Slurm reads it as megabytes and Docker as bytes."""
    text = str(value).strip()
    match = _SIZE.match(text)
    if not match or (isinstance(value, (int, float)) and not isinstance(value, bool)) or not match.group(2):
        if match and not match.group(2):
            raise ResourceValueError(f"{text[:80]!r} has no unit (Slurm reads a bare number as megabytes, "
                                     f"Docker as bytes): write {text}M or {text}G")
        raise ResourceValueError(f"{text[:80]!r}: expected a size such as 512M, 16G or 1T")
    number, unit, _, _ = match.groups()
    size = int(round(float(number) * 1024 ** _UNITS[unit.lower()]))
    if size <= 0:
        raise ResourceValueError(f"{text!r}: expected a size above 0")
    return size


def parse_duration(value: Any) -> float:
    """``90s``, ``30m``, ``2h``, ``1d``, ``1h30m``, ``1:30:00`` (H:MM:SS), ``30:00`` (M:SS, as Slurm
    reads it), ``2-00:00:00`` (D-HH:MM:SS) in seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ResourceValueError(
            f"{value} has no unit: write {value}s, {value}m or {value}h, or a clock time in quotes "
            f"(YAML reads an unquoted 1:30:00 as the number 5400)")
    text = str(value).strip().replace(" ", "")
    seconds: float | None = None
    clock = _CLOCK.match(text)
    if clock and (":" in text or "-" in text):
        days, first, second, third = clock.groups()
        parts = [int(p) for p in (first, second, third) if p is not None]
        if days is not None:  # D-H, D-H:M, D-H:M:S
            parts += [0] * (3 - len(parts))
            h, m, s = parts
            seconds = int(days) * 86400 + h * 3600 + m * 60 + s
        elif len(parts) == 3:
            h, m, s = parts
            seconds = h * 3600 + m * 60 + s
        else:  # M:S
            m, s = parts
            seconds = m * 60 + s
    elif text and _DURATION_PART.sub("", text) == "":
        scale = {"d": 86400, "h": 3600, "m": 60, "s": 1}
        seconds = sum(float(n) * scale[u.lower()] for n, u in _DURATION_PART.findall(text))
    if seconds is None:
        if re.fullmatch(r"\d+(\.\d+)?", text):
            raise ResourceValueError(f"{text!r} has no unit: write {text}s, {text}m or {text}h")
        raise ResourceValueError(f"{str(value)[:80]!r}: expected a duration such as 90s, 30m, 2h, 1h30m, "
                                 "1:30:00 or 2-00:00:00")
    if seconds <= 0:
        raise ResourceValueError(f"{text!r}: expected a duration above 0")
    return float(seconds)


# -- writing ------------------------------------------------------------------------------


def format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def format_size(size: int) -> str:
    """Bytes as the largest binary unit that gives a whole number (``16G``, ``1536M``), else megabytes rounded up."""
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if size % 1024 ** power == 0:
            return f"{size // 1024 ** power}{unit}"
    return f"{math.ceil(size / 1024 ** 2)}M" if size >= 1024 ** 2 else f"{size}"


def format_duration(seconds: float) -> str:
    """``2h``, ``90s``, ``1h30m``, ``2d``: the shortest exact spelling."""
    total = int(math.ceil(seconds))
    if total == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            count, total = divmod(total, size)
            out.append(f"{count}{unit}")
    return "".join(out)


def time_limit_reason(seconds: float) -> str:
    """Why a run stopped by its ``time`` ended FAILED, in the same words on every backend."""
    return f"time limit {format_duration(seconds)} reached"


# -- what a job got ---------------------------------------------------------------------------


@frozen
class Allocation:
    """What this machine gave one job: its own GPUs and cores.

    Built by the local backend from the machine's pool; handed to a launcher in
    :attr:`~mlexec_core.plugin.interfaces.CommandSpec.allocation` (so that a
    container gets device requests for exactly these GPUs)."""

    #: The devices, as ``CUDA_VISIBLE_DEVICES`` names them in mlexec's pool (``"0"``, ``"GPU-…"``).
    gpus: tuple[str, ...] = ()
    #: The CPU cores the job is pinned to (empty: not pinned).
    cores: tuple[int, ...] = ()
    #: Memory the job was admitted with, in bytes (``None``: not asked).
    memory: int | None = None
