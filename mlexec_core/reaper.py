"""The reaper: stops a dead mlexec's jobs, however mlexec died (``kill -9`` included).

One small process per mlexec process, started on the first job mlexec
launches on this machine.  It holds the read end of a pipe whose write end
only mlexec holds (it is not inherited by jobs), and mlexec tells it, one line
at a time, which process groups and containers it supervises:

* ``+pg PGID`` / ``-pg PGID``: a job's process group started / ended;
* ``+ctr ID`` / ``-ctr ID``: a docker container created / removed;
* ``+cmd KEY ARG<TAB>ARG...`` / ``-cmd KEY``: a command to run if mlexec dies (a
  remote job's cancel, such as ``scancel 1234``), registered / no longer needed.

When the pipe reaches end of file, mlexec is gone.  The reaper then sends
SIGTERM to every group still registered and ``docker stop``s the containers,
waits up to the stop timeout (``$MLEXEC_STOP_TIMEOUT`` when it started),
sends SIGKILL to what is left, removes the containers (``docker rm -f``), runs
the registered commands (all at once, each given 30 s) and exits.  When mlexec ended its jobs itself (the normal case), nothing is
registered any more and the reaper just exits.

A pipe, not ``PR_SET_PDEATHSIG``: that signal fires when the *thread* that
started a job ends, which is wrong for jobs started from worker threads (sweeps).

This file runs as a script under ``python -S`` (no site, no mlexec import):
the part below ``# -- the reaper process`` uses nothing beyond os, signal, sys
and time, and starts in a few milliseconds.
"""

import os
import signal
import sys
import time

# -- in mlexec: telling the reaper ----------------------------------------------------------

_state = {"fd": None, "pid": None, "owner": None}


def _lock():
    import threading

    lock = _state.get("lock")
    if lock is None:
        lock = _state.setdefault("lock", threading.Lock())
    return lock


def _start() -> int:
    from mlexec_core.pipeline.stopping import stop_timeout

    read, write = os.pipe()  # both ends non-inheritable: no job ever holds the write end
    low = []
    while read < 3:  # stdin, stdout or stderr was closed: keep the read end clear of them
        low.append(read)
        read = os.dup(read)
    for fd in low:
        os.close(fd)
    try:
        # posix_spawn (a vfork underneath) rather than subprocess: it does not copy mlexec's
        # memory map, and mlexec does not wait for a helper process to report back.
        pid = os.posix_spawn(
            sys.executable, [sys.executable, "-S", os.path.abspath(__file__), str(stop_timeout())], os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, read, 0),
                          (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                          (os.POSIX_SPAWN_DUP2, 1, 2)],
            setsid=True,
        )
    except OSError:
        os.close(write)
        raise
    finally:
        os.close(read)
    _state.update(fd=write, pid=pid, owner=os.getpid())
    return write


def _send(line: str) -> None:
    """Tell the reaper ``line``; a reaper that cannot start or went away is started again."""
    with _lock():
        for _ in range(2):
            fd = _state["fd"]
            if fd is None or _state["owner"] != os.getpid():  # a forked child is not the reaper's mlexec
                try:
                    fd = _start()
                except OSError:
                    return
            try:
                os.write(fd, (line + "\n").encode())
                return
            except OSError:  # the reaper died (killed by hand): start another
                _state["fd"] = None


def watch_group(pgid: int) -> None:
    """Stop process group ``pgid`` if this process dies before :func:`forget_group`."""
    _send(f"+pg {int(pgid)}")


def forget_group(pgid: int) -> None:
    _send(f"-pg {int(pgid)}")


def watch_container(container: str) -> None:
    """Stop and remove docker container ``container`` if this process dies before :func:`forget_container`."""
    if container and container.replace("-", "").replace("_", "").replace(".", "").isalnum():
        _send(f"+ctr {container}")


def forget_container(container: str) -> None:
    if container:
        _send(f"-ctr {container}")


def watch_command(key: str, argv) -> None:
    """Run ``argv`` (a list: ``["scancel", job_id]``) if this process dies before
    :func:`forget_command` of the same ``key``; registering a key again replaces its command.

    For jobs that live elsewhere (a batch scheduler, a cluster): the command is how they
    are cancelled when no mlexec is left to do it. ``argv[0]`` is looked up on ``PATH``; no
    shell runs it. Neither ``key`` nor an argument may hold a tab or a line break, and
    ``key`` no space (``ValueError``).
    """
    argv = [str(a) for a in argv]
    key = str(key)
    if not argv or not key or any(c in key for c in " \t\r\n") or any(
            c in a for a in argv for c in "\t\r\n"):
        raise ValueError(f"reaper.watch_command: unusable key or command {key!r} {argv!r}")
    _send(f"+cmd {key} " + "\t".join(argv))


def forget_command(key: str) -> None:
    if key:
        _send(f"-cmd {key}")


def reaper_pid() -> int | None:
    """The reaper's process id, once started (for tests)."""
    return _state["pid"] if _state["owner"] == os.getpid() else None


# -- the reaper process ------------------------------------------------------------------------


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _spawn(args: list) -> int | None:
    try:
        return os.posix_spawnp(args[0], args, dict(os.environ))
    except OSError:
        return None


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _reap(groups: set, containers: set, timeout: float, commands: dict | None = None) -> None:
    runners = [pid for pid in (_spawn(argv) for argv in (commands or {}).values()) if pid]
    stoppers = []
    for pgid in groups:
        _signal(pgid, signal.SIGTERM)
    for container in containers:
        pid = _spawn(["docker", "stop", "-t", str(int(timeout)), container])
        if pid:
            stoppers.append(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(g) for g in groups):
        time.sleep(0.1)
    for pgid in groups:
        if _alive(pgid):
            _signal(pgid, signal.SIGKILL)
    # `docker stop` ends by itself after its own timeout; wait for it (bounded), then remove.
    _wait_children(stoppers, timeout + 10)
    _wait_children([pid for pid in (_spawn(["docker", "rm", "-f", c]) for c in containers) if pid], 30)
    _wait_children(runners, 30)


def _wait_children(children: list, seconds: float) -> None:
    """Wait (up to ``seconds``) for the helper processes ``children`` to exit."""
    until = time.monotonic() + seconds
    while children and time.monotonic() < until:
        for pid in list(children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                children.remove(pid)
        time.sleep(0.1)


def main(argv: list) -> None:
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    try:
        timeout = max(0.0, float(argv[1])) if len(argv) > 1 else 10.0
    except ValueError:
        timeout = 10.0
    groups, containers, commands = set(), set(), {}
    pending = b""
    while True:
        try:
            data = os.read(0, 4096)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            break
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            op, _, arg = line.decode("utf-8", "replace").strip().partition(" ")
            if op in ("+pg", "-pg") and arg.isdigit() and int(arg) > 1:
                (groups.add if op == "+pg" else groups.discard)(int(arg))
            elif op in ("+ctr", "-ctr") and arg:
                (containers.add if op == "+ctr" else containers.discard)(arg)
            elif op == "+cmd" and " " in arg:
                key, _, command = arg.partition(" ")
                commands[key] = command.split("\t")
            elif op == "-cmd":
                commands.pop(arg, None)
    if groups or containers or commands:
        _reap(groups, containers, timeout, commands)
    _reap_children()


if __name__ == "__main__":
    main(sys.argv)
