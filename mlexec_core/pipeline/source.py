"""Where a project comes from.  For now: a directory on this machine."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse, urlunparse

from attrs import frozen

from mlexec_core.errors import UsageError
from mlexec_core.pipeline.plan import Source


@frozen
class FetchedProject:
    directory: Path
    source: Source


def split_subdirectory(uri: str) -> tuple[str, str | None]:
    """``URI#sub/dir`` into the URI and the subdirectory; ``..`` and absolute paths are refused."""
    uri = uri.strip().strip("'\"")
    if "#" not in uri:
        return uri, None
    base, sub = uri.split("#", 1)
    sub = sub.strip("/") or None
    if sub is not None:
        parts = PurePosixPath(sub).parts
        if uri.split("#", 1)[1].startswith("/") or ".." in parts:
            raise UsageError(f"project subdirectory {sub!r} must be a relative path inside the project",
                             hint="write URI#sub/dir without .. or a leading /")
    return base, sub


def redact(uri: str) -> str:
    """``uri`` without a password (``https://user:secret@host`` -> ``https://user@host``)."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    netloc = parsed.hostname or ""
    if parsed.username:
        netloc = f"{parsed.username}@{netloc}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc))


def fetch(uri: str, version: str | None, cwd: Path) -> FetchedProject:
    base, sub = split_subdirectory(uri)
    parsed = urlparse(base)
    if parsed.scheme == "file" and not parsed.netloc:
        path = Path(unquote(parsed.path))
    elif parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and base[1:2] == ":"):
        path = cwd / base
    else:
        raise UsageError(
            f"cannot fetch {redact(uri)!r}: only project directories on this machine are supported so far",
            hint="clone the repository and pass its directory",
        )
    if not path.is_dir():
        what = "file, not a directory" if path.exists() else "no such directory"
        raise UsageError(f"project {uri!r}: {what} ({path.resolve()})",
                         hint="pass the directory that holds the MLproject file")
    directory = path.resolve()
    if sub:
        directory = (directory / sub).resolve()
        if not directory.is_dir():
            raise UsageError(f"project {uri!r}: no subdirectory {sub!r} in {path.resolve()}")
    if version:
        raise UsageError(
            f"--version {version!r} needs a git project URI; {uri!r} is a local directory used in place",
            hint="check out that version yourself, or drop --version",
        )
    commit, repo_url = git_info(directory)
    return FetchedProject(directory, Source(uri=str(directory), kind="local", git_commit=commit,
                                            git_repo_url=redact(repo_url) if repo_url else None))


def git_info(directory: Path) -> tuple[str | None, str | None]:
    """The commit checked out in ``directory`` and its ``origin`` URL, when it is in git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    if out.returncode != 0:
        return None, None
    url = subprocess.run(
        ["git", "-C", str(directory), "config", "--get", "remote.origin.url"],
        capture_output=True, text=True, timeout=10,
    ).stdout.strip()
    return out.stdout.strip() or None, url or None
