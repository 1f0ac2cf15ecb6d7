"""Build contexts: which files go in (``.dockerignore``), their digest, and the tar.

The digest of a context is what makes image tags content-addressed: it covers
every file that is sent to the daemon (relative path, executable bit, bytes),
so an unchanged project hashes the same on every run and any edit to a file
that goes into the image changes it.  Files excluded by ``.dockerignore`` do
not count, so editing them never causes a rebuild.

``.dockerignore`` is read with Docker's rules: one pattern per line, ``#``
comments, Go ``filepath.Match`` wildcards plus ``**`` for any number of
directories, ``!`` to re-include, the last matching line wins, and a pattern
that matches a directory excludes everything below it.  As Docker does, the
Dockerfile and ``.dockerignore`` themselves are always sent.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from pathlib import Path
from typing import IO, Iterable, Mapping

IGNORE_FILE = ".dockerignore"


def _clean(pattern: str) -> str:
    pattern = os.path.normpath(pattern.strip()).replace(os.sep, "/")
    return pattern.lstrip("/") if pattern not in ("/", ".") else ""


def _to_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):  # "**/" : zero or more directories
                    i += 1
                    out.append("(?:.*/)?")
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                body = body.replace("\\", "\\\\")
                out.append("[^/" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


class IgnoreRules:
    """The patterns of one ``.dockerignore``."""

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self.rules: list[tuple[re.Pattern[str], bool]] = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = _clean(line[1:] if negate else line)
            if pattern:
                self.rules.append((_to_regex(pattern), negate))

    @classmethod
    def read(cls, directory: Path) -> IgnoreRules:
        path = directory / IGNORE_FILE
        try:
            return cls(path.read_text(encoding="utf-8").splitlines())
        except FileNotFoundError:
            return cls()

    def excluded(self, rel: str) -> bool:
        """Whether ``rel`` (a ``/``-separated path in the context) is left out."""
        parts = rel.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for regex, negate in self.rules:
            if any(regex.match(p) for p in prefixes):
                result = not negate
        return result

    @property
    def has_negations(self) -> bool:
        return any(negate for _, negate in self.rules)


#: MLflow's local stores, never copied into a code image: they change on every run
#: (so the image would be rebuilt each time) and hold every other run's data.
_STORE_DIRS = ("mlruns", "mlartifacts")
_STORE_FILE = "mlflow.db"


def tracking_store_files(directory: Path, files: Iterable[str], tracking_uri: str | None = None) -> set[str]:
    """Which of ``files`` (relative to ``directory``) are an MLflow tracking store."""
    active = None
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        try:
            active = Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0]).resolve().relative_to(
                directory.resolve()).as_posix()
        except ValueError:
            active = None
    out = set()
    for rel in files:
        name = rel.rsplit("/", 1)[-1]
        if (rel.split("/", 1)[0] in _STORE_DIRS or name.startswith(_STORE_FILE)
                or (active and (rel == active or rel.startswith(active + "-")))):
            out.add(rel)
    return out


def context_files(directory: Path, always: Iterable[str] = ()) -> list[str]:
    """The files (and symlinks) of ``directory`` that go into its build context, sorted."""
    rules = IgnoreRules.read(directory)
    keep = {IGNORE_FILE, *always}
    found: list[str] = []
    for root, dirs, files in os.walk(directory):
        rel_root = os.path.relpath(root, directory).replace(os.sep, "/")
        rel_root = "" if rel_root == "." else rel_root + "/"
        kept_dirs = []
        for d in dirs:
            rel = rel_root + d
            full = os.path.join(root, d)
            if os.path.islink(full):  # a link to a directory is sent as a link
                if not rules.excluded(rel) or rel in keep:
                    found.append(rel)
                continue
            # A directory can only be skipped whole when no "!" rule could re-include something below it.
            if rules.excluded(rel) and not rules.has_negations:
                continue
            kept_dirs.append(d)
        dirs[:] = sorted(kept_dirs)
        for f in files:
            rel = rel_root + f
            mode = os.lstat(os.path.join(root, f)).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):  # sockets, fifos: Docker skips them too
                continue
            if rel in keep or not rules.excluded(rel):
                found.append(rel)
    return sorted(found)


def digest_files(directory: Path, files: Iterable[str]) -> str:
    """sha256 over the paths, executable bits and contents of ``files``."""
    h = hashlib.sha256()
    for rel in files:
        full = directory / rel
        st = os.lstat(full)
        h.update(rel.encode() + b"\0")
        if stat.S_ISLNK(st.st_mode):
            h.update(b"L" + os.readlink(full).encode() + b"\0")
            continue
        h.update(b"X" if st.st_mode & 0o111 else b"F")
        h.update(str(st.st_size).encode() + b"\0")
        with open(full, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def write_tar(out: IO[bytes], directory: Path, files: Iterable[str], *, prefix: str = "",
              extra: Mapping[str, bytes] | None = None) -> None:
    """A tar of ``files`` (under ``prefix``) plus ``extra`` generated files, with
    normalised owners and times so equal inputs give equal archives."""

    import tarfile  # only when a build sends a context: a cache hit needs none of it

    def norm(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(fileobj=out, mode="w") as tar:
        if prefix:
            info = tarfile.TarInfo(prefix.rstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(norm(info))
        for rel in files:
            full = directory / rel
            info = norm(tar.gettarinfo(str(full), arcname=prefix + rel))
            if info.isfile():
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(norm(info), io.BytesIO(data))
