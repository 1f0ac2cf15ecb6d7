"""Fixtures for mlexec-kubernetes: the Kubernetes API server double (mlexec_k8s_double.py)
on loopback, a kubeconfig pointing at it, and a stand-in image builder."""

from __future__ import annotations

import os
import threading
import types
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

pytest_plugins = ["mlexec_core.testing"]

from mlexec_k8s_double import FakeCluster, _Handler, write_kubeconfig  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture
def fake_cluster():
    """A Kubernetes API server double on 127.0.0.1; ``.url`` is its address."""
    cluster = FakeCluster()
    handler = type("Handler", (_Handler,), {"cluster": cluster})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cluster.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield cluster
    with cluster.cond:
        cluster.closing = True
        cluster.cond.notify_all()
    server.shutdown()
    server.server_close()


@pytest.fixture
def kubeconfig(fake_cluster, tmp_path, monkeypatch):
    """A kubeconfig for the double, in $KUBECONFIG (for in-process tests and, via ``k8s_env``, the CLI)."""
    path = write_kubeconfig(tmp_path / "kubeconfig", fake_cluster.url)
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


# -- a stand-in for mlexec-docker's image builder -------------------------------------------

FAKE_BUILDER = '''
"""A stand-in for mlexec-docker's ``docker`` image builder: no engine, no registry.

With ``$MLEXEC_K8S_TEST_IMAGE`` (``repo:tag@sha256:...``, an image the tests pushed to the
loopback registry for the pod runner) it returns that image."""
import hashlib
import os

from mlexec_core.errors import BackendError
from mlexec_core.plugin import Registration, hookimpl
from mlexec_core.plugin.interfaces import ImageBuilder, ImageRef


class FakeDockerBuilder(ImageBuilder):

    def build(self, plan, *, repository=None, push=False):
        pushed = os.environ.get("MLEXEC_K8S_TEST_IMAGE")
        if pushed:
            uri, digest = pushed.split("@", 1)
            return ImageRef(uri=uri, image_id=digest, digest=digest)
        key = hashlib.sha256(str(plan.work_dir).encode()).hexdigest()
        with self.context.reporter.status(f"Building {repository}:{key[:12]} (stand-in)"):
            pass
        if "refused" in (repository or ""):
            raise BackendError(f"pushing {repository}:{key[:12]} failed: denied: requested access to the "
                               "resource is denied", hint="log in to the registry (docker login) and retry")
        return ImageRef(uri=f"{repository}:{key[:12]}", image_id="sha256:" + key,
                        digest="sha256:" + key if push else None)


@hookimpl
def mlexec_image_builders():
    return [Registration(kind="image-builder", name="docker", path=FakeDockerBuilder)]
'''


@pytest.fixture(scope="session")
def fake_builder_site(tmp_path_factory) -> Path:
    """A folder for PYTHONPATH holding the stand-in builder as an installed plugin (entry point ``fakedocker``)."""
    site = tmp_path_factory.mktemp("fake-builder-site")
    (site / "mlexec_k8s_fake_builder.py").write_text(FAKE_BUILDER)
    dist = site / "mlexec_k8s_fake_builder-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlexec-k8s-fake-builder\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mlexec]\nfakedocker = mlexec_k8s_fake_builder\n")
    return site


@pytest.fixture
def fake_builder_module():
    module = types.ModuleType("mlexec_k8s_fake_builder_inproc")
    exec(compile(FAKE_BUILDER, "<fake builder>", "exec"), module.__dict__)
    return module


@pytest.fixture
def k8s_env(cli_env, kubeconfig, fake_builder_site):
    """Environment for the CLI: the double's kubeconfig, the stand-in builder instead of mlexec-docker."""
    return {"KUBECONFIG": str(kubeconfig),
            "PYTHONPATH": f"{fake_builder_site}{os.pathsep}{cli_env['PYTHONPATH']}",
            "MLEXEC_DISABLE_PLUGINS": "docker"}


@pytest.fixture
def k8s_project(project, tmp_path):
    """A project (no environment: the stand-in builder needs none) and a backend config next to it."""

    def make(config: str = "repository-uri: registry.example.test/team/demo\nnamespace: ml\n",
             command: str = "python train.py --lr {lr}", name: str = "Demo Project") -> Path:
        root = project(f"""\
            name: {name}
            entry_points:
              main:
                parameters:
                  lr: {{type: float, default: 0.1}}
                  note: {{type: string, default: "a b"}}
                command: "{command}"
            """)
        (root / "backend_config.yaml").write_text(config)
        return root

    return make


@pytest.fixture
def in_process(fake_cluster, kubeconfig, fake_builder_module, store, monkeypatch):
    """Plugins for ``mlexec_core.run(..., plugins=...)``: the kubernetes backend and the stand-in builder."""
    from mlexec_core.plugin.manager import build_plugins
    import mlexec_kubernetes.plugin

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)

    def make(reporter=None):
        return build_plugins(entry_points=False, reporter=reporter,
                             extra=[("kubernetes", mlexec_kubernetes.plugin), ("fakedocker", fake_builder_module)])

    return make




# -- real containers for the double's pods (mlexec_k8s_runner.py) ---------------------------

DOCKER_SETUP = "run as root: bash plugins/mlexec-docker/ci-setup.sh"
PYTHON = "mlexec-test/python:3.11"


@pytest.fixture(scope="session")
def engine():
    from mlexec_core.testing import missing_infrastructure

    try:
        from mlexec_core.errors import MlexecError
        from mlexec_docker.engine import Engine
    except ImportError:
        missing_infrastructure("mlexec-docker", "mlexec-docker is not installed", how="bash scripts/setup.sh")
    eng = Engine()
    try:
        eng.ping(timeout=5)
    except MlexecError as exc:
        missing_infrastructure("Docker engine", f"no Docker daemon answers: {exc.message}", how=DOCKER_SETUP)
    if eng.image(PYTHON) is None:
        missing_infrastructure("Docker test images", f"the test image {PYTHON} is missing", how=DOCKER_SETUP)
    return eng


@pytest.fixture(scope="session")
def pod_image(engine, tmp_path_factory):
    """The python test image pushed once to a real registry on loopback: ``repo:tag@sha256:...``."""
    import subprocess
    import uuid

    from mlexec_core.testing import local_registry, missing_infrastructure

    try:
        registry = local_registry(tmp_path_factory.mktemp("registry"))
        address = registry.__enter__()
    except FileNotFoundError as exc:
        missing_infrastructure("container registry (docker-registry)", str(exc), how=DOCKER_SETUP)
    repo, tag = f"{address}/team/mlexec-k8s-pods", uuid.uuid4().hex[:12]
    try:
        engine.tag(PYTHON, repo, tag)
        pushed = subprocess.run(["docker", "push", f"{repo}:{tag}"], capture_output=True, text=True, timeout=300)
        assert pushed.returncode == 0, pushed.stderr
        digest = next(word for line in pushed.stdout.splitlines() for word in line.split()
                      if word.startswith("sha256:") and "digest:" in line)
        engine.remove_image(f"{repo}:{tag}")  # so the pods pull it by digest
        yield f"{repo}:{tag}@{digest}"
    finally:
        registry.__exit__(None, None, None)


@pytest.fixture
def pod_runner(fake_cluster, engine, pod_image, tmp_path):
    """The double's Jobs run for real: their pods' containers on the Docker engine (mlexec_k8s_runner).
    At the end every container it started is removed; one still running then fails the test."""
    from mlexec_k8s_runner import PodRunner

    runner = PodRunner(fake_cluster, engine, tmp_path)
    runner.image = pod_image
    yield runner
    left = runner.close()
    assert not left, f"containers still running at the end of the test: {left}"


@pytest.fixture
def k8s_real_env(k8s_env, pod_image, pod_runner):
    """The CLI's environment for runs whose pods really run: the stand-in builder returns the pushed image."""
    return {**k8s_env, "MLEXEC_K8S_TEST_IMAGE": pod_image}
