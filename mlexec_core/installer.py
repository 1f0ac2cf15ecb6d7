"""Running an installer (uv, conda, mamba) for an environment plugin: its whole process
tree is stopped with mlexec.

:func:`run_installer` starts the installer in its own session and process group
and registers the group with the reaper (:mod:`mlexec_core.reaper`).  When
mlexec is interrupted while it runs (Ctrl-C, SIGTERM: the exception reaches
here), the whole group gets SIGTERM, then SIGKILL after a short grace, so
uv's build-backend child (a ``python setup.py`` building an sdist) does not
outlive mlexec; when mlexec is killed outright, the reaper does the same.

:func:`disk_full` recognises an out-of-space failure (in an installer's output
or an ``OSError``), for :class:`mlexec_core.envcache.EnvironmentCache`, which
turns it into one clear error naming ``MLEXEC_ENV_ROOT``.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence

#: Seconds an interrupted installer gets between SIGTERM and SIGKILL.
INSTALLER_GRACE = 3.0
_NO_SPACE = ("no space left on device", "os error 28", "errno 28", "disk quota exceeded", "enospc")


def run_installer(args: Sequence[str], *, cwd: Path | str | None = None, env: Mapping[str, str] | None = None,
                  separate_stderr: bool = False) -> subprocess.CompletedProcess:
    """Run ``args`` to completion, output captured as text (stderr merged into stdout unless
    ``separate_stderr``); :class:`OSError` when it cannot start, as :func:`subprocess.run`."""
    from mlexec_core import reaper

    proc = subprocess.Popen(list(args), cwd=cwd, env=dict(env) if env is not None else None,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if separate_stderr else subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    reaper.watch_group(proc.pid)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:
        stop_group(proc)
        raise
    finally:
        if proc.poll() is not None and not _group_alive(proc.pid):
            reaper.forget_group(proc.pid)
    if _group_alive(proc.pid):  # the installer left children behind: they go with it
        stop_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _group_alive(pgid: int) -> bool:
    from mlexec_core.procfs import group_members

    return bool(group_members(pgid))


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the installer's whole group, SIGKILL to what is left after :data:`INSTALLER_GRACE`."""
    from mlexec_core import reaper

    for signum, wait in ((signal.SIGTERM, INSTALLER_GRACE), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
            time.sleep(0.05)
        if proc.poll() is not None and not _group_alive(proc.pid):
            break
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    reaper.forget_group(proc.pid)


def disk_full(problem: BaseException | str) -> bool:
    """Whether ``problem`` (an exception, or an installer's output) says the disk is full."""
    if isinstance(problem, OSError) and problem.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(problem).lower()
    return any(marker in text for marker in _NO_SPACE)
