"""Reading ``/proc/<pid>/stat``: the one parser of it.

A leaf module (it imports nothing), used by the supervisor,
the process-group helpers, the stop contract and the test kit.
"""

from __future__ import annotations


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
