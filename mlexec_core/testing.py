"""pytest fixtures for mlexec and its plugins: the real CLI, real MLflow sqlite stores.

Use from a plugin's tests with ``pytest_plugins = ["mlexec_core.testing"]`` in its
conftest.py; helpers (``make_project``, ``assert_no_traceback``, ``MLEXEC``) import
from here.  Test modules must have names unique across the repository
(``test_<plugin>_*.py``), since all suites run in one pytest session.

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

#: The repository root (for examples); mlexec_core lives directly below it.
ROOT = Path(__file__).resolve().parents[1]
MLEXEC = [sys.executable, "-m", "mlexec_core"]


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
    """A real MLflow sqlite store, read back through MlflowClient."""

    def __init__(self, path: Path, client_cls) -> None:
        self.path = path
        self.uri = f"sqlite:///{path}"
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
    path = tmp_path / "store" / "mlflow.db"
    path.parent.mkdir()
    shutil.copy(template_db, path)
    # Artifacts of the Default experiment stay inside the test's directory (MLflow put
    # them under ./mlruns of the directory the template was made in).
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                   (str(path.parent / "artifacts" / "0"),))
    return Store(path, mlflow_client_cls)


@pytest.fixture
def cli_env(store, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLEXEC_"))}
    env["MLFLOW_TRACKING_URI"] = store.uri
    env["MLEXEC_STOP_TIMEOUT"] = "5"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("NO_COLOR", None)
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
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
