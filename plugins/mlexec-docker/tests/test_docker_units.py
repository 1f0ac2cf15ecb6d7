"""The pure parts, without a daemon: .dockerignore rules, -A options, the tracking URI seen from the container."""

from __future__ import annotations

import pytest

from mlexec_core.errors import UsageError
from mlexec_docker.context import IgnoreRules, context_files, digest_files
from mlexec_docker.images import dockerfile_bases, split_tag
from mlexec_docker.runconfig import apply_docker_args, tracking_for_container


@pytest.mark.parametrize("path, excluded", [
    ("data/big.csv", True), ("data", True), ("src/a.log", True), ("keep.log", False), ("a.log", True),
    ("deep/x/y/cache.pyc", True), ("src/main.py", False), ("docs/readme.md", True), ("docs/keep.md", False),
])
def test_dockerignore_rules_follow_docker(path, excluded):
    rules = IgnoreRules(["# comment", "/data", "**/*.log", "!keep.log", "**/*.pyc", "docs/*", "!docs/keep.md"])
    assert rules.excluded(path) is excluded


def test_context_files_and_digest(tmp_path):
    (tmp_path / ".dockerignore").write_text("secrets\n*.tmp\n")
    for rel in ("a.py", "secrets/key", "b.tmp", "sub/c.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    files = context_files(tmp_path)
    assert files == [".dockerignore", "a.py", "sub/c.py"]
    before = digest_files(tmp_path, files)
    (tmp_path / "b.tmp").write_text("changed")
    assert digest_files(tmp_path, context_files(tmp_path)) == before
    (tmp_path / "sub/c.py").write_text("changed")
    assert digest_files(tmp_path, context_files(tmp_path)) != before


def test_docker_args_as_engine_options():
    cfg, host = apply_docker_args((("gpus", "all"), ("shm-size", "1g"), ("memory", "2g"), ("cpus", "1.5"),
                                   ("privileged", None), ("t", None), ("e", "A=1"), ("ulimit", "nofile=10:20")))
    assert host["DeviceRequests"] == [{"Driver": "", "Capabilities": [["gpu"]], "Count": -1, "DeviceIDs": None}]
    assert host["ShmSize"] == 1024**3 and host["Memory"] == 2 * 1024**3
    assert host["NanoCpus"] == 1_500_000_000 and host["Privileged"] is True
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 10, "Hard": 20}]
    assert cfg == {"Tty": True, "Env": ["A=1"]}
    _, host = apply_docker_args((("gpus", "device=0,2"),))
    assert host["DeviceRequests"][0]["DeviceIDs"] == ["0", "2"]
    with pytest.raises(UsageError, match="needs a value"):
        apply_docker_args((("memory", None),))


def test_tracking_uri_as_the_container_sees_it(tmp_path):
    db = tmp_path / "mlflow.db"
    assert tracking_for_container(f"sqlite:///{db}", None) == (
        "sqlite:////mlflow/tracking/mlflow.db", [f"{tmp_path}:/mlflow/tracking"], False)
    assert tracking_for_container(f"file://{tmp_path}/mlruns", None) == (
        "file:///mlflow/tracking/mlruns", [f"{tmp_path}/mlruns:/mlflow/tracking/mlruns"], False)
    assert tracking_for_container("http://localhost:5000", None) == ("http://localhost:5000", [], True)
    assert tracking_for_container("https://mlflow.example.com", None) == ("https://mlflow.example.com", [], False)


def test_dockerfile_bases_and_tags():
    text = "ARG BASE=python:3.11\nFROM $BASE AS build\nRUN x\nFROM build\nFROM --platform=linux/amd64 busybox\n" \
           "FROM scratch\n"
    assert dockerfile_bases(text) == ["python:3.11", "busybox"]
    assert dockerfile_bases(text, {"BASE": "debian:12"}) == ["debian:12", "busybox"]
    assert split_tag("localhost:5000/team/proj") == ("localhost:5000/team/proj", "latest")
    assert split_tag("localhost:5000/team/proj:abc") == ("localhost:5000/team/proj", "abc")


def test_docker_auth_reaches_pulls_and_pushes():
    """docker_auth of the Python API is sent with every pull and push (no registry with auth runs here)."""
    from mlexec_core.plugin.interfaces import SilentReporter
    from mlexec_docker.images import ImageInfo, Images

    calls = []

    class RecordingApi:
        def pull(self, repo, **kwargs):
            calls.append(("pull", repo, kwargs["auth_config"]))
            return iter([{"status": "Downloaded"}])

        def push(self, repo, **kwargs):
            calls.append(("push", repo, kwargs["auth_config"]))
            return iter([{"aux": {"Digest": "sha256:" + "0" * 64}}])

    class NoEngine:
        def image(self, name):
            return None

    auth = {"username": "ci", "password": "s3cret", "registry": "localhost:5000"}
    images = Images(NoEngine(), SilentReporter(), auth)
    images._api = RecordingApi()
    images._registry_digest = lambda uri: None
    images.pull("localhost:5000/team/base:1")
    images.push(ImageInfo("localhost:5000/team/proj:abc", "sha256:1"))
    assert calls == [("pull", "localhost:5000/team/base", auth), ("push", "localhost:5000/team/proj", auth)]
    assert Images(NoEngine(), SilentReporter()).auth is None  # default: the daemon's own docker login
