"""Archive project URIs: .zip / .tar.gz, local and over HTTP; malicious and corrupt archives refused."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import uuid
import zipfile
from pathlib import Path

import pytest

from mlexec_core.errors import UsageError
from mlexec_core.testing.servers import FileServer
from mlexec_core.sources.archive import extract
from mlexec_core.testing import assert_no_traceback

MLPROJECT = """\
name: packed
entry_points:
  main:
    command: 'cat DATA > "$OUT"'
"""
FILES = {
    "MLproject": MLPROJECT,
    "DATA": "root-data\n",
    "models/v1.2/MLproject": MLPROJECT,
    "models/v1.2/DATA": "inner-data\n",
    "run.sh": "#!/bin/sh\necho hi\n",
}


def make_zip(path: Path, files: dict[str, str], prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            info = zipfile.ZipInfo(prefix + name)
            info.external_attr = (0o100755 if name.endswith(".sh") else 0o100644) << 16
            zf.writestr(info, text)
    return path


def make_tar(path: Path, files: dict[str, str], prefix: str = "", extra=()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.fixture
def env(tmp_path):
    (tmp_path / "tmpdir").mkdir()
    return {"MLEXEC_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmpdir"),
            "OUT": str(tmp_path / "out.txt")}


def snapshot(root: Path) -> set[str]:
    """Every path under ``root``, except the store and the cache's lock files."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if ".locks" not in p.parts and "store" not in p.parts and p.name != "out.txt"}


def error_lines(proc) -> int:
    return sum(line.startswith("error:") for line in proc.stderr.splitlines())


def no_temp_left(tmp_path) -> None:
    assert list((tmp_path / "tmpdir").iterdir()) == []
    tmp = tmp_path / "cache" / ".tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_local_zip_with_subdirectory_and_top_folder(mlexec, store, env, tmp_path):
    archive = make_zip(tmp_path / "proj.zip", FILES, prefix="proj-main/")  # as a GitHub download
    mlexec("run", "proj.zip", "--env-manager", "local", env=env, check=0)
    assert (tmp_path / "out.txt").read_text() == "root-data\n"
    proc = mlexec("run", f"{archive.as_uri()}#models/v1.2", "--env-manager", "local", env=env, check=0)
    assert_no_traceback(proc)
    assert (tmp_path / "out.txt").read_text() == "inner-data\n"
    runs = store.runs()
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 2
    names = sorted(r.data.tags["mlflow.source.name"] for r in runs)
    assert names == sorted(["proj.zip", f"{archive.as_uri()}#models/v1.2"])
    (extracted,) = (tmp_path / "cache" / "archives").glob("*/")
    assert os.access(extracted / "proj-main" / "run.sh", os.X_OK)  # modes kept
    no_temp_left(tmp_path)


def test_tar_gz_over_http_with_password(mlexec, store, env, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    make_tar(served / "proj.tar.gz", FILES)
    with FileServer(served, auth=("bob", "hunter2-pw")) as server:
        uri = f"http://bob:hunter2-pw@127.0.0.1:{server.port}/proj.tar.gz#models/v1.2"
        proc = mlexec("run", uri, "--env-manager", "local", env=env, check=0)
        assert (tmp_path / "out.txt").read_text() == "inner-data\n"
        missing = mlexec("run", uri.replace("proj.tar", "nope.tar"), "--env-manager", "local", env=env)
    assert "hunter2" not in proc.stderr + proc.stdout + missing.stderr
    assert missing.returncode == 2 and "HTTP 404" in missing.stderr
    run = store.only_run()
    assert run.data.tags["mlflow.source.name"] == f"http://127.0.0.1:{server.port}/proj.tar.gz#models/v1.2"
    no_temp_left(tmp_path)


def test_credentials_do_not_follow_a_redirect_to_another_host(mlexec, store, env, tmp_path):
    """urllib copies headers onto redirects; the password must not reach the other host."""
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    make_tar(served / "proj.tar.gz", FILES)
    seen = []

    class Other(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            super().do_GET()

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)

    class Redirect(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{other.server_port}/proj.tar.gz")
            self.send_header("Content-Length", "0")
            self.end_headers()

    first = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    for server in (other, first):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://alice:S3CRET-pw@127.0.0.1:{first.server_port}/proj.tar.gz#models/v1.2"
        proc = mlexec("run", uri, "--env-manager", "local", env=env, check=0)
    finally:
        first.shutdown()
        other.shutdown()
    assert seen == [None]  # the second host got the file, and no Authorization header
    assert "S3CRET" not in proc.stdout + proc.stderr
    assert "S3CRET" not in str(store.only_run().data.tags)


def test_presigned_query_is_not_recorded(mlexec, store, env, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    make_tar(served / "proj.tar.gz", FILES)
    with FileServer(served) as server:
        uri = f"http://127.0.0.1:{server.port}/proj.tar.gz?X-Amz-Signature=SECRETSIG#models/v1.2"
        proc = mlexec("run", uri, "--env-manager", "local", env=env, check=0)
    assert "SECRETSIG" not in proc.stdout + proc.stderr
    assert store.only_run().data.tags["mlflow.source.name"] == (
        f"http://127.0.0.1:{server.port}/proj.tar.gz#models/v1.2")


def _member(name, kind, link=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize("case", [
    "zip-dotdot", "zip-absolute", "zip-symlink-out", "tar-dotdot", "tar-absolute", "tar-symlink-out",
    "tar-symlink-absolute", "tar-symlink-then-write-through", "tar-hardlink-out", "tar-device",
])
def test_malicious_archives_are_refused_and_write_nothing_outside(mlexec, store, env, tmp_path, case):
    victim = f"/tmp/mlexec-victim-{uuid.uuid4().hex}"
    path = tmp_path / ("evil.zip" if case.startswith("zip") else "evil.tar.gz")
    if case.startswith("zip"):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("MLproject", MLPROJECT)
            if case == "zip-dotdot":
                zf.writestr("../../escaped.txt", "x")
            elif case == "zip-absolute":
                zf.writestr(victim, "x")
            else:
                info = zipfile.ZipInfo("link")
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, "../../..")
    else:
        extra = {
            "tar-dotdot": [(_member("../../escaped.txt", tarfile.REGTYPE), b"")],
            "tar-absolute": [(_member(victim, tarfile.REGTYPE), b"")],
            "tar-symlink-out": [(_member("sub/link", tarfile.SYMTYPE, "../../outside"), None)],
            "tar-symlink-absolute": [(_member("link", tarfile.SYMTYPE, "/tmp"), None)],
            "tar-symlink-then-write-through": [(_member("link", tarfile.SYMTYPE, ".."), None),
                                               (_member("link/escaped.txt", tarfile.REGTYPE), b"")],
            "tar-hardlink-out": [(_member("hard", tarfile.LNKTYPE, "../../../etc/passwd"), None)],
            "tar-device": [(_member("dev", tarfile.CHRTYPE), None)],
        }[case]
        make_tar(path, {"MLproject": MLPROJECT}, extra=extra)
    before = snapshot(tmp_path)
    proc = mlexec("run", path.name, "--env-manager", "local", env=env)
    assert proc.returncode == 2, proc.stderr
    assert_no_traceback(proc)
    assert error_lines(proc) == 1 and "is refused" in proc.stderr, proc.stderr
    assert store.runs() == []
    assert not Path(victim).exists()
    assert snapshot(tmp_path) - before <= {"cache", "cache/.tmp"}  # nothing written anywhere, not even in the cache
    no_temp_left(tmp_path)


def test_symlinks_inside_the_archive_are_kept(tmp_path):
    path = make_tar(tmp_path / "ok.tar.gz", {"MLproject": MLPROJECT, "data/real.txt": "x"},
                    extra=[(_member("alias.txt", tarfile.SYMTYPE, "data/real.txt"), None),
                           (_member("data/up", tarfile.SYMTYPE, "../data"), None)])
    dest = tmp_path / "dest"
    dest.mkdir()
    extract(path, dest, shown="ok.tar.gz")
    assert (dest / "alias.txt").read_text() == "x" and (dest / "data" / "up").is_symlink()


@pytest.mark.parametrize("name", ["broken.zip", "broken.tar.gz", "empty.tgz"])
def test_corrupt_archive_is_one_error(mlexec, store, env, tmp_path, name):
    path = tmp_path / name
    if name == "broken.zip":
        data = make_zip(tmp_path / "good.zip", FILES).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif name == "broken.tar.gz":
        path.write_bytes(b"\x1f\x8b\x08\x00not really gzip" * 10)
    else:
        path.write_bytes(b"")
    proc = mlexec("run", name, "--env-manager", "local", env=env)
    assert proc.returncode == 2, proc.stderr
    assert_no_traceback(proc)
    assert error_lines(proc) == 1 and "corrupt" in proc.stderr, proc.stderr
    assert store.runs() == []
    assert not (tmp_path / "cache" / "archives").exists() or not list((tmp_path / "cache" / "archives").iterdir())
    no_temp_left(tmp_path)


def test_version_with_an_archive_is_refused(tmp_path):
    from mlexec_core.pipeline.source import fetch

    make_zip(tmp_path / "p.zip", FILES)
    with pytest.raises(UsageError, match="needs a git project"):
        fetch("p.zip", "v1", tmp_path)
