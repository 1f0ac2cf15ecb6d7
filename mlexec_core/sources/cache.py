"""The source cache: git mirrors, work trees per commit, extracted archives.

Layout under the root (``$MLEXEC_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlexec/sources``,
else ``~/.cache/mlexec/sources``)::

    git/<key>/               a bare mirror of one remote (key: its credential-free URL)
    trees/<key>/<commit>/    that commit checked out, submodules included
    archives/<sha256>/       an archive's contents, keyed by the archive's own hash
    <entry>.json             beside each entry: what it is; its mtime is the last use
    .locks/  .tmp/           file locks; entries being built (never left behind)

An entry is built in ``.tmp/`` and renamed into place, under an exclusive file
lock, so concurrent runs build it once and a crash leaves nothing that looks
ready.  A run holds a shared lock on the entry it uses until its process exits,
so ``mlexec cache prune`` never deletes a work tree a run is executing in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from attrs import frozen

from mlexec_core.cachefs import dir_size, exclusive, hold_shared, in_use, unused
from mlexec_core.procfs import exists

CACHE_VAR = "MLEXEC_CACHE_DIR"



def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_VAR):
        return Path(environ[CACHE_VAR]).expanduser().resolve()
    from mlexec_core.xdg import cache_home

    return (cache_home(environ) / "sources").resolve()


@frozen
class CacheEntry:
    #: "git" (a mirror), "tree" (a commit checked out) or "archive".
    kind: str
    #: The entry's path relative to the cache root (``trees/<key>/<commit>``).
    name: str
    path: Path
    #: What it holds, for people: the remote (no password), the commit, the archive.
    summary: str
    size_bytes: int
    last_used: float | None
    in_use: bool


class SourceCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root()

    # -- locks and temporary directories --------------------------------------------------

    def _lock_file(self, name: str) -> Path:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        return locks / name

    def lock(self, name: str, on_wait: Callable[[], None] | None = None) -> contextlib.AbstractContextManager[None]:
        """An exclusive lock across processes, named ``name`` (one per mirror, per entry)."""
        return exclusive(self._lock_file(f"{name}.lock"), on_wait)

    @contextlib.contextmanager
    def temporary(self, prefix: str, *, directory: bool = True) -> Iterator[Path]:
        """A fresh path in the cache's own ``.tmp/`` (same filesystem: renames are atomic), removed afterwards."""
        tmp = self.root / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = tmp / f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if directory:
            path.mkdir()
        try:
            yield path
        finally:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _clear_stale(self, prefix: str) -> None:
        """Remove what a crashed build of ``prefix`` left in ``.tmp/`` (the caller holds its lock)."""
        tmp = self.root / ".tmp"
        if not tmp.is_dir():
            return
        for stale in tmp.glob(f"{prefix}-*"):
            pid = stale.name[len(prefix) + 1:].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and exists(int(pid)):
                continue
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)

    # -- entries ----------------------------------------------------------------------------

    @staticmethod
    def lock_name(relative: str) -> str:
        return relative.replace("/", "_")

    def ensure(self, relative: str, build: Callable[[Path], None], meta: Mapping[str, Any],
               on_wait: Callable[[], None] | None = None) -> tuple[Path, bool]:
        """The entry at ``relative`` (``trees/<key>/<commit>``), built with ``build(tmp_dir)`` if missing.

        Returns ``(path, built)``.  ``build`` fills a directory in ``.tmp/``, which is
        renamed into place only when it returns; if it raises, nothing is left.
        """
        final = self.root / relative
        self.use(relative)  # in use before looking, so a prune cannot remove it under this run
        if not final.is_dir():
            with self.lock(self.lock_name(relative), on_wait):
                if self.build_locked(relative, build, meta):
                    self.use(relative)
                    return final, True
        self.use(relative)
        return final, False

    def build_locked(self, relative: str, build: Callable[[Path], None], meta: Mapping[str, Any]) -> bool:
        """:meth:`ensure` for a caller that holds the entry's lock; ``True`` if it was built now."""
        final = self.root / relative
        if final.is_dir():
            return False
        name = self.lock_name(relative)
        self._clear_stale(name)
        with self.temporary(name) as tmp:
            build(tmp)
            final.parent.mkdir(parents=True, exist_ok=True)
            self._meta_path(final).write_text(json.dumps({**meta, "created": time.time()}, indent=2))
            os.rename(tmp, final)
        return True

    @staticmethod
    def _meta_path(path: Path) -> Path:
        return path.with_name(path.name + ".json")

    def touch(self, relative: str) -> None:
        """Mark the entry used now (its last use, for ``prune --older-than``)."""
        with contextlib.suppress(OSError):
            os.utime(self._meta_path(self.root / relative))

    def use(self, relative: str) -> None:
        """Mark the entry used now, and in use until this process exits."""
        hold_shared(self._lock_file(f"{self.lock_name(relative)}.use"))  # waits for a prune removing it
        self.touch(relative)

    def in_use(self, relative: str) -> bool:
        return in_use(self._lock_file(f"{self.lock_name(relative)}.use"))

    def entries(self) -> list[CacheEntry]:
        found = []
        patterns = (("git", "git/*"), ("tree", "trees/*/*"), ("archive", "archives/*"))
        for kind, pattern in patterns:
            for path in sorted(self.root.glob(pattern)):
                if not path.is_dir():
                    continue
                relative = path.relative_to(self.root).as_posix()
                meta_path = self._meta_path(path)
                try:
                    meta = json.loads(meta_path.read_text())
                    last_used = meta_path.stat().st_mtime
                except (OSError, ValueError):
                    meta, last_used = {}, None
                found.append(CacheEntry(kind=kind, name=relative, path=path, summary=meta.get("summary", ""),
                                        size_bytes=dir_size(path), last_used=last_used,
                                        in_use=self.in_use(relative)))
        return found

    def remove(self, entry: CacheEntry) -> bool:
        """Delete one entry unless a run is using it; ``True`` if removed."""
        name = self.lock_name(entry.name)
        with self.lock(name):
            if entry.kind == "git":
                # a mirror is only read while its lock is held; trees made from it stand alone
                self._delete(entry.path)
                return True
            with unused(self._lock_file(f"{name}.use")) as free:
                if not free:
                    return False
                self._delete(entry.path)
        return True

    def _delete(self, path: Path) -> None:
        # rename first: from here on nothing looks ready, even if the delete is interrupted
        with self.temporary("removing", directory=False) as doomed:
            os.rename(path, doomed)
            self._meta_path(path).unlink(missing_ok=True)
            shutil.rmtree(doomed, ignore_errors=True)
        parent = path.parent
        if parent != self.root and parent.parent != self.root:  # trees/<key>/ when its last commit went
            with contextlib.suppress(OSError):
                parent.rmdir()


