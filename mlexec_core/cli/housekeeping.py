"""What ``mlexec env prune`` and ``mlexec cache prune`` share: ages, sizes, the prune loop."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from mlexec_core.errors import MlexecError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    """``30m``, ``12h``, ``7d``, ``2w`` or plain seconds."""
    text = text.strip().lower()
    try:
        age = float(text[:-1]) * _UNITS[text[-1]] if text[-1:] in _UNITS else float(text)
    except (ValueError, KeyError):
        age = -1
    if not age >= 0:
        raise MlexecError(f"--older-than {text!r}: expected a positive number with s, m, h, d or w (7d)")
    return age


def prune_cutoff(older_than: str | None, all_: bool) -> float | None:
    """The last-use time before which entries go (``None``: all of them)."""
    if bool(older_than) == all_:
        raise MlexecError("say what to prune: --older-than AGE or --all")
    return time.time() - parse_age(older_than) if older_than else None


def size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def ago(ts: float | None) -> str:
    if not ts:
        return ""
    delta = max(0, time.time() - ts)
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= seconds:
            return f"{int(delta // seconds)}{unit} ago"
    return "just now"


def prune(terminal, items: Iterable[tuple[Any, Callable[[], bool | None]]], cutoff: float | None,
          dry_run: bool, noun: tuple[str, str]) -> None:
    """Remove each ``(entry, remove)`` last used before ``cutoff``; never one in use.

    ``entry`` has ``name``, ``size_bytes``, ``last_used`` and ``in_use``;
    ``remove()`` returns ``False`` when it found the entry in use after all.
    """
    removed = 0
    for entry, remove in items:
        if cutoff is not None and (entry.last_used or 0) > cutoff:
            continue
        if entry.in_use:
            terminal.warning(f"{entry.name}: in use by a run, kept")
            continue
        if dry_run:
            terminal.echo(f"would remove {entry.name} ({size(entry.size_bytes)})")
            continue
        if remove() is not False:
            removed += 1
            terminal.echo(f"removed {entry.name} ({size(entry.size_bytes)})")
        else:
            terminal.warning(f"{entry.name}: in use by a run, kept")
    if not dry_run:
        terminal.info(f"{removed} {noun[0] if removed == 1 else noun[1]} removed")
