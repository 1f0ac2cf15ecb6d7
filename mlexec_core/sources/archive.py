"""Archive projects (``.zip``, ``.tar.gz``, ``.tgz``, ``.tar``), local or over http(s).

The archive is read (downloaded into the cache's ``.tmp/``) while its sha256 is
computed, and extracted once into ``archives/<sha256>``; later runs of the same
content reuse it.  Every entry is checked before anything is written: an
absolute path, a ``..`` component, a link leading outside the extraction
directory, a device or fifo refuses the whole archive, so nothing is ever
written outside (MLflow checks only ``..`` in zip names).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from mlexec_core.errors import UsageError
from mlexec_core.sources.cache import SourceCache
from mlexec_core.sources.urls import redact, scrub, secrets_of

TIMEOUT_VAR = "MLEXEC_HTTP_TIMEOUT"
_CHUNK = 1 << 20


def fetch_archive(location: str, cache: SourceCache, *, shown: str,
                  status: Callable[[str], object] | None = None) -> Path:
    """The extracted directory of the archive at ``location`` (a local path or an http(s) URL)."""
    remote = urlsplit(location).scheme in ("http", "https")
    with cache.temporary("download", directory=False) as download:
        if remote:
            if status:
                status(f"Downloading {redact(location)}")
            digest = _download(location, download)
            path = download
        else:
            path = Path(location)
            digest = _sha256(path)
        name = PurePosixPath(unquote(urlsplit(location).path) if remote else path.name).name

        def build(tmp: Path) -> None:
            if status:
                status(f"Extracting {name}")
            extract(path, tmp, shown=shown)

        directory, _ = cache.ensure(f"archives/{digest}", build,
                                    {"summary": f"{shown} (sha256 {digest[:12]})", "source": shown,
                                     "sha256": digest})
    return directory


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, target: Path) -> str:
    import urllib.error
    import urllib.request

    parts = urlsplit(url)
    secrets = secrets_of(url)
    headers = {"User-Agent": "mlexec"}
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        url = urlunsplit(parts._replace(netloc=host))
    try:
        timeout = float(os.environ.get(TIMEOUT_VAR) or 30)
    except ValueError:
        timeout = 30.0
    class SameHostAuth(urllib.request.HTTPRedirectHandler):
        """Follow redirects, but never send the credentials to another host."""

        def redirect_request(self, req, fp, code, msg, hdrs, newurl):
            new = super().redirect_request(req, fp, code, msg, hdrs, newurl)
            old, target = urlsplit(req.full_url), urlsplit(newurl)
            if new is not None and (old.scheme, old.hostname, old.port) != (target.scheme, target.hostname,
                                                                           target.port):
                new.remove_header("Authorization")
            return new

    opener = urllib.request.build_opener(SameHostAuth)
    digest = hashlib.sha256()
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as response, \
                open(target, "wb") as out:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise UsageError(f"cannot download {redact(url)}: HTTP {exc.code} {exc.reason}",
                         hint="check the URL (and credentials, for 401/403)") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(f"cannot download {redact(url)}: {scrub(str(reason), secrets)}",
                         hint="check the URL and that the server is reachable from here") from None
    return digest.hexdigest()


# -- checking and extracting -------------------------------------------------------------------


def _check_name(name: str, archive: str) -> PurePosixPath:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UsageError(f"archive {archive} is refused: entry {name!r} has an absolute path",
                         hint="an archive may only hold paths inside it; nothing was extracted")
    path = PurePosixPath(name.replace("\\", "/"))
    if ".." in path.parts:
        raise UsageError(f"archive {archive} is refused: entry {name!r} leads outside it (..)",
                         hint="an archive may only hold paths inside it; nothing was extracted")
    return path


def _check_link(name: PurePosixPath, target: str, archive: str, *, hard: bool) -> None:
    """A link must resolve inside the archive (lexically: every link is checked, so chains are too)."""
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        outside = True
    else:
        base = [] if hard else list(name.parent.parts)
        parts = base
        outside = False
        for part in PurePosixPath(target.replace("\\", "/")).parts:
            if part == "..":
                if not parts:
                    outside = True
                    break
                parts.pop()
            elif part != ".":
                parts.append(part)
    if outside:
        kind = "hard link" if hard else "symlink"
        raise UsageError(f"archive {archive} is refused: {kind} {str(name)!r} -> {target!r} points outside it",
                         hint="links in an archive must stay inside it; nothing was extracted")


def extract(path: Path, dest: Path, *, shown: str) -> None:
    """Check every entry of the archive at ``path``, then extract it into ``dest`` (an empty directory)."""
    lower = shown.split("#", 1)[0].lower()
    try:
        if lower.endswith(".zip") or (zipfile.is_zipfile(path) and not lower.endswith((".tar.gz", ".tgz", ".tar"))):
            _extract_zip(path, dest, shown)
        else:
            mode = "r:gz" if lower.endswith((".tar.gz", ".tgz")) else "r:" if lower.endswith(".tar") else "r:*"
            _extract_tar(path, dest, shown, mode)
    except UsageError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"archive {shown} is corrupt or not an archive: {detail}",
                         hint="download it again, or check that the file is a .zip / .tar.gz") from None


def _extract_tar(path: Path, dest: Path, shown: str, mode: str) -> None:
    with tarfile.open(path, mode) as tar:
        members = tar.getmembers()
        for member in members:
            name = _check_name(member.name, shown)
            if member.issym():
                _check_link(name, member.linkname, shown, hard=False)
            elif member.islnk():
                _check_link(name, member.linkname, shown, hard=True)
                _check_name(member.linkname, shown)
            elif not (member.isfile() or member.isdir()):
                raise UsageError(f"archive {shown} is refused: entry {member.name!r} is a device or fifo",
                                 hint="a project archive holds files, directories and links inside it")
        # links last, so no file is ever written through a link the archive made
        ordered = [m for m in members if not (m.issym() or m.islnk())] + [m for m in members if m.issym() or m.islnk()]
        for member in ordered:
            if hasattr(tarfile, "data_filter"):  # a second line of defence (Python >= 3.10.12)
                tar.extract(member, dest, filter="data")
            else:
                tar.extract(member, dest)
    _verify_inside(dest, shown)


def _extract_zip(path: Path, dest: Path, shown: str) -> None:
    root = dest.resolve()
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        links = []
        for info in infos:
            name = _check_name(info.filename, shown)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = archive.read(info).decode("utf-8", "surrogateescape")
                _check_link(name, target, shown, hard=False)
                links.append((name, target))
        bad = archive.testzip()
        if bad is not None:
            raise UsageError(f"archive {shown} is corrupt: entry {bad!r} fails its checksum",
                             hint="download it again")
        for info in infos:
            name = PurePosixPath(info.filename.replace("\\", "/"))
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode) or not name.parts:
                continue
            target = root.joinpath(*name.parts)
            if not target.resolve().is_relative_to(root):
                raise UsageError(f"archive {shown} is refused: entry {info.filename!r} leads outside it")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "xb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
            if mode & 0o111:
                target.chmod(0o755)
        for name, link_target in links:
            link = root.joinpath(*name.parts)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(link_target, link)
    _verify_inside(dest, shown)


def _verify_inside(dest: Path, shown: str) -> None:
    root = dest.resolve()
    for dirpath, dirs, files in os.walk(dest):
        for name in dirs + files:
            entry = Path(dirpath, name)
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                raise UsageError(f"archive {shown} is refused: {entry.relative_to(dest)} points outside it")


def project_root(directory: Path) -> Path:
    """An archive holding one top-level folder and no MLproject (a GitHub download) is that folder."""
    children = [c for c in directory.iterdir() if c.name not in ("__MACOSX",)]
    has_mlproject = any(c.name.lower() == "mlproject" for c in children)
    if not has_mlproject and len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        return children[0]
    return directory
