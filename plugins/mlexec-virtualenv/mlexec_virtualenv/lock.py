"""What a virtualenv really contains: every distribution pinned, as a requirements file that
``uv pip sync`` takes, with the index options it was installed with.

Computed once, when the environment is built (``uv pip freeze``), and kept beside it
(``.mlexec-lock.txt``); an environment built before mlexec recorded locks gets its lock the
first time a run uses it.  Every run copies it into its record (``mlexec/environment.lock``).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from mlexec_core.plugin.interfaces import EnvironmentLock

LOCK_FILE = ".mlexec-lock.txt"
KIND = "requirements"
#: uv's and pip's variables that say where packages come from, and the option each is in a requirements file.
INDEX_VARS = (("UV_INDEX_URL", "--index-url"), ("UV_DEFAULT_INDEX", "--index-url"), ("PIP_INDEX_URL", "--index-url"),
              ("UV_EXTRA_INDEX_URL", "--extra-index-url"), ("UV_INDEX", "--extra-index-url"),
              ("PIP_EXTRA_INDEX_URL", "--extra-index-url"), ("UV_FIND_LINKS", "--find-links"),
              ("PIP_FIND_LINKS", "--find-links"))
_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*(\S+)|@\s*(\S+))")


def index_options(environ: dict[str, str] | None = None) -> list[str]:
    """The index options in force (credentials removed), as requirements-file lines."""
    from mlexec_core.plugin.interfaces import redact

    environ = os.environ if environ is None else environ
    lines: list[str] = []
    seen_index = False
    for var, option in INDEX_VARS:
        for value in (environ.get(var) or "").split():
            if option == "--index-url":
                if seen_index:
                    continue
                seen_index = True
            line = f"{option} {redact(value)}"
            if line not in lines:
                lines.append(line)
    if (environ.get("UV_NO_INDEX") or environ.get("PIP_NO_INDEX") or "").lower() in ("1", "true", "yes"):
        lines.append("--no-index")
    return lines


def freeze(uv: str, environment: Path, python_version: str) -> str:
    """The lock text of ``environment``: its index options, then ``uv pip freeze``."""
    proc = subprocess.run([uv, "pip", "freeze", "--python", str(environment / "bin" / "python")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1", "UV_PYTHON_DOWNLOADS": "never"})
    if proc.returncode != 0:
        raise OSError(f"uv pip freeze failed: {proc.stderr.strip()[:300]}")
    header = [f"# python {python_version}", *index_options()]
    return "\n".join(header) + "\n" + proc.stdout


def parse(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """``(packages, details)`` of a lock's text: name -> version (or URL), and ``python``."""
    packages: dict[str, str] = {}
    details: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# python "):
            details["python"] = line[len("# python "):]
            continue
        if not line or line.startswith(("#", "-")):
            continue
        found = _PINNED.match(line)
        if found:
            name = re.sub(r"[-_.]+", "-", found.group(1)).lower()
            packages[name] = found.group(2) or found.group(3)
    return packages, details


def lock_of(text: str) -> EnvironmentLock:
    packages, details = parse(text)
    return EnvironmentLock(kind=KIND, text=text, packages=packages, details=details)


def write_lock(uv: str, environment: Path, python_version: str) -> EnvironmentLock | None:
    """Freeze ``environment`` into its lock file; ``None`` when uv cannot say (the run goes on,
    its record without a lock)."""
    try:
        text = freeze(uv, environment, python_version)
        tmp = environment / f"{LOCK_FILE}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, environment / LOCK_FILE)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return lock_of(text)


def read_lock(environment: Path) -> EnvironmentLock | None:
    try:
        return lock_of((environment / LOCK_FILE).read_text())
    except OSError:
        return None
