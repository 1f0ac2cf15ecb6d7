"""What a conda prefix really contains: conda's ``@EXPLICIT`` list (one package URL per line,
with its hash), made from the prefix's own ``conda-meta`` records.

Made once, when the environment is built, and kept in the prefix (``.mlexec-lock.txt``); a
prefix built before mlexec recorded locks gets its lock the first time a run uses it.  pip
packages installed into the prefix (a ``pip:`` list) are not in an explicit list; they
are listed after it as comments, for ``mlexec diff``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlexec_core.plugin.interfaces import EnvironmentLock

LOCK_FILE = ".mlexec-lock.txt"
KIND = "conda-explicit"


def explicit(prefix: Path) -> str:
    lines = ["# platform: " + _platform(prefix), "@EXPLICIT"]
    records = []
    for meta in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            records.append(json.loads(meta.read_text()))
        except (OSError, ValueError):
            continue
    for record in sorted(records, key=lambda r: r.get("name", "")):
        url = record.get("url")
        if not url:
            continue
        digest = f"#sha256:{record['sha256']}" if record.get("sha256") else \
            (f"#{record['md5']}" if record.get("md5") else "")
        lines.append(url + digest)
    return "\n".join(lines) + "\n"


def _platform(prefix: Path) -> str:
    from mlexec_conda.manager import conda_platform

    return conda_platform()


def parse(text: str) -> dict[str, str]:
    """Package name -> version from an explicit list's file names (``name-version-build.conda``)."""
    packages = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "@")):
            continue
        name = line.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        for suffix in (".conda", ".tar.bz2"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        parts = name.rsplit("-", 2)
        if len(parts) == 3:
            packages[parts[0]] = parts[1]
    return packages


def lock_of(text: str) -> EnvironmentLock:
    return EnvironmentLock(kind=KIND, text=text, packages=parse(text))


def write_lock(prefix: Path) -> EnvironmentLock | None:
    try:
        text = explicit(prefix)
        tmp = prefix / f"{LOCK_FILE}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, prefix / LOCK_FILE)
    except OSError:
        return None
    return lock_of(text)


def read_lock(prefix: Path) -> EnvironmentLock | None:
    try:
        return lock_of((prefix / LOCK_FILE).read_text())
    except OSError:
        return None
