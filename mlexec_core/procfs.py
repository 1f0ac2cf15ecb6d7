"""Reading ``/proc``: the one parser of ``/proc/<pid>/stat``, the members of a
process group found with it, and whether a process exists at all.

A leaf module (it imports only :mod:`os`), used by the supervisor, the process
helpers (:mod:`mlexec_core.plugin.process`), the stop contract, the installer
and the test kit.
"""

from __future__ import annotations

import os


def stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or ``None``
    if there is no such file (the process is gone, or there is no procfs).

    ``fields[0]`` is the state (``b"Z"`` for a zombie), ``fields[2]`` the
    process group, ``fields[19]`` the start time in clock ticks (``proc(5)``
    numbers them from 1 and counts ``pid`` and ``comm``: field ``n`` is
    ``fields[n - 3]``).  The command name is skipped by its last ``)``, since
    it may itself hold spaces and parentheses.  Any other ``OSError`` (no
    permission) is raised, for the caller to decide.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    return stat[stat.rfind(b")") + 2:].split()


def exists(pid: int) -> bool:
    """Whether process ``pid`` exists, as the kernel says (a zombie too; one of another user too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:  # no process at all in the group: no need to read /proc
        return []
    except PermissionError:
        pass
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
            fields = stat_fields(entry)
        except OSError:
            continue
        if fields is not None and len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members
