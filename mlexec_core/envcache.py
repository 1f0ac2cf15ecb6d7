"""A content-addressed, concurrency-safe cache of environments, for environment plugins.

An environment's directory is named by a hash of what decides its contents
(:func:`spec_key`), so the same spec always maps to the same directory and a
changed spec to a new one.  :meth:`EnvironmentCache.ensure` builds a missing
environment under an exclusive file lock, so two runs that need the same new
environment create it once, and marks it ready only when the build has
completed, so a crash or Ctrl-C half way never leaves a directory a later run
takes for ready:

* ``relocatable=True`` (default): build in a temporary sibling directory and
  rename it into place (for environments that can move, e.g. a
  ``uv venv --relocatable``);
* ``relocatable=False``: build at the final path (for prefixes that embed
  their own path, e.g. conda); an unfinished one has no ready marker and is
  wiped before the next build.

Runs that use an environment hold a shared lock on it until their process
exits, so :meth:`EnvironmentCache.remove` (``mlexec env prune``) never deletes
an environment in use.

The root is ``$MLEXEC_ENV_ROOT``, else ``$XDG_CACHE_HOME/mlexec/envs``, else
``~/.cache/mlexec/envs``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from mlexec_core.cachefs import dir_size, exclusive, hold_shared, in_use, unused
from mlexec_core.errors import EnvironmentBuildError, MlexecError
from mlexec_core.plugin.interfaces import EnvironmentInfo

ENV_ROOT_VAR = "MLEXEC_ENV_ROOT"
READY = ".mlexec-env.json"
LAST_USED = ".mlexec-last-used"



def env_root(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get(ENV_ROOT_VAR):
        return Path(environ[ENV_ROOT_VAR]).expanduser().resolve()
    from mlexec_core.xdg import cache_home

    return (cache_home(environ) / "envs").resolve()


def spec_key(spec: Mapping[str, Any], length: int = 16) -> str:
    """A stable hash of ``spec`` (any JSON-able mapping; key order does not matter)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class EnvironmentCache:
    """The environments of one manager under the cache root: ``<root>/<manager>-<key>``."""

    def __init__(self, manager: str, root: Path | None = None) -> None:
        self.manager = manager
        self.root = root or env_root()

    def path_for(self, key: str) -> Path:
        return self.root / f"{self.manager}-{key}"

    def _lock_path(self, key: str, kind: str) -> Path:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return locks / f"{self.manager}-{key}.{kind}"

    def is_ready(self, key: str) -> bool:
        return (self.path_for(key) / READY).is_file()

    def ensure(self, key: str, build: Callable[[Path], None], *, summary: str = "",
               spec: Mapping[str, Any] | None = None, relocatable: bool = True,
               on_wait: Callable[[], None] | None = None) -> tuple[Path, bool]:
        """The ready environment for ``key``, built with ``build(path)`` if missing.

        Returns ``(path, built)``: ``built`` is false on a cache hit.  ``build``
        raises to fail; whatever it left is removed.  ``on_wait`` is called if
        another process is building the same environment and this one waits.
        """
        final = self.path_for(key)
        # In use before looking: a prune that is removing it finishes first, one that
        # comes later sees it in use, so a ready environment cannot vanish under the run.
        self.use(key)
        if not self.is_ready(key):
            with exclusive(self._lock_path(key, "build"), on_wait):
                if not self.is_ready(key):
                    self._build(key, final, build, summary, spec, relocatable)
                    self.use(key)
                    return final, True
        self.use(key)
        return final, False

    def _build(self, key: str, final: Path, build: Callable[[Path], None], summary: str,
               spec: Mapping[str, Any] | None, relocatable: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f".tmp-{self.manager}-{key}-*"):  # left by a crash; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # an unfinished in-place build
            shutil.rmtree(final, ignore_errors=True)
        target = self.root / f".tmp-{self.manager}-{key}-{uuid.uuid4().hex[:8]}" if relocatable else final
        try:
            target.mkdir(parents=True)
            build(target)
            meta = {"manager": self.manager, "key": key, "summary": summary, "created": time.time(),
                    "spec": spec or {}}
            (target / READY).write_text(json.dumps(meta, indent=2, default=str))
            if relocatable:
                os.rename(target, final)
        except BaseException as exc:
            shutil.rmtree(target, ignore_errors=True)
            from mlexec_core.installer import disk_full

            if isinstance(exc, (OSError, MlexecError)) and disk_full(exc):
                raise EnvironmentBuildError(
                    f"no space left on the device under {ENV_ROOT_VAR} ({self.root}) while building the "
                    f"{self.manager} environment; nothing half-built was kept",
                    hint=f"free some space (`mlexec env prune` removes unused environments), or point "
                         f"{ENV_ROOT_VAR} at a larger disk") from None
            if isinstance(exc, OSError):
                raise EnvironmentBuildError(
                    f"cannot write the {self.manager} environment under {ENV_ROOT_VAR} ({self.root}): "
                    f"{exc.strerror or exc}" + (f" ({exc.filename})" if getattr(exc, "filename", None) else ""),
                    hint=f"check the permissions of {self.root}, or point "
                                                   f"{ENV_ROOT_VAR} elsewhere") from None
            raise

    def use(self, key: str) -> None:
        """Mark ``key`` used now and in use until this process exits."""
        hold_shared(self._lock_path(key, "use"))  # waits for a prune that is removing it
        with contextlib.suppress(OSError):
            (self.path_for(key) / LAST_USED).touch()

    def in_use(self, key: str) -> bool:
        return in_use(self._lock_path(key, "use"))

    def list(self) -> list[EnvironmentInfo]:
        infos = []
        if not self.root.is_dir():
            return infos
        for path in sorted(self.root.glob(f"{self.manager}-*")):
            meta_file = path / READY
            if not meta_file.is_file():
                continue
            try:
                meta = json.loads(meta_file.read_text())
            except ValueError:
                meta = {}
            key = path.name[len(self.manager) + 1:]
            last = path / LAST_USED
            infos.append(EnvironmentInfo(
                manager=self.manager, name=path.name, path=path, summary=meta.get("summary", ""),
                size_bytes=dir_size(path), last_used=last.stat().st_mtime if last.exists() else meta.get("created"),
                in_use=self.in_use(key),
            ))
        return infos

    def remove(self, info: EnvironmentInfo) -> bool:
        """Delete one environment unless a run is using it; ``True`` if removed."""
        key = info.name[len(self.manager) + 1:]
        with exclusive(self._lock_path(key, "build")), unused(self._lock_path(key, "use")) as free:
            if not free:
                return False
            (info.path / READY).unlink(missing_ok=True)  # not ready from here on
            shutil.rmtree(info.path, ignore_errors=True)
        return True
