"""A run's output: what its job prints, shown live and kept with the run.

Every job's output goes through the :class:`RunOutput` of its run
(``run.output``, set by the core once the run exists).  It does three things
with each chunk, in the order the chunks arrive:

* shows it: by default on mlexec's own stdout or stderr, byte for byte (a
  sweep passes its own ``echo`` to feed a live view instead);
* keeps it in a log file, capped: the first quarter of the cap and the last
  three quarters are kept, with one line saying how much was left out between
  them.  When the run ends, the tracker stores that log as the run's artifact
  ``mlexec/output.log``;
* remembers the last lines, for live views and failure reports.

The cap is ``$MLEXEC_OUTPUT_CAP`` (bytes, or with a ``K``/``M``/``G`` suffix;
default 16M).  Backends call :meth:`RunOutput.write`; a process on this machine
can be pumped with :meth:`RunOutput.pump`.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
from pathlib import Path
from typing import BinaryIO, Callable

#: Where the log is stored among the run's artifacts.
ARTIFACT_PATH = "mlexec/output.log"
CAP_VAR = "MLEXEC_OUTPUT_CAP"
DEFAULT_CAP = 16 * 1024 * 1024
_LAST_LINES = 50

Echo = Callable[[bytes, str], None]


def output_cap(environ: dict[str, str] | os._Environ[str] | None = None) -> int:
    """The cap in bytes from ``$MLEXEC_OUTPUT_CAP``, or the default."""
    raw = (os.environ if environ is None else environ).get(CAP_VAR, "").strip().upper()
    if not raw:
        return DEFAULT_CAP
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(raw[-1], 1)
    try:
        value = int(float(raw[:-1] if scale > 1 else raw) * scale)
    except ValueError:
        return DEFAULT_CAP
    return max(value, 1024)


def echo_to_terminal(data: bytes, stream: str) -> None:
    """The default ``echo``: mlexec's own stdout (or stderr), byte for byte."""
    out = sys.stderr if stream == "stderr" else sys.stdout
    try:
        out.flush()
        out.buffer.write(data)
        out.buffer.flush()
    except (AttributeError, ValueError):  # a text stream without a buffer (captured in tests)
        try:
            out.write(data.decode(errors="replace"))
            out.flush()
        except (OSError, ValueError):
            pass
    except OSError:  # the terminal went away (EPIPE): the log still keeps it
        pass


def pump(pipe: BinaryIO, write: Echo, stream: str = "stdout",
         at_end: Callable[[], None] | None = None) -> threading.Thread:
    """Copy ``pipe`` to ``write(data, stream)`` until it ends, in a thread; return it (started).
    ``at_end`` is called once the pipe has ended (a partial line to flush), before it is closed."""

    def copy() -> None:
        fd = pipe.fileno()
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                write(data, stream)
        finally:
            if at_end is not None:
                at_end()
            try:
                pipe.close()
            except OSError:
                pass

    thread = threading.Thread(target=copy, name=f"mlexec-output-{stream}", daemon=True)
    thread.start()
    return thread


class RunOutput:
    """The output of one run.  Thread-safe: backends may write from several threads."""

    def __init__(self, echo: Echo | None = echo_to_terminal, cap_bytes: int | None = None,
                 directory: str | Path | None = None) -> None:
        self.echo = echo
        cap = output_cap() if cap_bytes is None else max(int(cap_bytes), 4)
        self._head_cap = cap // 4
        self._tail_cap = cap - self._head_cap
        self._directory = directory
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._head = 0
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._dropped = 0
        self._partial = b""
        self._lines: collections.deque[str] = collections.deque(maxlen=_LAST_LINES)
        self._closed = False
        self.bytes_written = 0

    # -- writing ------------------------------------------------------------------------

    def write(self, data: bytes, stream: str = "stdout") -> None:
        """Show ``data`` and keep it.  ``stream`` is ``"stdout"`` or ``"stderr"``."""
        if not data:
            return
        if isinstance(data, str):
            data = data.encode()
        with self._lock:
            if self.echo is not None:
                self.echo(data, stream)
            if self._closed:
                return
            self.bytes_written += len(data)
            self._remember_lines(data)
            self._keep(data)

    def pump(self, pipe: BinaryIO, stream: str = "stdout") -> threading.Thread:
        """Copy ``pipe`` into this output until it ends, in a thread; return it (started)."""
        return pump(pipe, self.write, stream)

    def _remember_lines(self, data: bytes) -> None:
        text = self._partial + data
        *complete, self._partial = text.split(b"\n")
        if len(self._partial) > 4096:  # a line without end (a progress bar): keep its end
            self._partial = self._partial[-4096:]
        for line in complete:
            self._lines.append(_printable(line))

    def _keep(self, data: bytes) -> None:
        if self._head < self._head_cap:
            part = data[: self._head_cap - self._head]
            self._open().write(part)
            self._head += len(part)
            data = data[len(part):]
            if not data:
                return
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail_size - len(self._tail[0]) >= self._tail_cap:
            dropped = self._tail.popleft()
            self._tail_size -= len(dropped)
            self._dropped += len(dropped)
        if self._tail_size > self._tail_cap:  # trim the oldest chunk to the cap
            extra = self._tail_size - self._tail_cap
            self._tail[0] = self._tail[0][extra:]
            self._tail_size -= extra
            self._dropped += extra

    def _open(self) -> BinaryIO:
        if self._file is None:
            directory = self._directory
            if directory is not None:
                os.makedirs(directory, exist_ok=True)
            fd, name = _make_unique(directory or temp_dir(), "mlexec-output-", ".log")
            self._file = os.fdopen(fd, "wb")
            self._path = Path(name)
        return self._file

    # -- reading ------------------------------------------------------------------------

    @property
    def last_line(self) -> str:
        """The last line printed (the line being written, when it has not ended yet)."""
        with self._lock:
            if self._partial.strip():
                return _printable(self._partial)
            return self._lines[-1] if self._lines else ""

    def tee(self, make: Callable[[Echo | None], Echo], replay: int = 50) -> Echo:
        """Replace ``echo`` by ``make(echo)`` between two writes, and give the new echo the last
        ``replay`` lines already printed first (with stream ``""``: not to be shown again).

        Whatever is written from then on reaches the new echo after those lines, in order: a
        follower (a live copy of the output) misses nothing printed before it was attached.
        ``make`` may return the echo it was given, to change nothing.
        """
        with self._lock:
            previous = self.echo
            self.echo = sink = make(previous)
            if sink is previous:  # nothing new to feed
                return sink
            lines = list(self._lines)[-replay:] if replay > 0 else []
            early = "".join(f"{line}\n" for line in lines)
            if self._partial:
                early += _printable(self._partial)
            if early:
                sink(early.encode(), "")
        return sink

    def tail(self, n: int = 10) -> list[str]:
        """The last ``n`` lines printed."""
        with self._lock:
            lines = list(self._lines)
            if self._partial.strip():
                lines.append(_printable(self._partial))
        return lines[-n:] if n > 0 else []

    @property
    def log_path(self) -> Path | None:
        """The log file: complete once :meth:`close` has returned; ``None`` if nothing was printed."""
        return self._path

    @property
    def truncated(self) -> int:
        """How many bytes the cap left out of the log."""
        return self._dropped

    def close(self) -> Path | None:
        """Write the kept tail and close the log; later writes are still shown, not kept."""
        with self._lock:
            if self._closed:
                return self._path
            self._closed = True
            if self._tail or self._dropped:
                f = self._open()
                if self._dropped:
                    f.write(f"\n[mlexec: {self._dropped} bytes of output left out here; "
                            f"the log keeps the first and last of it ({CAP_VAR})]\n".encode())
                for chunk in self._tail:
                    f.write(chunk)
                self._tail.clear()
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:
                    pass
            return self._path

    def discard(self) -> None:
        """Close, and remove the log file (once it is stored with the run)."""
        self.close()
        if self._path is not None:
            try:
                self._path.unlink()
            except OSError:
                pass


def temp_dir() -> str:
    """``tempfile.gettempdir()``'s choice ($TMPDIR, $TEMP, $TMP, /tmp, /var/tmp, /usr/tmp: the first
    writable folder) without importing tempfile (and shutil, random) on every run."""
    names = [os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")]
    for folder in [n for n in names if n] + ["/tmp", "/var/tmp", "/usr/tmp"]:
        if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            return os.path.abspath(folder)
    import tempfile

    return tempfile.gettempdir()


def _make_unique(directory: str | os.PathLike[str], prefix: str, suffix: str) -> tuple[int, str]:
    """``tempfile.mkstemp``: a new file only this user can read, opened for writing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        name = os.path.join(directory, f"{prefix}{os.urandom(6).hex()}{suffix}")
        try:
            return os.open(name, flags, 0o600), os.path.abspath(name)
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused file name in {directory}")


def _printable(line: bytes) -> str:
    text = line.decode("utf-8", errors="replace")
    if "\r" in text:  # a progress bar redraws the line: what shows is the last part
        text = [p for p in text.split("\r") if p.strip()][-1:] or [""]
        text = text[0]
    return text.rstrip()
