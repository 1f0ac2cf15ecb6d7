"""Python interpreters already on this machine: on PATH and in pyenv's versions folder.

Nothing is downloaded: a version that is not installed is an error listing
what is.  Finding interpreters must stay cheap because it runs on every
``mlexec run`` (the warm path): pyenv versions are known by their folder
names, the running interpreter by ``sys.version_info``, and the versions of
the other interpreters on PATH are asked once and remembered in
``<env root>/.interpreters.json`` (keyed by real path, size and mtime).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterable, Mapping

from attrs import frozen

_NAME = re.compile(r"^python3(\.\d+)?$")
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_REQUEST = re.compile(r"^\d+(\.\d+){0,2}$")
_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


@frozen
class Interpreter:
    #: Real path of the executable.
    path: str
    #: Full version, "3.11.7".
    version: str
    #: Where it was found: "PATH", "pyenv", "mlexec" (the Python mlexec runs on).
    origin: str

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.version.split("."))


def pyenv_root(environ: Mapping[str, str]) -> Path | None:
    """``$PYENV_ROOT``, else ``~/.pyenv``, else what ``pyenv root`` says (when pyenv is on PATH)."""
    if environ.get("PYENV_ROOT"):
        return Path(environ["PYENV_ROOT"]).expanduser()
    home = Path(os.path.expanduser("~"), ".pyenv")
    if (home / "versions").is_dir():
        return home
    exe = shutil.which("pyenv", path=environ.get("PATH"))
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "root"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def _running() -> Interpreter:
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Interpreter(os.path.realpath(base), "%d.%d.%d" % sys.version_info[:3], "mlexec")


class _VersionCache:
    """Versions of interpreters found on PATH, asked once per executable."""

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self.data: dict[str, list] = {}
        self.dirty = False
        if file is not None:
            try:
                self.data = json.loads(file.read_text())
            except (OSError, ValueError):
                self.data = {}

    def version(self, real: str) -> str | None:
        try:
            st = os.stat(real)
        except OSError:
            return None
        stamp = [st.st_size, st.st_mtime_ns]
        cached = self.data.get(real)
        if cached and cached[:2] == stamp:
            return cached[2]
        try:
            proc = subprocess.run([real, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        version = proc.stdout.strip() if proc.returncode == 0 and _VERSION.match(proc.stdout.strip()) else None
        self.data[real] = [*stamp, version]
        self.dirty = True
        return version

    def save(self) -> None:
        if not (self.dirty and self.file is not None):
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f"{self.file.name}.{uuid.uuid4().hex[:8]}")
            tmp.write_text(json.dumps(self.data))
            os.replace(tmp, self.file)
        except OSError:
            pass


def find_interpreters(environ: Mapping[str, str] | None = None, cache_file: Path | None = None) -> list[Interpreter]:
    """Every Python 3 interpreter found, the running one first, then PATH order, then pyenv's."""
    environ = os.environ if environ is None else environ
    found: list[Interpreter] = []
    seen: set[str] = set()

    def add(interp: Interpreter) -> None:
        if interp.path not in seen:
            seen.add(interp.path)
            found.append(interp)

    add(_running())
    root = pyenv_root(environ)
    shims = os.path.realpath(root / "shims") if root else None
    pyenv_versions: list[Interpreter] = []
    if root is not None and (root / "versions").is_dir():
        for entry in sorted((root / "versions").iterdir()):
            if not _VERSION.match(entry.name):
                continue  # 2.7 has no python3*, others are virtualenvs or alternative builds
            major_minor = ".".join(entry.name.split(".")[:2])
            for name in (f"python{major_minor}", "python3"):
                exe = entry / "bin" / name
                if exe.is_file() and entry.name.startswith("3."):
                    pyenv_versions.append(Interpreter(os.path.realpath(exe), entry.name, "pyenv"))
                    break
    known = {i.path: i.version for i in [*found, *pyenv_versions]}
    versions = _VersionCache(cache_file)
    for directory in _path_dirs(environ):
        if shims and os.path.realpath(directory) == shims:
            continue  # pyenv's shims pick a version by themselves; its versions are listed below
        try:
            names = sorted(n for n in os.listdir(directory) if _NAME.match(n))
        except OSError:
            continue
        for name in names:
            exe = os.path.join(directory, name)
            real = os.path.realpath(exe)
            if real in seen or not os.access(real, os.X_OK) or os.path.isdir(real):
                continue
            version = known.get(real) or versions.version(real)
            if version:
                add(Interpreter(real, version, "PATH"))
    versions.save()
    for interp in pyenv_versions:
        add(interp)
    return found


def _path_dirs(environ: Mapping[str, str]) -> Iterable[str]:
    seen = set()
    for directory in environ.get("PATH", "").split(os.pathsep):
        if directory and directory not in seen:
            seen.add(directory)
            yield directory


def normalise_request(request: str) -> str | None:
    """``"3.11"``, ``"==3.11.7"``, ``"3.11.*"`` to a dotted prefix; ``None`` if it is not a version."""
    text = request.strip().removeprefix("==").strip().removesuffix(".*")
    return text if _REQUEST.match(text) else None


def matches(interp: Interpreter, request: str) -> bool:
    want = request.split(".")
    return interp.version.split(".")[: len(want)] == want


def choose(interpreters: list[Interpreter], request: str | None) -> Interpreter | None:
    """The interpreter for ``request``: the newest matching version (``X.Y`` matches any ``X.Y.*``);
    with no request, the Python mlexec runs on."""
    if request is None:
        return interpreters[0] if interpreters else _running()
    candidates = [i for i in interpreters if matches(i, request)]
    if not candidates:
        return None
    best = max(i.version_tuple for i in candidates)
    return next(i for i in candidates if i.version_tuple == best)
