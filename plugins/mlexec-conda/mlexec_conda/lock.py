"""What a conda prefix really contains: conda's ``@EXPLICIT`` list (one package URL per line,
with its hash), made from the prefix's own ``conda-meta`` records.

The format is conda's own (CEP 23, what ``conda list --explicit`` writes and ``conda create
--file`` reads): a ``# platform:`` comment, the ``@EXPLICIT`` line, then one URL per package,
dependencies before the packages that need them, each followed by ``#sha256:<hex>`` (or
``#<md5>`` when conda-meta has no sha256).

Made once, when the environment is built, and kept in the prefix (``.mlexec-lock.txt``); a
prefix built before mlexec recorded locks gets its lock the first time a run uses it.  pip
packages installed into the prefix (a ``pip:`` list) are not conda packages and so cannot be
in an explicit list: they follow it as comments (``# pip: name==version``), which conda
ignores and :func:`mlexec_conda.rebuild.build_from_lock` installs again with uv.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from attrs import frozen

from mlexec_core.plugin.interfaces import EnvironmentLock

LOCK_FILE = ".mlexec-lock.txt"
KIND = "conda-explicit"
PIP_PREFIX = "# pip: "
PLATFORM_PREFIX = "# platform: "
#: What conda accepts after the ``#`` of a package line: ``sha256:<hex>``, a bare sha256, or an md5.
_HASH = re.compile(r"^(?:sha256:(?P<sha256>[0-9a-fA-F]{64})|(?P<sha256_bare>[0-9a-fA-F]{64})"
                   r"|(?P<md5>[0-9a-fA-F]{32}))$")


@frozen
class Entry:
    """One package line of an explicit list."""

    url: str
    sha256: str | None = None
    md5: str | None = None

    @property
    def file_name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def channel(self) -> str:
        """The channel's URL: the package's URL without the subdir and the file name."""
        return self.url.rstrip("/").rsplit("/", 2)[0]

    @property
    def subdir(self) -> str:
        return self.url.rstrip("/").rsplit("/", 2)[-2]

    @property
    def stem(self) -> str:
        """``name-version-build``."""
        name = self.file_name
        for suffix in (".conda", ".tar.bz2"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name


def _ordered(records: list[dict]) -> list[dict]:
    """``records`` dependencies first (conda installs an explicit list in its order, without a
    solver), ties and cycles by name."""
    by_name = {r.get("name", ""): r for r in records}
    done: set[str] = set()
    out: list[dict] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in done or name in seen or name not in by_name:
            return
        for dep in sorted(by_name[name].get("depends") or []):
            visit(re.split(r"[\s=<>!~\[]", dep.strip(), maxsplit=1)[0], (*seen, name))
        done.add(name)
        out.append(by_name[name])

    for name in sorted(by_name):
        visit(name, ())
    return out


def _pip_lines(prefix: Path) -> list[str]:
    """``name==version`` of the distributions in the prefix that pip or uv installed (not conda)."""
    lines = []
    for installer in sorted(prefix.glob("lib/python*/site-packages/*.dist-info/INSTALLER")):
        try:
            if installer.read_text().strip().lower() == "conda":
                continue
            meta = (installer.parent / "METADATA").read_text(errors="replace")
        except OSError:
            continue
        name = re.search(r"^Name:\s*(\S+)", meta, re.M)
        version = re.search(r"^Version:\s*(\S+)", meta, re.M)
        if name and version:
            lines.append(f"{name.group(1)}=={version.group(1)}")
    return sorted(set(lines), key=str.lower)


def explicit(prefix: Path) -> str:
    """The explicit list of ``prefix``."""
    from mlexec_conda.manager import conda_platform

    lines = [PLATFORM_PREFIX + conda_platform(), "@EXPLICIT"]
    records = []
    for meta in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            records.append(json.loads(meta.read_text()))
        except (OSError, ValueError):
            continue
    for record in _ordered(records):
        url = record.get("url")
        if not url:
            continue
        digest = f"#sha256:{record['sha256']}" if record.get("sha256") else \
            (f"#{record['md5']}" if record.get("md5") else "")
        lines.append(url + digest)
    lines += [PIP_PREFIX + line for line in _pip_lines(prefix)]
    return "\n".join(lines) + "\n"


def entries(text: str) -> list[Entry]:
    """The package lines of an explicit list, in order; a hash that is not one is a ``ValueError``."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "@")):
            continue
        url, _, anchor = line.partition("#")
        if not anchor:
            out.append(Entry(url))
            continue
        found = _HASH.match(anchor)
        if not found:
            raise ValueError(f"{line}: the part after # is neither an md5 nor sha256:<hex>")
        out.append(Entry(url, sha256=(found.group("sha256") or found.group("sha256_bare") or "").lower() or None,
                         md5=(found.group("md5") or "").lower() or None))
    return out


def pip_requirements(text: str) -> list[str]:
    return [line[len(PIP_PREFIX):].strip() for line in text.splitlines() if line.startswith(PIP_PREFIX)]


def platform_of(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(PLATFORM_PREFIX):
            return line[len(PLATFORM_PREFIX):].strip()
    return None


def parse(text: str) -> dict[str, str]:
    """Package name -> version from an explicit list's file names (``name-version-build.conda``),
    and ``pip:name`` -> version for its pip lines."""
    packages = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(PIP_PREFIX):
            name, _, version = line[len(PIP_PREFIX):].partition("==")
            packages[f"pip:{name.strip()}"] = version.strip()
            continue
        if not line or line.startswith(("#", "@")):
            continue
        parts = Entry(line.split("#", 1)[0]).stem.rsplit("-", 2)
        if len(parts) == 3:
            packages[parts[0]] = parts[1]
    return packages


def lock_of(text: str) -> EnvironmentLock:
    platform = platform_of(text)
    return EnvironmentLock(kind=KIND, text=text, packages=parse(text),
                           details={"platform": platform} if platform else {})


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
