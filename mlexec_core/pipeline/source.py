"""Where a project comes from: a directory used in place, a git repository, an archive.

:func:`fetch` decides what a URI is, brings the project into the source cache
when it is not a local directory (:mod:`mlexec_core.sources`), and checks the
``#sub/dir`` part.  Every problem (an unknown ref, an unreachable remote, a
missing subdirectory, a corrupt or malicious archive) is one
:class:`~mlexec_core.errors.UsageError` raised here, before any run exists.
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from attrs import frozen

from mlexec_core.errors import UsageError
from mlexec_core.pipeline.plan import Source
from mlexec_core.sources.urls import GIT_SCHEMES, is_archive, is_scp_like, redact
from mlexec_core.yamlfile import exists, shorten, text_problem


@frozen
class FetchedProject:
    directory: Path
    source: Source
    #: The root of the checkout or extracted archive (``directory`` is inside it with ``#sub/dir``).
    root: Path | None = None
    #: True when the project came from the source cache without fetching or extracting anything.
    cached: bool = False


def split_subdirectory(uri: str) -> tuple[str, str | None]:
    """``URI#sub/dir`` into the URI and the subdirectory; ``..`` and absolute paths are refused."""
    uri = uri.strip().strip("'\"")
    if "#" not in uri:
        return uri, None
    base, raw = uri.split("#", 1)
    sub = raw.strip("/") or None
    if sub is not None:
        parts = PurePosixPath(sub).parts
        if raw.startswith(("/", "\\")) or ".." in parts or "\\" in sub or (len(sub) > 1 and sub[1] == ":"):
            raise UsageError(f"project subdirectory {sub!r} must be a relative path inside the project",
                             hint="write URI#sub/dir without .. or a leading /")
    return base, sub


def fetch(uri: str, version: str | None, cwd: Path, *, reporter: Any = None) -> FetchedProject:
    """The project at ``uri`` (at ``version``, for git), as a local directory and its :class:`Source`.

    ``reporter`` (optional) shows progress of slow steps (``status`` / ``info``).
    """
    for where, text in (("project URI", uri), ("--version", version)):
        problem = text_problem(text) if text is not None else None
        if problem:
            raise UsageError(f"the {where} {problem}", hint="pass a directory, a git URL or an archive")
    if len(uri) > 8192:
        raise UsageError(f"the project URI is {len(uri)} characters long: {shorten(uri)!r}",
                         hint="pass a directory, a git URL or an archive")
    base, sub = split_subdirectory(uri)
    shown = redact(uri.strip().strip("'\""))
    parsed = urlsplit(base)
    scheme = parsed.scheme.lower()
    if scheme == "file" and parsed.netloc in ("", "localhost"):
        return _fetch_path(Path(unquote(parsed.path)), uri, shown, sub, version, reporter)
    if scheme in ("http", "https") and is_archive(unquote(parsed.path)):
        return _fetch_archive(base, shown, sub, version, reporter)
    if scheme in GIT_SCHEMES or scheme == "file" or (is_scp_like(base) and not exists(cwd / base)):
        url = base[4:] if scheme in ("git+https", "git+http") else base  # pip's spelling; git knows git+ssh
        return _fetch_git(url, shown, sub, version, reporter, local=False)
    if scheme and len(scheme) > 1:
        raise UsageError(f"cannot fetch project {shown!r}: unknown URI scheme {scheme!r}",
                         hint="use a directory, a git URL (https://, ssh://, git://, git@host:repo.git, file://), "
                              "or a .zip / .tar.gz archive (local or http(s))")
    return _fetch_path(cwd / base, uri, shown, sub, version, reporter)


def _fetch_path(path: Path, uri: str, shown: str, sub: str | None, version: str | None,
                reporter: Any) -> FetchedProject:
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except (OSError, ValueError) as exc:
        reason = "the name is too long for the file system" if getattr(exc, "errno", None) == errno.ENAMETOOLONG \
            else getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"project {shorten(shown)!r}: {reason}",
                         hint="pass the directory that holds the MLproject file, a git URL or an archive") from None
    if is_file and is_archive(path.name):
        return _fetch_archive(str(path.resolve()), shown, sub, version, reporter)
    if not is_dir:
        what = "file, not a directory or archive" if exists(path) else "no such directory"
        raise UsageError(f"project {shorten(shown)!r}: {what} ({shorten(str(path.resolve()), 300)})",
                         hint="pass the directory that holds the MLproject file, a git URL or an archive")
    path = path.resolve()
    if _may_be_bare(path) and _is_bare(path):
        return _fetch_git(str(path), shown, sub, version, reporter, local=True, repo_url=shown.split("#", 1)[0])
    if version:
        from mlexec_core.sources.git import local_repository

        found = local_repository(path)
        if found is None:
            raise UsageError(
                f"--version {version!r} needs a git project; {shown!r} is a directory that is not in git",
                hint="drop --version, or pass a git URL")
        top, prefix = found
        inner = "/".join(p for p in (prefix, sub) if p) or None
        origin = _origin(top)
        # MLflow's repoURL here: the repository's remote, else the URI as given (it adds that as the remote)
        return _fetch_git(str(top), shown, inner, version, reporter, local=True,
                          repo_url=origin or shown.split("#", 1)[0], origin=origin)
    directory = path
    if sub:
        directory = _subdirectory(path, sub, shown)
    commit, repo_url, name = git_info(directory)
    return FetchedProject(directory, Source(uri=str(directory), kind="local", git_commit=commit,
                                            git_repo_url=redact(repo_url) if repo_url else None, name=name))


def _may_be_bare(path: Path) -> bool:
    """A cheap look (two stats) before asking git whether ``path`` is a bare repository."""
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def _is_bare(path: Path) -> bool:
    from mlexec_core.sources.git import is_bare_repository  # (imported only for a folder that looks like one)

    return is_bare_repository(path)


def _status(reporter: Any):
    if reporter is None:
        return None

    def status(message: str) -> None:
        reporter.info(message)

    return status


def _fetch_git(url: str, shown: str, sub: str | None, version: str | None, reporter: Any, *, local: bool,
               repo_url: str | None = None, origin: str | None = None) -> FetchedProject:
    from mlexec_core.sources.cache import SourceCache
    from mlexec_core.sources.git import checkout

    cache = SourceCache()
    status = _status(reporter)
    if reporter is not None:
        with reporter.status(f"Getting {redact(url)}" + (f" at {version}" if version else "")):
            result = checkout(url, version, cache, local=local, origin=origin, status=status)
    else:
        result = checkout(url, version, cache, local=local, origin=origin)
    directory = _subdirectory(result.directory, sub, shown) if sub else result.directory
    source = Source(uri=shown, kind="git", git_commit=result.commit, git_repo_url=redact(repo_url or url),
                    git_branch=result.branch, version=version)
    return FetchedProject(directory, source, root=result.directory, cached=not result.created)


def _fetch_archive(location: str, shown: str, sub: str | None, version: str | None,
                   reporter: Any) -> FetchedProject:
    from mlexec_core.sources.archive import fetch_archive, project_root
    from mlexec_core.sources.cache import SourceCache

    if version:
        raise UsageError(f"--version {version!r} needs a git project; {shown!r} is an archive",
                         hint="drop --version")
    status = _status(reporter)
    if reporter is not None:
        with reporter.status(f"Getting {shown}"):
            extracted = fetch_archive(location, SourceCache(), shown=shown.split("#", 1)[0], status=status)
    else:
        extracted = fetch_archive(location, SourceCache(), shown=shown.split("#", 1)[0])
    root = project_root(extracted)
    directory = _subdirectory(root, sub, shown) if sub else root
    return FetchedProject(directory, Source(uri=shown, kind="archive"), root=extracted)


def _subdirectory(root: Path, sub: str, shown: str) -> Path:
    directory = (root / sub).resolve()
    if not directory.is_relative_to(root.resolve()):
        raise UsageError(f"project {shown!r}: subdirectory {sub!r} leads outside the project (a symlink)",
                         hint="write URI#sub/dir with a directory inside the project")
    if not directory.is_dir():
        subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        listing = ", ".join(subdirs[:12]) or "none"
        raise UsageError(f"project {shown!r}: no subdirectory {sub!r}",
                         hint=f"directories at the top of the project: {listing}")
    return directory


def _origin(top: Path) -> str | None:
    try:
        url = subprocess.run(["git", "-C", str(top), "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return url or None


def git_info(directory: Path) -> tuple[str | None, str | None, str | None]:
    """The commit checked out in ``directory``, its ``origin`` URL, and MLflow's source name for it.

    The source name is what ``mlflow run`` records as ``mlflow.source.name`` for a
    directory inside a git work tree: ``file://<work tree root>``, with
    ``#<subdirectory>`` when the project is below the root.  All three are
    ``None`` outside git.

    Every run asks this of its project folder, so the common cases are read from
    the files git keeps (``.git/HEAD``, the ref, ``packed-refs``, ``config``)
    without starting git; anything unusual (``$GIT_DIR``, another owner, an
    ``include`` in the config, a quoted value, a file system boundary ...) is asked
    of ``git`` itself, which then has the last word.
    """
    read = _read_git(directory)
    if read is not _ASK_GIT:
        return read
    return _git_info_from_git(directory)


#: What :func:`_read_git` returns when only git itself can answer.
_ASK_GIT: Any = object()
_HEX = frozenset("0123456789abcdef")
#: Variables that change which repository git finds, or what it reads there.
_GIT_VARS = frozenset({"GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_CEILING_DIRECTORIES",
                       "GIT_DISCOVERY_ACROSS_FILESYSTEM", "GIT_NAMESPACE"})


def _is_object_id(text: str) -> bool:
    return len(text) in (40, 64) and set(text) <= _HEX


def _read_git(directory: Path) -> Any:
    """:func:`git_info` from git's files, or :data:`_ASK_GIT`."""
    import os

    if any(k in _GIT_VARS or k.startswith("GIT_CONFIG") for k in os.environ):
        return _ASK_GIT
    try:
        device = os.stat(directory).st_dev
        here = directory
        while True:
            dot_git = here / ".git"
            try:
                info = os.lstat(dot_git)
            except FileNotFoundError:
                info = None
            if info is not None:
                break
            if here.parent == here:
                return None, None, None  # not in a work tree (as git would say)
            if os.stat(here.parent).st_dev != device:
                return _ASK_GIT  # git stops at a file system boundary unless told otherwise
            here = here.parent
        import stat as stat_mod

        if stat_mod.S_ISDIR(info.st_mode):
            git_dir = dot_git
        elif stat_mod.S_ISREG(info.st_mode):  # a linked worktree or a submodule: "gitdir: PATH"
            line = dot_git.read_text(encoding="utf-8").strip()
            if not line.startswith("gitdir: ") or "\n" in line:
                return _ASK_GIT
            git_dir = (here / line[len("gitdir: "):]).resolve()
        else:
            return _ASK_GIT
        if not os.stat(git_dir).st_uid == os.stat(here).st_uid == os.geteuid():
            return _ASK_GIT  # another owner: git's safe.directory rules decide
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text(encoding="utf-8").strip()).resolve()
        config = (common / "config").read_text(encoding="utf-8")
        url = _origin_from_config(config)
        if url is _ASK_GIT:
            return _ASK_GIT
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
        commit = _resolve_head(head, git_dir, common)
        if commit is _ASK_GIT:
            return _ASK_GIT
    except (OSError, UnicodeDecodeError, ValueError):
        return _ASK_GIT
    relative = directory.relative_to(here).as_posix()
    prefix = "" if relative == "." else relative
    name = f"file://{here}" + (f"#{prefix}" if prefix else "")
    return commit, url, name


def _resolve_head(head: str, git_dir: Path, common: Path) -> Any:
    """The commit ``HEAD`` names; ``None`` on an unborn branch (no commit yet)."""
    if _is_object_id(head):
        return head
    if not head.startswith("ref: refs/"):
        return _ASK_GIT
    ref = head[len("ref: "):].strip()
    if ".." in ref or "\\" in ref:
        return _ASK_GIT
    for folder in (git_dir, common) if git_dir != common else (common,):
        try:
            value = (folder / ref).read_text(encoding="utf-8").strip()
        except (FileNotFoundError, NotADirectoryError):
            continue
        return value if _is_object_id(value) else _ASK_GIT  # (a symbolic ref inside: ask git)
    try:
        packed = (common / "packed-refs").read_text(encoding="utf-8")
    except FileNotFoundError:
        packed = ""
    for line in packed.splitlines():
        parts = line.split(" ")
        if len(parts) == 2 and parts[1] == ref:
            return parts[0] if _is_object_id(parts[0]) else _ASK_GIT
    if (common / "reftable").exists():
        return _ASK_GIT
    return None


def _origin_from_config(config: str) -> Any:
    """``remote.origin.url`` from a config file's text; :data:`_ASK_GIT` for what git alone reads right
    (includes, quoting, escapes, comments after a value, a work tree set elsewhere)."""
    url = None
    section = None
    for raw in config.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            end = line.find("]")
            if end < 0 or line[end + 1:].strip():
                return _ASK_GIT
            name, _, subsection = line[1:end].strip().partition(" ")
            name = name.lower()
            if name.startswith("include") or "." in name:
                return _ASK_GIT
            section = (name, subsection.strip())
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip().lower(), value.strip()
        if any(c in value for c in '"\\#;'):
            return _ASK_GIT
        if section and section[0] == "core" and key in ("worktree", "bare") and value.lower() not in ("false", "no",
                                                                                                     "off", "0"):
            return _ASK_GIT
        if section == ("remote", '"origin"') and key == "url":
            if not sep:
                return _ASK_GIT
            url = value  # as `git config --get`: the last one wins
    return url or None


def _git_info_from_git(directory: Path) -> tuple[str | None, str | None, str | None]:
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--show-toplevel", "--show-prefix", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None, None, None
    lines = out.stdout.splitlines()
    if len(lines) < 2 or not lines[0].strip():
        return None, None, None
    top, prefix = lines[0].strip(), lines[1].strip().strip("/")
    name = f"file://{top}" + (f"#{prefix}" if prefix else "")
    commit = lines[2].strip() if out.returncode == 0 and len(lines) > 2 else None  # None: no commit yet
    try:
        url = subprocess.run(
            ["git", "-C", str(directory), "config", "--get", "remote.origin.url"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        url = ""
    return commit or None, url or None, name
