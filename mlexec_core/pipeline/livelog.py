"""The live copy of a running run's output on this machine, for ``mlexec logs -f``.

While a run goes on, its output is also written to
``$XDG_RUNTIME_DIR/mlexec-live/<run id>.log`` (else
``<tmp>/mlexec-live-<uid>/``), which another mlexec can follow; the path is the
run's tag ``mlexec.supervisor.log``.  The file stops growing at the output cap
and is removed when the run ends: the log kept with the run is the complete one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mlexec_core.pipeline.output import output_cap, temp_dir


def live_dir() -> Path:
    """Where live copies of running runs' output go: ``$XDG_RUNTIME_DIR/mlexec-live``, else
    ``<tmp>/mlexec-live-<uid>`` (transient files, removed when their run ends)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime, "mlexec-live")
    return Path(temp_dir(), f"mlexec-live-{os.getuid()}")


class LiveLog:
    """A copy of a run's output while it runs, in a file other mlexec processes can follow.

    It wraps the run output's ``echo`` (so it sees every chunk in order, whatever
    is shown), stops growing at ``cap`` bytes (with a line saying so), and is
    removed when the run ends; the log kept with the run is the complete one.
    """

    def __init__(self, path: Path, echo, cap: int) -> None:
        self.path = path
        self._echo = echo
        self._cap = cap
        self._size = 0
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115  (closed in close())

    def __call__(self, data: bytes, stream: str) -> None:
        if self._echo is not None and stream:
            self._echo(data, stream)
        if self._file is None or self._size >= self._cap:
            return
        try:
            self._file.write(data[: self._cap - self._size])
            self._size += len(data)
            if self._size >= self._cap:
                self._file.write(b"\n[mlexec: the live view stops here (cap reached); the run's log is kept "
                                 b"with the run when it ends]\n")
        except OSError:
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):  # the last run of this user leaves no folder behind
            self.path.parent.rmdir()


_live: dict[str, LiveLog] = {}


def stop_live_log(run_id: str) -> None:
    """Remove the live copy of ``run_id``'s output (the run ended, or this mlexec detached)."""
    live = _live.pop(run_id, None)
    if live is not None:
        live.close()


def start_live_log(run_id: str, output) -> LiveLog | None:
    """Follow ``output`` (a :class:`~mlexec_core.pipeline.output.RunOutput`) into a live file; ``None`` if
    the file cannot be made."""
    folder = live_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    failed: list[OSError] = []

    def make(echo):
        try:
            return LiveLog(folder / f"{run_id}.log", echo, output_cap())
        except OSError as exc:
            failed.append(exc)
            return echo

    # Swapped in between two writes, with what was printed before the run was announced
    # replayed first (not shown again), so a follower misses nothing.
    live = output.tee(make)
    if failed:
        return None
    _live[run_id] = live
    return live
