"""The local environment manager's lock: the ``python`` a command finds on ``PATH`` and the
distributions installed for it, recorded, not enforced (nothing is installed).

Asking an interpreter for its ``sys.path`` costs a process start, so it is asked once per
interpreter binary (its real path, size and modification time) and remembered under
mlexec's state folder; the distributions are then read from the names of the
``*.dist-info`` folders on that path, which costs a few directory listings per run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from mlexec_core.plugin.interfaces import EnvironmentLock

KIND = "python"
_PROBE = "import json, platform, sys; print(json.dumps([platform.python_version(), sys.path]))"
_DIST = re.compile(r"^(?P<name>.+?)-(?P<version>[^-]+?)\.(dist-info|egg-info)$")


def find_python(environ: dict[str, str] | None = None) -> str | None:
    """What ``python`` means on ``PATH`` (``python3`` when there is no ``python``), as a real path."""
    path = os.get_exec_path(environ)
    for name in ("python", "python3"):
        for folder in path:
            candidate = os.path.join(folder, name)
            if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
                return os.path.realpath(candidate)
    return None


def _probe(python: str) -> tuple[str, list[str]] | None:
    from mlexec_core.xdg import state_home

    cache = state_home() / "interpreters.json"
    try:
        st = os.stat(python)
    except OSError:
        return None
    key = f"{python}:{st.st_size}:{st.st_mtime_ns}"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key][0], known[key][1]
    try:
        proc = subprocess.run([python, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=30)
        version, paths = json.loads(proc.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    known = {k: v for k, v in known.items() if not k.startswith(python + ":")}
    known[key] = [version, paths]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, cache)
    except OSError:
        pass
    return version, paths


def distributions(paths: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for folder in paths:
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            match = _DIST.match(entry)
            if match:
                name = re.sub(r"[-_.]+", "-", match.group("name")).lower()
                found.setdefault(name, match.group("version"))
    return dict(sorted(found.items()))


def local_lock(environ: dict[str, str] | None = None) -> EnvironmentLock | None:
    python = find_python(environ)
    if python is None:
        return None
    probed = _probe(python)
    if probed is None:
        return None
    version, paths = probed
    packages = distributions(paths)
    text = "\n".join([f"# python {version}", f"# executable {python}",
                      "# recorded, not enforced: the local environment manager installs nothing",
                      *(f"{name}=={v}" for name, v in packages.items())]) + "\n"
    return EnvironmentLock(kind=KIND, text=text, packages=packages, details={"python": version,
                                                                             "executable": python})
