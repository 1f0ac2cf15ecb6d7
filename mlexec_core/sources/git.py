"""Git projects: a bare mirror per remote, fetched incrementally; a work tree per commit.

* The mirror (``git/<key>``) is keyed by the remote's credential-free URL and
  is never shallow, so any commit of the history can be checked out (MLflow's
  ``depth=1`` fetch cannot reach old commits, mlflow#5301).
* A commit asked for with ``-v`` that the mirror already holds costs no network
  at all.  A branch or tag costs one ``git ls-remote`` (branches move); objects
  are fetched only when the mirror lacks the commit, and then only that ref.
* The work tree (``trees/<key>/<commit>``) is a local clone of the mirror
  (objects hard-linked, so nearly free), checked out detached at the commit,
  with ``git submodule update --init --recursive``; later runs reuse it.
* git never prompts (``GIT_TERMINAL_PROMPT=0``, ssh ``BatchMode``) and gives up
  on a remote that does not answer; a password in the URL is passed to git
  through the environment only, and removed from everything git prints.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Callable, Mapping, Sequence

from attrs import frozen

from mlexec_core.errors import UsageError
from mlexec_core.sources.cache import SourceCache
from mlexec_core.sources.urls import credential_config, redact, scrub, secrets_of, strip_credentials

TIMEOUT_VAR = "MLEXEC_GIT_TIMEOUT"
_HEX = re.compile(r"^[0-9a-fA-F]{4,40}$")


@frozen
class GitCheckout:
    directory: Path
    commit: str
    #: The branch asked for with -v (None for a tag, a commit, or the default branch).
    branch: str | None
    #: True when the work tree was made by this call (False: reused from the cache).
    created: bool


class Remote:
    """One git remote as mlexec talks to it: the URL git sees, and how to show it."""

    def __init__(self, url: str, *, local: bool = False, origin: str | None = None) -> None:
        self.url = url
        #: What relative submodule URLs resolve against (a local repository's own origin).
        self.origin = origin or url
        self.clean = strip_credentials(url)
        self.shown = redact(url)
        self.local = local
        self.secrets = secrets_of(url) + secrets_of(self.origin)
        self.key = self._key(self.clean)

    @staticmethod
    def _key(clean: str) -> str:
        name = re.sub(r"[^\w.-]+", "-", clean.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))[:40] or "repo"
        return f"{name}-{hashlib.sha256(clean.rstrip('/').encode()).hexdigest()[:16]}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["GIT_TERMINAL_PROMPT"] = "0"
        env["GCM_INTERACTIVE"] = "never"
        if not env.get("GIT_SSH_COMMAND") and not env.get("GIT_SSH"):
            env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes -o ConnectTimeout=15"
        config = {
            # a remote that stalls is given up on instead of hanging the run
            "http.lowSpeedLimit": "1000", "http.lowSpeedTime": "30",
            # no housekeeping left running in the background after mlexec exits
            "gc.autoDetach": "false", "maintenance.autoDetach": "false",
            **credential_config(self.url),
            **credential_config(self.origin),
        }
        if self.local:  # the user's own repository: its submodules may be local paths too
            config["protocol.file.allow"] = "always"
        count = int(env.get("GIT_CONFIG_COUNT") or 0)
        for i, (key, value) in enumerate(config.items(), count):
            env[f"GIT_CONFIG_KEY_{i}"] = key
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        env["GIT_CONFIG_COUNT"] = str(count + len(config))
        return env

    def git(self, args: Sequence[str], *, cwd: Path | None = None, timeout: float | None = None,
            check: bool = True, what: str = "") -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(["git", *args], cwd=cwd, env=self.env(), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise UsageError("git is not installed, and the project URI is a git repository",
                             hint="install git (apt-get install git)") from None
        except subprocess.TimeoutExpired:
            raise UsageError(f"git remote {self.shown} did not answer within {timeout:.0f} s",
                             hint=f"check the URL and your network; set {TIMEOUT_VAR} to wait longer") from None
        if check and proc.returncode != 0:
            raise UsageError(f"{what or 'git ' + args[0]} failed for {self.shown}: {self.stderr(proc)}",
                             hint=_hint(proc.stderr))
        return proc

    def stderr(self, proc: subprocess.CompletedProcess) -> str:
        lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
        causes = ("ssh:", "connect to host", "could not resolve", "connection refused", "permission denied")
        important = [ln for ln in lines if ln.lower().startswith(("fatal", "error", *causes))] or lines
        # the cause (ssh's own message) first: "Could not read from remote repository" alone says nothing
        important.sort(key=lambda ln: not ln.lower().startswith(causes))
        return scrub("; ".join(important[-3:]) or f"exit status {proc.returncode}", self.secrets)


def _hint(stderr: str) -> str:
    text = (stderr or "").lower()
    if any(cause in text for cause in ("could not resolve", "connection refused", "timed out", "no route to host",
                                       "failed to connect", "name or service not known")):
        return "check the URL and that the remote is reachable from here (try `git ls-remote URL`)"
    if any(cause in text for cause in ("could not read username", "could not read password", "authentication",
                                       "permission denied", "host key verification failed")):
        return ("the remote wants credentials: use an ssh URL with your key, a credential helper, "
                "or https://user:token@host/... (the token never shows in logs or tags)")
    return "check that the URL is right and the remote is reachable from here (try `git ls-remote URL`)"


def _timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_VAR) or 60)
    except ValueError:
        return 60.0


def checkout(url: str, version: str | None, cache: SourceCache, *, local: bool = False,
             origin: str | None = None, status: Callable[[str], object] | None = None) -> GitCheckout:
    """The work tree of ``version`` (default: the remote's default branch) of ``url``, from the cache.

    ``origin``: the URL relative submodule URLs are resolved against, when not ``url``
    (for a local repository, its own ``origin`` remote, as ``git submodule update`` there would).
    """
    remote = Remote(url, local=local, origin=origin)
    mirror_rel = f"git/{remote.key}"
    if version and len(version) == 40 and _HEX.match(version):
        known = f"trees/{remote.key}/{version.lower()}"
        cache.use(known)  # in use before looking, so a prune cannot remove it under this run
        if (cache.root / known).is_dir():  # checked out before: not even the mirror is read
            return GitCheckout(directory=cache.root / known, commit=version.lower(), branch=None, created=False)
    listing = None
    if not (cache.root / mirror_rel).is_dir():
        listing = _ls_remote(remote)  # an unreachable remote or a typo leaves no empty mirror behind
    mirror = cache.root / mirror_rel
    with cache.lock(cache.lock_name(mirror_rel)):
        # (re)made under the lock, so a concurrent `mlexec cache prune` cannot pull it away mid-fetch
        cache.build_locked(mirror_rel, lambda tmp: remote.git(["init", "-q", "--bare", str(tmp)]),
                           {"summary": remote.shown, "url": remote.shown})
        cache.touch(mirror_rel)
        commit, branch = _resolve(remote, mirror, version, status, listing)
    tree_rel = f"trees/{remote.key}/{commit}"

    def build(tmp: Path) -> None:
        with cache.lock(cache.lock_name(mirror_rel)):
            if not mirror.is_dir():
                raise UsageError(f"the cached mirror of {remote.shown} was removed while in use",
                                 hint="run again")
            remote.git(["clone", "-q", "--local", "--no-checkout", str(mirror), str(tmp)], what="git clone")
        # relative submodule URLs resolve against origin, as in a clone of the remote itself
        remote.git(["-C", str(tmp), "remote", "set-url", "origin", strip_credentials(remote.origin)])
        remote.git(["-C", str(tmp), "checkout", "-q", "--detach", commit], what=f"git checkout {commit[:12]}")
        if (tmp / ".gitmodules").is_file():
            remote.git(["-C", str(tmp), "submodule", "update", "-q", "--init", "--recursive"],
                       what="git submodule update")

    run_status = status or (lambda message: None)
    directory, created = cache.ensure(
        tree_rel, build, {"summary": f"{remote.shown} @ {commit[:12]}", "url": remote.shown, "commit": commit},
        on_wait=lambda: run_status(f"Waiting for another run checking out {commit[:12]}"))
    return GitCheckout(directory=directory, commit=commit, branch=branch, created=created)


def _have(remote: Remote, mirror: Path, rev: str) -> str | None:
    proc = remote.git(["-C", str(mirror), "rev-parse", "-q", "--verify", f"{rev}^{{commit}}"], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _ls_remote(remote: Remote) -> tuple[dict[str, str], str | None]:
    proc = remote.git(["ls-remote", "--symref", remote.clean], timeout=_timeout(), what="git ls-remote")
    refs: dict[str, str] = {}
    head = None
    for line in proc.stdout.splitlines():
        left, _, name = line.partition("\t")
        if left.startswith("ref: ") and name == "HEAD":
            head = left[5:]
            continue
        if name.endswith("^{}"):  # the commit an annotated tag points to
            refs[name[:-3]] = left
        else:
            refs.setdefault(name, left)
    return refs, head


def _fetch(remote: Remote, mirror: Path, refspecs: Sequence[str], status) -> subprocess.CompletedProcess:
    if status:
        status(f"Fetching {remote.shown}")
    return remote.git(["-C", str(mirror), "fetch", "-q", "--no-tags", remote.clean, *refspecs],
                      what="git fetch", check=False)


def _resolve(remote: Remote, mirror: Path, version: str | None, status: Callable[[str], object] | None,
             listing: tuple[dict[str, str], str | None] | None = None) -> tuple[str, str | None]:
    """``(commit, branch)`` for ``version``, fetching into the mirror only what it lacks."""
    if version and _HEX.match(version):
        have = _have(remote, mirror, version)
        if have and have.startswith(version.lower()):
            return have, None  # a commit the mirror holds: no network at all
    refs, head = listing or _ls_remote(remote)
    if version is None:
        if (head is None or head not in refs) and "HEAD" in refs:
            head = "HEAD"  # a detached HEAD: run that commit
        if head is None or head not in refs:
            if not refs:
                raise UsageError(f"git remote {remote.shown} has no branches", hint="push a commit to it first")
            raise UsageError(f"git remote {remote.shown} has no default branch",
                             hint="pick a branch with -v: " + _known(refs))
        wanted = [(head, refs[head], None)]
    else:
        candidates = [version] if version.startswith("refs/") or version == "HEAD" else \
            [f"refs/heads/{version}", f"refs/tags/{version}"]
        wanted = [(ref, refs[ref], version if ref.startswith("refs/heads/") else None)
                  for ref in candidates if ref in refs][:1]
    for ref, sha, branch in wanted:
        if not _have(remote, mirror, sha):
            proc = _fetch(remote, mirror, [f"+{ref}:{ref if ref.startswith('refs/') else 'refs/mlexec/' + ref}"],
                          status)
            if not _have(remote, mirror, sha):
                raise UsageError(f"git fetch {ref} failed for {remote.shown}: {remote.stderr(proc)}",
                                 hint=_hint(proc.stderr))
        return sha, branch
    assert version is not None
    if _HEX.match(version):
        # a commit no ref points to: ask for it by id (protocol v2 servers allow that),
        # else fetch every branch and tag, full history, and look again
        if len(version) == 40:
            _fetch(remote, mirror, [f"+{version}:refs/mlexec/{version.lower()}"], status)
            have = _have(remote, mirror, version)
            if have:
                return have, None
        _fetch(remote, mirror, ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"], status)
        have = _have(remote, mirror, version)
        if have and have.startswith(version.lower()):
            return have, None
    raise UsageError(f"version {version!r} is not a branch, tag or commit of {remote.shown}",
                     hint="-v takes a branch, a tag or a (short) commit id; " + _known(refs))


def _known(refs: Mapping[str, str]) -> str:
    branches = sorted(r[11:] for r in refs if r.startswith("refs/heads/"))
    tags = sorted(r[10:] for r in refs if r.startswith("refs/tags/"))

    def few(items: list[str]) -> str:
        return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "") if items else "none"

    return f"branches: {few(branches)}; tags: {few(tags)}"


def local_repository(directory: Path) -> tuple[Path, str] | None:
    """``(top level, path of directory inside it)`` when ``directory`` is in a git work tree."""
    try:
        proc = subprocess.run(["git", "-C", str(directory), "rev-parse", "--show-toplevel", "--show-prefix"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    lines = proc.stdout.splitlines()
    if not lines or not lines[0]:
        return None
    return Path(lines[0]), (lines[1] if len(lines) > 1 else "").strip("/")


def is_bare_repository(directory: Path) -> bool:
    if not (directory / "HEAD").is_file() or not (directory / "objects").is_dir():
        return False
    try:
        proc = subprocess.run(["git", "-C", str(directory), "rev-parse", "--is-bare-repository"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.stdout.strip() == "true"
