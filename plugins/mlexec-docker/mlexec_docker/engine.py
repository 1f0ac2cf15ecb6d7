"""A small Docker Engine API client on the standard library, for the run's hot path.

Starting a container whose image is already there takes a handful of Engine
API calls (ping, inspect, create, attach, start, wait, remove).  The ``docker``
SDK would make them just as well, but importing it (requests, urllib3) costs
most of a second here, which is more than everything else mlexec does on a
cached run.  So those calls go straight to the daemon's socket: over a unix
socket (the usual case) with the small HTTP/1.1 client below, which spares
importing ``http.client`` (email, ssl: about 20 ms) on every run; over TCP with
``http.client``.  The slow, rare operations (build, pull, push) use the SDK
(:mod:`mlexec_docker.images`).

The daemon is found as the ``docker`` CLI and the SDK find it: ``$DOCKER_HOST``
(``unix://`` or ``tcp://``; TLS from ``$DOCKER_TLS_VERIFY``/``$DOCKER_CERT_PATH``),
else ``unix:///var/run/docker.sock``.  Paths are unversioned, so the daemon
answers in its own API version (Debian 12's engine speaks 1.41).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any, Iterator, Mapping
from urllib.parse import quote, urlencode, urlparse

from mlexec_core.errors import EnvironmentBuildError

DEFAULT_HOST = "unix:///var/run/docker.sock"

START_HINT = (
    "start a Docker daemon: `sudo systemctl start docker` (or `sudo service docker start`); "
    "on a machine without systemd, `sudo dockerd >/tmp/dockerd.log 2>&1 &`. "
    "Or point DOCKER_HOST at a running daemon."
)


class EngineError(Exception):
    """The daemon answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class DaemonUnreachable(EnvironmentBuildError):
    """No Docker daemon answers at the configured address."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot reach the Docker daemon at {host}: {reason}", hint=START_HINT)


def docker_host(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("DOCKER_HOST") or DEFAULT_HOST


class _Response:
    """What the engine needs of ``http.client.HTTPResponse``: ``status``, ``getheader``, ``read``
    and ``read1``; the body is sized by Content-Length, chunked, or runs until the daemon closes
    the connection (an attached container's output)."""

    def __init__(self, stream: Any, method: str) -> None:
        self._stream = stream
        line = stream.readline(65537)
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ConnectionError(f"not an HTTP answer: {line[:80]!r}")
        self.status = int(parts[1])
        self._headers: dict[str, str] = {}
        while True:
            line = stream.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            self._headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.getheader("Transfer-Encoding", "").lower()
        self._left: int | None = None  # bytes left in the body (or in the current chunk)
        if self._chunked:
            self._left = 0
        elif method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200:
            self._left = 0
        elif self.getheader("Content-Length") is not None:
            self._left = int(self.getheader("Content-Length"))
        self._done = self._left == 0 and not self._chunked

    def getheader(self, name: str, default: Any = None) -> Any:
        return self._headers.get(name.lower(), default)

    def _next_chunk(self) -> bool:
        """Move to the next chunk of a chunked body; ``False`` at its end."""
        if self._left == 0 and not self._done:
            size = self._stream.readline(65537).split(b";", 1)[0].strip()
            self._left = int(size, 16) if size else 0
            if self._left == 0:
                while self._stream.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self._done = True
        return not self._done

    def _part(self, n: int, one: bool) -> bytes:
        if self._done:
            return b""
        if self._left is None:  # until the connection closes
            data = self._stream.read1(n) if one else self._stream.read(n)
            if not data:
                self._done = True
            return data
        if self._chunked and not self._next_chunk():
            return b""
        want = min(n, self._left)
        data = self._stream.read1(want) if one else self._stream.read(want)
        self._left -= len(data)
        if not data:
            self._done = True
        elif self._left == 0:
            if self._chunked:
                self._stream.readline(65537)  # the CRLF after a chunk
            else:
                self._done = True
        return data

    def read(self, n: int | None = None) -> bytes:
        out = []
        want = -1 if n is None else n
        while want != 0 and not self._done:
            data = self._part(65536 if want < 0 else want, one=False)
            if not data:
                break
            out.append(data)
            if want > 0:
                want -= len(data)
        return b"".join(out)

    def read1(self, n: int = 65536) -> bytes:
        while not self._done:
            data = self._part(n, one=True)
            if data or not self._chunked:
                return data
        return b""


class _UnixConnection:
    """One HTTP/1.1 exchange over the daemon's unix socket (``http.client.HTTPConnection``'s
    ``request``/``getresponse``/``close``)."""

    def __init__(self, path: str, timeout: float | None) -> None:
        self._path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._stream: Any = None
        self._method = "GET"

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> None:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self._method = method
        lines = [f"{method} {path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))

    def getresponse(self) -> _Response:
        assert self.sock is not None
        self._stream = self.sock.makefile("rb")
        return _Response(self._stream, self._method)

    def close(self) -> None:
        sock, stream, self.sock, self._stream = self.sock, self._stream, None, None
        for part in (stream, sock):
            if part is not None:
                try:
                    part.close()
                except OSError:
                    pass


class Engine:
    """The Engine API calls mlexec needs to run a container; one connection per call."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host or docker_host()
        parsed = urlparse(self.host)
        self._scheme = parsed.scheme
        if parsed.scheme == "unix":
            self._path = parsed.path or "/var/run/docker.sock"
        elif parsed.scheme in ("tcp", "http", "https"):
            self._netloc = parsed.netloc
        else:
            raise EnvironmentBuildError(
                f"DOCKER_HOST={self.host}: mlexec talks to unix:// and tcp:// daemons only",
                hint="use a unix socket or tcp:// address (for ssh, forward the socket: ssh -L)",
            )

    # -- plumbing ------------------------------------------------------------------------

    def _connection(self, timeout: float | None) -> Any:
        if self._scheme == "unix":
            return _UnixConnection(self._path, timeout)
        import http.client  # tcp:// only; a unix socket needs none of it

        tls = self._scheme == "https" or os.environ.get("DOCKER_TLS_VERIFY") not in (None, "", "0")
        if tls:
            import ssl

            certs = os.environ.get("DOCKER_CERT_PATH") or os.path.expanduser("~/.docker")
            ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))
            ctx.load_cert_chain(os.path.join(certs, "cert.pem"), os.path.join(certs, "key.pem"))
            return http.client.HTTPSConnection(self._netloc, timeout=timeout, context=ctx)
        return http.client.HTTPConnection(self._netloc, timeout=timeout)

    def _open(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None,
              timeout: float | None = 60.0) -> tuple[Any, Any]:
        if params:
            path = f"{path}?{urlencode({k: v for k, v in params.items() if v is not None})}"
        headers = {"Host": "docker"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection(timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            conn.close()
            raise DaemonUnreachable(self.host, exc.strerror or str(exc)) from None
        except TimeoutError:  # socket.timeout is TimeoutError
            conn.close()
            raise
        except OSError as exc:
            conn.close()
            raise DaemonUnreachable(self.host, str(exc)) from None
        if resp.status >= 400:
            raw = resp.read()
            conn.close()
            try:
                message = json.loads(raw).get("message", "")
            except ValueError:
                message = raw.decode(errors="replace")
            raise EngineError(resp.status, message.strip() or f"HTTP {resp.status}")
        return conn, resp

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        conn, resp = self._open(method, path, **kwargs)
        try:
            raw = resp.read()
        finally:
            conn.close()
        if "json" not in (resp.getheader("Content-Type") or "") or not raw.strip():
            return raw.decode(errors="replace")
        return json.loads(raw)

    # -- calls ---------------------------------------------------------------------------

    def ping(self, timeout: float = 5.0) -> None:
        """Raise :class:`DaemonUnreachable` unless the daemon answers."""
        try:
            self._call("GET", "/_ping", timeout=timeout)
        except TimeoutError:  # socket.timeout is TimeoutError
            raise DaemonUnreachable(self.host, f"no answer within {timeout:g} s") from None
        except EngineError as exc:
            raise DaemonUnreachable(self.host, exc.message) from None

    def cpus(self) -> int | None:
        """How many CPUs the daemon's machine has (``docker info``'s ``NCPU``); ``None`` if it does not say."""
        try:
            info = self._call("GET", "/info")
        except EngineError:
            return None
        ncpu = info.get("NCPU") if isinstance(info, dict) else None
        return ncpu if isinstance(ncpu, int) and ncpu > 0 else None

    def image(self, name: str) -> dict[str, Any] | None:
        """``docker image inspect``, or ``None`` when the image is not here."""
        try:
            return self._call("GET", f"/images/{quote(name, safe='')}/json")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise

    def tag(self, image: str, repo: str, tag: str) -> None:
        self._call("POST", f"/images/{quote(image, safe='')}/tag", params={"repo": repo, "tag": tag})

    def create(self, body: Mapping[str, Any], name: str | None = None) -> str:
        return self._call("POST", "/containers/create", params={"name": name}, body=dict(body))["Id"]

    def start(self, container: str) -> None:
        self._call("POST", f"/containers/{container}/start")

    def inspect(self, container: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", f"/containers/{container}/json")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise

    def wait(self, container: str, timeout: float | None = None) -> int | None:
        """The exit code once the container has stopped; ``None`` if ``timeout`` passes first."""
        try:
            result = self._call("POST", f"/containers/{container}/wait", timeout=timeout)
        except TimeoutError:  # socket.timeout is TimeoutError
            return None
        return int(result.get("StatusCode", 1))

    def kill(self, container: str, signal: str = "SIGKILL") -> bool:
        """Send ``signal``; ``False`` when the container is no longer running."""
        try:
            self._call("POST", f"/containers/{container}/kill", params={"signal": signal})
        except EngineError as exc:
            if exc.status in (404, 409):  # gone, or not running
                return False
            raise
        return True

    def remove(self, container: str) -> None:
        try:
            self._call("DELETE", f"/containers/{container}", params={"force": "1", "v": "1"}, timeout=120)
        except EngineError as exc:
            if exc.status not in (404, 409):  # 409: removal already in progress
                raise

    def containers(self, label: str) -> list[dict[str, Any]]:
        """Containers (running or not) carrying ``label`` (``key`` or ``key=value``)."""
        filters = json.dumps({"label": [label]})
        return self._call("GET", "/containers/json", params={"all": "1", "filters": filters})

    def images(self, label: str) -> list[dict[str, Any]]:
        filters = json.dumps({"label": [label]})
        return self._call("GET", "/images/json", params={"filters": filters})

    def remove_image(self, image: str) -> None:
        self._call("DELETE", f"/images/{quote(image, safe='')}", params={"force": "1"})

    def attach(self, container: str) -> tuple[Any, Any]:
        """Attach to the container's stdout and stderr; call before :meth:`start` to miss nothing.

        The daemon answers and then streams the container's output on the same
        connection until it exits (as ``docker run`` does; following the logs
        instead can lose the last lines of a container that is just exiting).
        """
        return self._open("POST", f"/containers/{container}/attach",
                          params={"stream": "1", "stdout": "1", "stderr": "1"}, timeout=None)

    def exec_create(self, container: str, body: Mapping[str, Any]) -> str:
        """``docker exec``'s first half: a process to start in the running ``container``; its id."""
        return self._call("POST", f"/containers/{container}/exec", body=dict(body))["Id"]

    def exec_start(self, exec_id: str, tty: bool = False) -> tuple[Any, Any]:
        """Start the process and stay attached: its output streams on the connection (as
        :meth:`attach`'s, read with :meth:`frames`) until it ends."""
        return self._open("POST", f"/exec/{exec_id}/start", body={"Detach": False, "Tty": tty}, timeout=None)

    def exec_detached(self, container: str, cmd: list[str]) -> None:
        """Run ``cmd`` in ``container`` without waiting for it (a ``kill`` for a rank)."""
        exec_id = self.exec_create(container, {"Cmd": cmd, "AttachStdout": False, "AttachStderr": False})
        self._call("POST", f"/exec/{exec_id}/start", body={"Detach": True, "Tty": False})

    def exec_inspect(self, exec_id: str) -> dict[str, Any] | None:
        """The process's state (``Running``, ``ExitCode``); ``None`` when its container is gone."""
        try:
            return self._call("GET", f"/exec/{exec_id}/json")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise

    @staticmethod
    def frames(resp: Any, tty: bool = False) -> Iterator[tuple[int, bytes]]:
        """The output of an attached container: ``(stream, bytes)``, 1 stdout, 2 stderr; ends when it exits.

        Without a TTY the daemon multiplexes both streams in frames with an
        8-byte header; with one it sends raw bytes.
        """
        while True:
            if tty:
                chunk = resp.read1(65536)
                if not chunk:
                    return
                yield 1, chunk
                continue
            header = resp.read(8)
            if len(header) < 8:
                return
            stream, size = struct.unpack(">BxxxL", header)
            payload = resp.read(size)
            if payload:
                yield stream, payload
            if len(payload) < size:
                return
