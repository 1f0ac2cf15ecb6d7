"""pytest fixtures for mlexec and its plugins: the real CLI, real MLflow sqlite stores.

Use from a plugin's tests with ``pytest_plugins = ["mlexec_core.testing"]`` in its
conftest.py; helpers (``make_project``, ``assert_no_traceback``, ``MLEXEC``,
``Background``, ``assert_processes_gone``, ``build_wheel``) import from here, and the contract
tests every backend and environment manager should pass from
:mod:`mlexec_core.testing.conformance`.  Test modules must have names unique
across the repository (``test_<plugin>_*.py``), since all suites run in one
pytest session.

Fixtures (docs/plugins.md, "Testing a plugin", says the same):

* ``store``: a :class:`Store`, a fresh MLflow sqlite store in ``tmp_path/store``;
  the Default experiment keeps its artifacts in ``tmp_path/store/artifacts``.
* ``cli_env``: the environment for the CLI (a dict): this process's, less every
  ``MLFLOW_*`` and ``MLEXEC_*`` variable and ``NO_COLOR``, plus
  ``MLFLOW_TRACKING_URI`` (the store), ``MLEXEC_STOP_TIMEOUT=5``, ``PYTHONPATH``
  with the repository root first, and ``XDG_CACHE_HOME`` and ``TMPDIR`` in the test's
  folder (``tmp_path/.cache``, ``tmp_path/.tmp``), so nothing lands in ``~/.cache`` or ``/tmp``.
* ``mlexec``: runs the CLI to the end, returns a ``subprocess.CompletedProcess``.
* ``mlexec_background``: starts the CLI and returns a :class:`Background` at once.
* ``project``: writes a project under ``tmp_path`` and returns its folder.

A test whose infrastructure is missing (a Docker engine, a Slurm cluster ...)
calls :func:`missing_infrastructure` (from :mod:`mlexec_core.testing.infrastructure`):
it skips, or fails under ``$CI``, and the end of the run names each missing piece,
how many tests skipped for it and how to get it.

Creating an MLflow sqlite store runs MLflow's migrations, which takes seconds;
one template store is made per test session (by MLflow itself) and each test
gets its own copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlexec_core.procfs import exists, stat_fields
from mlexec_core.testing.infrastructure import MissingInfrastructure, missing_infrastructure  # noqa: F401

#: The closing summary of missing infrastructure (pytest hooks).
pytest_plugins = ["mlexec_core.testing.infrastructure"]

#: The repository root (for examples); mlexec_core lives directly below it.
ROOT = Path(__file__).resolve().parents[2]
MLEXEC = [sys.executable, "-m", "mlexec_core"]


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home(tmp_path_factory):
    """``XDG_CACHE_HOME`` in a session folder for this process, so that what runs in
    the test process (``mlexec_core.run``, a CLI started with ``os.environ``) keeps its
    caches (the YAML parse cache) out of the machine's ``~/.cache``.  ``cli_env`` gives
    each test its own."""
    old = os.environ.get("XDG_CACHE_HOME")
    old_uv = os.environ.get("UV_CACHE_DIR")
    os.environ["UV_CACHE_DIR"] = uv_download_cache()
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    for name, value in (("XDG_CACHE_HOME", old), ("UV_CACHE_DIR", old_uv)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def uv_download_cache() -> str:
    """uv's own download cache as it was before the tests moved ``XDG_CACHE_HOME``:
    ``$UV_CACHE_DIR``, else ``$XDG_CACHE_HOME/uv``, else ``~/.cache/uv``.  The tests keep
    sharing it (it is content-addressed and safe under concurrency), so moving mlexec's
    caches into each test's folder does not make every virtualenv test download its
    packages again."""
    return os.environ.get("UV_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "uv")


@pytest.fixture(scope="session")
def mlflow_client_cls():
    from mlflow.tracking import MlflowClient

    return MlflowClient


@pytest.fixture(scope="session")
def template_db(tmp_path_factory, mlflow_client_cls):
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    client = mlflow_client_cls(f"sqlite:///{path}")
    client.search_experiments()  # creates the tables and the Default experiment
    return path


class Store:
    """A real MLflow sqlite store, read back through MlflowClient.

    ``path`` (the file), ``uri`` (``sqlite:///...``), ``artifact_root`` (the Default
    experiment's artifacts), ``client`` (an ``MlflowClient``), ``runs()`` (every
    run of every experiment) and ``only_run()`` (asserts there is exactly one).
    """

    artifact_root: Path

    def __init__(self, path: Path, client_cls) -> None:
        self.path = path
        self.uri = f"sqlite:///{path}"
        self.artifact_root = path.parent / "artifacts"
        self._client_cls = client_cls
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = self._client_cls(self.uri)
        return self._client

    def runs(self):
        exps = [e.experiment_id for e in self.client.search_experiments()]
        return self.client.search_runs(exps) if exps else []

    def only_run(self):
        runs = self.runs()
        assert len(runs) == 1, f"expected one run, found {len(runs)}"
        return runs[0]


@pytest.fixture
def store(tmp_path, template_db, mlflow_client_cls) -> Store:
    """A fresh MLflow sqlite store in ``tmp_path/store``; artifacts of the Default
    experiment go to ``tmp_path/store/artifacts/0`` (not ``./mlruns`` of pytest's
    working directory, where the template was made)."""
    import sqlite3

    path = tmp_path / "store" / "mlflow.db"
    path.parent.mkdir()
    shutil.copy(template_db, path)
    artifacts = path.parent / "artifacts"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(artifacts / "0"),))
    store = Store(path, mlflow_client_cls)
    store.artifact_root = artifacts
    return store


@pytest.fixture
def cli_env(store, tmp_path):
    """The CLI's environment: this process's, less ``MLFLOW_*``, ``MLEXEC_*`` and
    ``NO_COLOR``; plus ``MLFLOW_TRACKING_URI`` (``store``), ``MLEXEC_STOP_TIMEOUT=5``,
    ``PYTHONPATH`` with the repository root first, ``XDG_CACHE_HOME`` (``tmp_path/.cache``),
    ``XDG_STATE_HOME`` (``tmp_path/.state``: the local backend's leases of GPUs and cores are
    the test's own) and ``TMPDIR`` (``tmp_path/.tmp``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLEXEC_"))}
    env["MLFLOW_TRACKING_URI"] = store.uri
    env["MLEXEC_STOP_TIMEOUT"] = "5"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("NO_COLOR", None)
    # Caches (the YAML parse cache, environments, sources) and temporary files stay
    # in the test's own folder, never in ~/.cache or /tmp of the machine.
    for var, name in (("XDG_CACHE_HOME", ".cache"), ("XDG_STATE_HOME", ".state"), ("TMPDIR", ".tmp")):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        env[var] = str(folder)
    return env


@pytest.fixture
def mlexec(cli_env, tmp_path):
    """Run the real CLI: ``mlexec("run", ".", cwd=...)``."""

    def run(*args, cwd=None, env=None, timeout=120, check=None):
        proc = subprocess.run(
            [*MLEXEC, *map(str, args)],
            cwd=cwd or tmp_path,
            env={**cli_env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check is not None:
            assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        return proc

    return run


class Background:
    """``mlexec`` running in the background, its output collected in files.

    ``wait_for(text)`` blocks until ``text`` is in its stdout or stderr (and fails
    the test if it exits first or the timeout passes), ``signal(signum)`` signals
    it (only mlexec: the job is in its own session, as under a terminal, where
    Ctrl-C reaches mlexec alone), ``finish()`` waits for it to exit and returns a
    ``subprocess.CompletedProcess`` with ``returncode``, ``stdout`` and ``stderr``.
    """

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str], logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.stdout_path = logs / "stdout"
        self.stderr_path = logs / "stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        import time

        deadline = time.monotonic() + timeout
        while text not in self.stdout and text not in self.stderr:
            if self.proc.poll() is not None:
                pytest.fail(f"mlexec exited ({self.proc.returncode}) before printing {text!r}\n"
                            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"mlexec did not print {text!r} within {timeout} s\n"
                            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 60) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"mlexec did not exit within {timeout} s\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}")
        return subprocess.CompletedProcess(self.args, self.proc.returncode, self.stdout, self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def mlexec_background(cli_env, tmp_path):
    """Start the real CLI in the background: ``bg = mlexec_background("run", ".", cwd=...)``;
    see :class:`Background`.  Whatever is still running at the end of the test is killed."""
    started: list[Background] = []

    def start(*args, cwd=None, env=None) -> Background:
        bg = Background([*MLEXEC, *map(str, args)], cwd=cwd or tmp_path, env={**cli_env, **(env or {})},
                        logs=tmp_path / "background" / str(len(started)))
        started.append(bg)
        return bg

    yield start
    for bg in started:
        bg.kill()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        fields = stat_fields(pid)
    except OSError:  # not readable: ask the kernel
        return exists(pid)
    if fields is None:
        return False
    return fields[:1] != [b"Z"]


def assert_processes_gone(pids, timeout: float = 10) -> None:
    """Fail unless every process in ``pids`` is gone (or a zombie) within ``timeout`` s;
    what is left is killed first, so one failure does not leak into the next test."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    left = [p for p in pids if process_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if process_alive(p)]
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running after mlexec exited: {left}"


def wait_until(predicate, timeout: float, what, interval: float = 0.1):
    """Call ``predicate()`` until it returns something true, and return that; fail
    with ``timed out waiting for <what>`` after ``timeout`` seconds.

    ``what`` is a string, or a callable returning one that is called only on failure
    (``lambda: f"3 pid files; mlexec said: {proc.stderr.read()}"``), so a message can
    carry what was learnt at that moment, such as the stderr of a child that exited."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


#: What a Registration record says, and so what a registered class must not say again
#: (mlexec reads only the record; an attribute left on the class is silently ignored).
RECORD_ATTRIBUTES = ("name", "aliases", "handles", "default_for", "priority", "description",
                     "detachable", "fan_out", "command_as_argument", "adaptive", "needs_trials")


def leftover_metadata(plugins, kind: str, name: str) -> list[str]:
    """The class registered as ``name`` still sets metadata that belongs in its
    :class:`~mlexec_core.plugin.Registration` (``name``, ``handles``, ``detachable`` ...,
    as class attributes); ``[]`` when the record is the only place it is written."""
    cls = plugins.load(kind, name)
    from mlexec_core.plugin import interfaces

    bases = {interfaces.Registered, object}
    own = lambda attr: any(attr in vars(c) for c in cls.__mro__ if c not in bases  # noqa: E731
                           and c.__module__ not in ("abc",) and not _is_interface(c))
    return [f"{cls.__name__}.{attr} = {getattr(cls, attr)!r}: it belongs in the Registration record"
            for attr in RECORD_ATTRIBUTES if own(attr)]


def _is_interface(cls: type) -> bool:
    return cls.__module__ in ("mlexec_core.plugin.interfaces", "mlexec_core.sweeps.strategy") \
        and cls.__name__ in ("EnvironmentManager", "Backend", "ImageBuilder", "SearchStrategy")


def make_project(root: Path, mlproject: str | None = None, files: dict[str, str] | None = None,
                 name: str = "MLproject") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if mlproject is not None:
        (root / name).write_text(textwrap.dedent(mlproject))
    for rel, text in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def project(tmp_path):
    def make(mlproject=None, files=None, name="MLproject", where="proj"):
        return make_project(tmp_path / where, mlproject, files, name)

    return make


def assert_no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


def build_wheel(dest: Path, name: str, version: str, files: dict[str, str],
                entry_points: str | None = None) -> Path:
    """A pure-Python wheel ``<name>-<version>-py3-none-any.whl`` in ``dest`` holding ``files``
    (path in the wheel: text), with its METADATA, WHEEL and RECORD (and ``entry_points.txt``)."""
    import base64
    import hashlib
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    if entry_points is not None:
        files[f"{info}/entry_points.txt"] = entry_points
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w") as wheel:
        for rel, text in files.items():
            data = text.encode()
            wheel.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{rel},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        wheel.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a server a test started: SIGTERM, then SIGKILL after ``timeout`` s; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_registry(root: Path):
    """A real container registry (Debian's ``docker-registry``) on a free loopback
    port, storing under ``root``; yields ``127.0.0.1:PORT`` and stops it afterwards.

    Raises :class:`FileNotFoundError` when ``docker-registry`` is not installed
    (the caller decides whether that skips or fails).
    """
    import time
    import urllib.request

    binary = shutil.which("docker-registry")
    if binary is None:
        raise FileNotFoundError("docker-registry is not installed")
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(textwrap.dedent(f"""\
        version: 0.1
        log: {{level: error}}
        storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}
        http: {{addr: 127.0.0.1:{port}}}
    """))
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the registry did not start: {(root / 'registry.log').read_text()}")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)
