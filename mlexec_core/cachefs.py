"""File-system primitives shared by mlexec's caches (environments, project sources).

* :func:`exclusive`: a blocking cross-process lock (building, removing an entry).
* :func:`hold_shared` / :func:`in_use` / :func:`unused`: "in use" marks. A run
  holds a shared lock on what it uses until its process exits; pruning takes
  the lock exclusively, and only if nobody holds it, so it never removes
  something a run is using.
* :func:`dir_size`: bytes under a directory, links not followed.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO, Callable, Iterator

#: Shared locks this process holds until it exits, by lock file.
_held: dict[str, IO[str]] = {}
atexit.register(lambda: [handle.close() for handle in _held.values()])


@contextlib.contextmanager
def exclusive(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path``; ``on_wait`` is called once if someone else has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hold_shared(path: Path) -> None:
    """Mark ``path`` in use by this process until it exits."""
    if str(path) in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    fcntl.flock(handle, fcntl.LOCK_SH)
    _held[str(path)] = handle


def in_use(path: Path) -> bool:
    """Whether any process (this one included) holds ``path`` with :func:`hold_shared`."""
    if str(path) in _held:
        return True
    with unused(path) as free:
        return not free


@contextlib.contextmanager
def unused(path: Path) -> Iterator[bool]:
    """Yield ``True`` (holding ``path`` exclusively for the block) if nobody uses it, else ``False``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
