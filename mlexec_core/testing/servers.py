"""Real git servers and archive servers on loopback, for the source tests and
``benchmarks/bench_sources.py`` (never imported at run time).

* :func:`git_daemon`: ``git daemon --export-all`` on 127.0.0.1;
* :class:`SmartHTTP`: git's smart HTTP protocol, ``git http-backend`` run as a
  CGI program behind a small threaded HTTP server, with optional Basic auth and
  a count of the requests it answered;
* :class:`FileServer`: plain files (archives) over HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

from mlexec_core.testing import free_port  # noqa: F401  (re-exported for the source tests)
from mlexec_core.testing import stop_process

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **GIT_IDENTITY, "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "protocol.file.allow",
           "GIT_CONFIG_VALUE_0": "always"}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()



def _wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@contextlib.contextmanager
def git_daemon(base: Path) -> Iterator[str]:
    """Serve every repository under ``base``; yields ``git://127.0.0.1:PORT``."""
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--export-all", f"--base-path={base}", f"--port={port}", "--listen=127.0.0.1",
         "--reuseaddr", "--informative-errors", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_port(port, proc)
        yield f"git://127.0.0.1:{port}"
    finally:
        stop_process(proc)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _Base(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args) -> None:  # quiet
        pass

    def authorized(self) -> bool:
        auth = self.server.auth  # type: ignore[attr-defined]
        if auth is None:
            return True
        expected = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        if self.headers.get("Authorization") == expected:
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False


class _GitHandler(_Base):
    def do_GET(self) -> None:
        self.cgi()

    def do_POST(self) -> None:
        self.cgi()

    def cgi(self) -> None:
        self.server.requests.append((self.command, self.path))  # type: ignore[attr-defined]
        if not self.authorized():
            return
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.root),  # type: ignore[attr-defined]
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1", "REMOTE_USER": "test", "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.0",
        }
        for header in ("Content-Encoding", "Git-Protocol"):
            if self.headers.get(header):
                env["HTTP_" + header.upper().replace("-", "_")] = self.headers[header]
        proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _FileHandler(_Base):
    def do_GET(self) -> None:
        self.server.requests.append((self.command, self.path))  # type: ignore[attr-defined]
        if not self.authorized():
            return
        path = Path(self.server.root, self.path.lstrip("/").split("?")[0])  # type: ignore[attr-defined]
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Serving:
    handler: type

    def __init__(self, root: Path, auth: tuple[str, str] | None = None) -> None:
        self.server = _Server(("127.0.0.1", 0), self.handler)
        self.server.root = root  # type: ignore[attr-defined]
        self.server.auth = auth  # type: ignore[attr-defined]
        self.server.requests = []  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self.server.requests  # type: ignore[attr-defined]

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmartHTTP(_Serving):
    """``git http-backend`` over HTTP for the repositories under ``root``."""

    handler = _GitHandler


class FileServer(_Serving):
    """Files under ``root`` over HTTP."""

    handler = _FileHandler


def has_git() -> bool:
    return shutil.which("git") is not None
