"""User mistakes: one readable message, exit 2, and no run in the store (all found before the run exists)."""

from __future__ import annotations

import socket

import pytest

from mlexec_core.testing import assert_no_traceback

BB = "image: mlexec-test/busybox:1"
MAIN = 'main: {command: "true"}'


def _refused(proc, store, *needles):
    assert proc.returncode == 2, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert store.runs() == []
    assert_no_traceback(proc)


def test_no_daemon_says_how_to_start_one(mlexec, project, store, tmp_path):
    proj = project(f"name: nodaemon\ndocker_env:\n  {BB}\nentry_points:\n  {MAIN}\n")
    proc = mlexec("run", proj, env={"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"})
    _refused(proc, store, "cannot reach the Docker daemon", "no-daemon.sock", "dockerd")


def test_image_not_found_anywhere(mlexec, docker_project, store, registry):
    proj = docker_project(f"image: {registry}/nobody/nothing:1", MAIN)
    _refused(mlexec("run", proj), store, "was not found, locally or in its registry", "nobody/nothing:1")


def test_registry_unreachable(mlexec, docker_project, store, engine):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    proj = docker_project(f"image: 127.0.0.1:{free_port}/team/missing:1", MAIN)
    _refused(mlexec("run", proj), store, "is not on this machine, and its registry is unreachable")


def test_unset_environment_variable(mlexec, docker_project, store):
    proj = docker_project(f'{BB}\nenvironment: ["MLEXEC_TEST_NOT_SET"]', MAIN)
    _refused(mlexec("run", proj), store, "docker_env.environment: MLEXEC_TEST_NOT_SET", "not set",
             "MLproject")


def test_missing_volume_host_path(mlexec, docker_project, store):
    proj = docker_project(f'{BB}\nvolumes: ["./no-such-dir:/data"]', MAIN)
    _refused(mlexec("run", proj), store, "docker_env.volumes", "./no-such-dir", "does not exist")


@pytest.mark.parametrize("arg, needle", [
    ("frobnicate=1", "-A frobnicate: not a `docker run` option"),
    ("memory=lots", "expected a size"),
    ("name=x", "mlexec manages the container itself"),
    ("cpus=1e400", "-A cpus=1e400: expected a number of CPUs"),
    ("shm-size=99999999999999999999999g", "more than the engine accepts"),
])
def test_bad_docker_args(mlexec, docker_project, store, busybox_image, arg, needle):
    proj = docker_project(BB, MAIN)
    _refused(mlexec("run", proj, "-A", arg), store, needle)
