"""Fixtures for mlexec-docker's tests: a real Docker engine, the offline test images,
a real registry on loopback, and a check that no container is left behind.

The engine and the images come from ``plugins/mlexec-docker/ci-setup.sh``.
Without them the tests that need them skip, saying why; when ``$CI`` is set
they fail instead.
"""

from __future__ import annotations

import textwrap
import time
import uuid
from pathlib import Path

import pytest

from mlexec_core.testing import local_registry, missing_infrastructure

pytest_plugins = ["mlexec_core.testing"]

BUSYBOX = "mlexec-test/busybox:1"
PYTHON = "mlexec-test/python:3.11"
#: How to get what these tests need (the closing summary of a run says it too).
HOW = "run as root: bash plugins/mlexec-docker/ci-setup.sh"


def _unavailable(piece: str, reason: str):
    missing_infrastructure(piece, reason, how=HOW)


@pytest.fixture(scope="session")
def engine():
    from mlexec_core.errors import MlexecError
    from mlexec_docker.engine import Engine

    eng = Engine()
    try:
        eng.ping(timeout=5)
    except MlexecError as exc:
        _unavailable("Docker engine", f"no Docker daemon answers: {exc.message}")
    return eng


@pytest.fixture(scope="session")
def busybox_image(engine):
    if engine.image(BUSYBOX) is None:
        _unavailable("Docker test images", f"the test image {BUSYBOX} is missing")
    return BUSYBOX


@pytest.fixture(scope="session")
def python_image(engine):
    if engine.image(PYTHON) is None:
        _unavailable("Docker test images", f"the test image {PYTHON} is missing")
    return PYTHON


@pytest.fixture
def no_leftovers(engine):
    """Fails the test when a container (a run's, or a build's intermediate one) outlives it."""
    before = {c["Id"] for c in engine._call("GET", "/containers/json", params={"all": "1"})}
    yield
    deadline = time.monotonic() + 10
    while True:
        after = engine._call("GET", "/containers/json", params={"all": "1"})
        new = [c for c in after if c["Id"] not in before]
        if not new or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for c in new:  # clean up before failing, so one failure does not cascade
        engine.remove(c["Id"])
    assert not new, f"containers left behind: {[(c['Names'], c['Image'], c['State']) for c in new]}"


@pytest.fixture
def docker_project(tmp_path, engine, no_leftovers):
    """Make a docker_env project with a unique name; its built images are removed afterwards."""
    names = []

    def make(docker_env: str, entry_points: str, files: dict[str, str] | None = None, where: str = "proj") -> Path:
        name = f"mlexec-test-{uuid.uuid4().hex[:8]}"
        names.append(name)
        root = tmp_path / where
        root.mkdir(parents=True, exist_ok=True)
        text = f"name: {name}\ndocker_env:\n{textwrap.indent(textwrap.dedent(docker_env).strip(), '  ')}\n" \
               f"entry_points:\n{textwrap.indent(textwrap.dedent(entry_points).strip(), '  ')}\n"
        (root / "MLproject").write_text(text)
        for rel, content in (files or {}).items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(content))
        return root

    yield make
    for name in names:
        for image in engine.images(f"mlexec.project={name}"):
            try:
                engine.remove_image(image["Id"])
            except Exception:
                pass


@pytest.fixture
def registry(tmp_path, engine):
    """A real registry (Debian's docker-registry) on a free loopback port, stopped afterwards."""
    try:
        with local_registry(tmp_path / "registry") as address:
            yield address
    except FileNotFoundError as exc:
        _unavailable("container registry (docker-registry)", str(exc))
