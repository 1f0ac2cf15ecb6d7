"""The code a run ran from: the commit and the uncommitted changes of a git work tree, or the
content digest (and a snapshot) of a directory that is not one.

* A git work tree (a local directory inside one): ``git status`` first (one call); when it
  has uncommitted changes, a patch of them against ``HEAD`` that ``git apply`` takes: tracked
  changes and untracked files that are not ignored, made through a temporary index so the
  user's own index is never touched.
* A directory that is not a git work tree: a digest of the project's files (names and
  contents), hashed incrementally (a file whose size and modification time did not change
  is not read again; the hashes are kept under mlexec's state folder), and a ``tar.gz``
  snapshot of them when they are under ``MLEXEC_SNAPSHOT_CAP`` (default ``20M``).
* A git URI (a clean checkout of a commit mlexec made): the commit says it all.

Files that runs themselves write into a project (MLflow's default stores ``mlruns/``,
``mlflow.db``, ``__pycache__``) are not the project's code and are left out of the digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

from attrs import frozen

from mlexec_core.pipeline.plan import RunPlan

SNAPSHOT_CAP_VAR = "MLEXEC_SNAPSHOT_CAP"
DEFAULT_SNAPSHOT_CAP = 20 * 1024 ** 2
#: Names never part of a project's code: what runs write into it, and version control's own.
SKIPPED = frozenset({".git", ".hg", ".svn", "mlruns", "mlartifacts", "__pycache__", ".mlexec", ".pytest_cache",
                     ".ipynb_checkpoints"})
SKIPPED_SUFFIXES = (".pyc",)
#: MLflow's default sqlite store (and its journal files) in the folder a run starts from.
SKIPPED_PREFIXES = ("mlflow.db",)
#: The same, as git pathspecs: left out of a work tree's status and patch.
EXCLUDED = tuple(f":(exclude,glob)**/{name}/**" for name in sorted(SKIPPED - {".git"})) + \
    (":(exclude,glob)**/*.pyc", ":(exclude,glob)**/mlflow.db*")


@frozen
class CodeRecord:
    """What :func:`capture` found."""

    #: ``git`` (a local git work tree), ``directory`` (not one), ``git-uri`` (a commit mlexec checked out).
    kind: str
    commit: str | None = None
    #: The git work tree's root, and the project's folder inside it ("" at the root).
    root: str | None = None
    subdirectory: str = ""
    #: Uncommitted changes, as a patch against ``commit`` (``None``: the work tree was clean).
    patch: bytes | None = None
    #: ``sha256:...`` of the project's files (a directory that is not a git work tree).
    digest: str | None = None
    #: The project's files as a ``tar.gz`` (under the cap), and why not when it is ``None``.
    snapshot: bytes | None = None
    snapshot_skipped: str | None = None
    #: The files and their hashes the digest was made of (relative path -> sha256).
    files: tuple[tuple[str, str], ...] = ()

    @property
    def dirty(self) -> bool:
        return self.patch is not None


def capture(plan: RunPlan) -> CodeRecord:
    """The code ``plan`` runs from."""
    source = plan.source
    if source.kind != "local":
        return CodeRecord(kind="git-uri" if source.git_commit else source.kind, commit=source.git_commit)
    directory = plan.work_dir
    if source.git_commit:
        found = _git_changes(directory, source.git_commit)
        if found is not None:
            root, subdirectory, patch = found
            return CodeRecord(kind="git", commit=source.git_commit, root=root, subdirectory=subdirectory,
                              patch=patch)
    files = hashed_files(directory)
    digest = digest_of(files)
    snapshot, skipped = _snapshot(directory, files)
    return CodeRecord(kind="directory", digest=digest, snapshot=snapshot, snapshot_skipped=skipped,
                      files=tuple(files.items()))


def _git(directory: Path, *args: str, env: dict[str, str] | None = None, text: bool = True):
    return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=text, timeout=60,
                          env=env)


def _git_changes(directory: Path, commit: str) -> tuple[str, str, bytes | None] | None:
    """``(root, subdirectory, patch or None)`` of the work tree ``directory`` is in; ``None``
    when git cannot say."""
    try:
        proc = _git(directory, "rev-parse", "--absolute-git-dir", "--show-toplevel", "--show-prefix")
        if proc.returncode != 0:
            return None
        lines = proc.stdout.splitlines() + [""]
        git_dir, root, prefix = lines[0], lines[1], lines[2].strip("/")
        status = _git(directory, "status", "--porcelain", "--untracked-files=all", "-z", "--", ":/", *EXCLUDED,
                      text=False)
        if status.returncode != 0:
            return None
        if not status.stdout:
            return root, prefix, None
        return root, prefix, _patch(Path(root), Path(git_dir), commit)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _patch(root: Path, git_dir: Path, commit: str) -> bytes | None:
    """Tracked changes and untracked, not ignored files against ``commit``, through a
    temporary copy of the index (the user's index and work tree are left as they were)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mlexec-patch-") as tmp:
        index = Path(tmp, "index")
        if Path(git_dir, "index").is_file():
            shutil.copyfile(Path(git_dir, "index"), index)
        env = {**os.environ, "GIT_INDEX_FILE": str(index)}
        if _git(root, "add", "--all", "--", ".", *EXCLUDED, env=env).returncode != 0:
            return None
        diff = _git(root, "diff", "--cached", "--binary", "--full-index", commit, env=env, text=False)
    if diff.returncode != 0:
        return None
    return diff.stdout or None


# -- a directory that is not a git work tree --------------------------------------------------


def project_files(directory: Path) -> list[Path]:
    """The project's files under ``directory`` (what runs write into it left out), sorted."""
    found = []
    for top, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED and not d.startswith(".tmp-"))
        for name in names:
            if name.endswith(SKIPPED_SUFFIXES) or name.startswith(SKIPPED_PREFIXES) or name in SKIPPED:
                continue
            path = Path(top, name)
            if path.is_file():
                found.append(path)
    return sorted(found)


def hashed_files(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every project file; a file whose size and modification time
    are what they were last time is not read again (the hashes are kept per directory under
    mlexec's state folder)."""
    from mlexec_core.xdg import state_home

    cache_file = state_home() / "digests" / (hashlib.sha256(str(directory).encode()).hexdigest()[:24] + ".json")
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    result: dict[str, str] = {}
    fresh: dict[str, list] = {}
    for path in project_files(directory):
        rel = path.relative_to(directory).as_posix()
        try:
            st = path.stat()
        except OSError:
            continue
        seen = known.get(rel)
        if seen and seen[0] == st.st_size and seen[1] == st.st_mtime_ns:
            sha = seen[2]
        else:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            sha = h.hexdigest()
        result[rel] = sha
        fresh[rel] = [st.st_size, st.st_mtime_ns, sha]
    if fresh != known:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(fresh))
            os.replace(tmp, cache_file)
        except OSError:
            pass
    return result


def digest_of(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]}\n".encode())
    return "sha256:" + h.hexdigest()


def snapshot_cap() -> int:
    from mlexec_core.resources import parse_size

    text = os.environ.get(SNAPSHOT_CAP_VAR, "").strip()
    if not text:
        return DEFAULT_SNAPSHOT_CAP
    try:
        return parse_size(text)
    except Exception:  # noqa: BLE001  (a bad cap falls back to the default; the record is a courtesy)
        return DEFAULT_SNAPSHOT_CAP


def _snapshot(directory: Path, files: dict[str, str]) -> tuple[bytes | None, str | None]:
    cap = snapshot_cap()
    total = 0
    for rel in files:
        try:
            total += (directory / rel).stat().st_size
        except OSError:
            pass
    if total > cap:
        from mlexec_core.resources import format_size

        return None, (f"the project's files take {format_size(total)}, over {SNAPSHOT_CAP_VAR} "
                      f"({format_size(cap)}): only their digest is recorded")
    return _tar_gz(directory, sorted(files)), None


def _tar_gz(directory: Path, names: list[str]) -> bytes:
    """``names`` (relative to ``directory``) as a ``tar.gz`` that ``tarfile`` and ``tar`` read:
    POSIX ustar headers (a pax header for a long name), mode kept, times and owners zeroed so
    the same files always give the same archive.  Written here because :mod:`tarfile` imports
    :mod:`shutil`, which every run would then pay for."""
    import gzip

    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
        for name in names:
            path = directory / name
            try:
                data = path.read_bytes()
                mode = 0o755 if os.access(path, os.X_OK) else 0o644
            except OSError:
                continue
            encoded = name.encode()
            if len(encoded) > 100:
                record = _pax_record("path", encoded)
                gz.write(_ustar_header(b"././@PaxHeader", len(record), 0o644, b"x"))
                gz.write(record + b"\0" * (-len(record) % 512))
                encoded = encoded[-100:]
            gz.write(_ustar_header(encoded, len(data), mode, b"0"))
            gz.write(data + b"\0" * (-len(data) % 512))
        gz.write(b"\0" * 1024)
    return out.getvalue()


def _pax_record(key: str, value: bytes) -> bytes:
    body = f" {key}=".encode() + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _ustar_header(name: bytes, size: int, mode: int, kind: bytes) -> bytes:
    def octal(value: int, width: int) -> bytes:
        return f"{value:0{width - 1}o}".encode() + b"\0"

    header = (name.ljust(100, b"\0") + octal(mode, 8) + octal(0, 8) + octal(0, 8) + octal(size, 12)
              + octal(0, 12) + b" " * 8 + kind + b"\0" * 100 + b"ustar\x0000" + b"\0" * 32 + b"\0" * 32
              + octal(0, 8) + octal(0, 8) + b"\0" * 155)
    header = header.ljust(512, b"\0")
    checksum = f"{sum(header):06o}".encode() + b"\0 "
    return header[:148] + checksum + header[156:]


def changed_files(directory: Path, recorded: dict[str, str]) -> list[str]:
    """What differs between ``directory`` now and the files a run recorded: ``+ added``,
    ``- removed``, ``~ changed``."""
    now = hashed_files(directory)
    out = [f"~ {rel}" for rel in sorted(now) if rel in recorded and now[rel] != recorded[rel]]
    out += [f"+ {rel}" for rel in sorted(now) if rel not in recorded]
    out += [f"- {rel}" for rel in sorted(recorded) if rel not in now]
    return out
