"""Tests with real infrastructure that is not always there.

* ``test_real_docker_build_and_push``: the real mlexec-docker image builder, a real Docker
  engine and a real registry (Debian's docker-registry) on 127.0.0.1, with the API server
  double.  Skipped when any of them is missing, also under CI for now.
* ``test_real_cluster``: a real cluster from ``$MLEXEC_TEST_KUBECONFIG`` (skipped otherwise).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
import urllib.request
import uuid

import pytest

from mlexec_core.testing import free_port, local_registry

from mlexec_core.testing import MLEXEC, assert_no_traceback, missing_infrastructure

BUSYBOX = os.environ.get("MLEXEC_TEST_BASE_IMAGE", "mlexec-test/busybox:1")


DOCKER_SETUP = "run as root: bash plugins/mlexec-docker/ci-setup.sh"


def _skip(piece: str, reason: str, how: str = DOCKER_SETUP) -> None:
    missing_infrastructure(piece, reason + " (skipped even under CI for now)", how=how, fail_in_ci=False)


def _docker_ready() -> None:
    try:
        import mlexec_docker  # noqa: F401
    except ImportError:
        _skip("mlexec-docker", "mlexec-docker is not installed", how="bash scripts/setup.sh")
    import docker

    try:
        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:
        _skip("Docker engine", f"no Docker daemon answers ({type(exc).__name__})")
    try:
        client.images.get(BUSYBOX)
    except Exception:
        _skip("Docker test images", f"the test image {BUSYBOX} is missing")


@pytest.fixture
def registry(tmp_path):
    try:
        with local_registry(tmp_path / "registry") as address:
            yield address
    except FileNotFoundError as exc:
        _skip("container registry (docker-registry)", str(exc))


def _busybox_project(root, name):
    root.mkdir(parents=True, exist_ok=True)
    (root / "MLproject").write_text(textwrap.dedent(f"""\
        name: {name}
        docker_env: {{image: "{BUSYBOX}"}}
        entry_points:
          main:
            parameters: {{note: {{type: string, default: "it's a b"}}}}
            command: "echo note={{note}}; sleep 0"
          slow:
            command: "echo started; sleep 300"
        """))
    return root


def _remove_images(name: str) -> None:
    ids = subprocess.run(["docker", "image", "ls", "-q", "--filter", f"label=mlexec.project={name}"],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rmi", "-f", *set(ids)], capture_output=True)


def test_real_docker_build_and_push(mlexec, cli_env, kubeconfig, fake_cluster, registry, store, tmp_path):
    _docker_ready()
    name = f"mlexec-k8s-test-{uuid.uuid4().hex[:8]}"
    proj = _busybox_project(tmp_path / "proj", name)
    (proj / "backend_config.yaml").write_text(f"repository-uri: {registry}/team/{name}\nnamespace: ml\n")

    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        c.finish_pod(ns, pod, 0)
        c.job_condition(ns, job, "Complete")

    fake_cluster.scenario = scenario
    env = {"KUBECONFIG": str(kubeconfig)}
    try:
        proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", cwd=proj, env=env,
                      timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert_no_traceback(proc)
        image = fake_cluster.created_jobs()[0]["spec"]["template"]["spec"]["containers"][0]["image"]
        uri, digest = image.split("@")
        repo, tag = uri.rsplit(":", 1)
        assert repo == f"{registry}/team/{name}"
        request = urllib.request.Request(
            f"http://{registry}/v2/team/{name}/manifests/{tag}", method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Docker-Content-Digest"] == digest
        run = store.only_run()
        assert run.data.tags["mlflow.docker.image.id"] == digest

        again = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", cwd=proj, env=env,
                       timeout=300)
        assert again.returncode == 0, again.stderr
        assert "not pushed" in again.stderr
        assert fake_cluster.created_jobs()[1]["spec"]["template"]["spec"]["containers"][0]["image"] == image

        # a registry that refuses: nothing listens on this port
        (proj / "refused.yaml").write_text(f"repository-uri: 127.0.0.1:{free_port()}/team/{name}\n"
                                           "namespace: ml\n")
        refused = mlexec("run", proj, "-b", "kubernetes", "-c", "refused.yaml", cwd=proj, env=env, timeout=300)
        assert refused.returncode == 2, refused.stderr
        assert_no_traceback(refused)
        assert len(store.runs()) == 2 and len(fake_cluster.created_jobs()) == 2
    finally:
        _remove_images(name)


def test_real_cluster(mlexec, cli_env, store, tmp_path):
    kubeconfig = os.environ.get("MLEXEC_TEST_KUBECONFIG")
    repository = os.environ.get("MLEXEC_TEST_REPOSITORY")
    if not kubeconfig:
        _skip("a real Kubernetes cluster (opt-in)", "MLEXEC_TEST_KUBECONFIG is not set",
              how="set MLEXEC_TEST_KUBECONFIG (and MLEXEC_TEST_REPOSITORY) to run against a real cluster")
    if not repository:
        pytest.fail("MLEXEC_TEST_KUBECONFIG is set but MLEXEC_TEST_REPOSITORY (a registry the cluster can pull "
                    "from and this Docker engine can push to) is not")
    _docker_ready()
    name = f"mlexec-k8s-test-{uuid.uuid4().hex[:8]}"
    proj = _busybox_project(tmp_path / "proj", name)
    config = {"repository-uri": f"{repository}/{name}", "ttl-seconds-after-finished": 300,
              "active-deadline-seconds": 900}
    if os.environ.get("MLEXEC_TEST_NAMESPACE"):
        config["namespace"] = os.environ["MLEXEC_TEST_NAMESPACE"]
    (proj / "backend_config.json").write_text(json.dumps(config))
    env = {"KUBECONFIG": kubeconfig}
    try:
        proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.json", "-P", "note=x y",
                      cwd=proj, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr
        assert "note=x y" in proc.stdout
        assert store.only_run().info.status == "FINISHED"

        slow = subprocess.Popen([*MLEXEC, "run", ".", "-e", "slow", "-b", "kubernetes", "-c",
                                 "backend_config.json"], cwd=proj, env={**cli_env, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert slow.stdout.readline() == "started\n"
            slow.send_signal(signal.SIGINT)
            _, err = slow.communicate(timeout=300)
        finally:
            if slow.poll() is None:
                slow.kill()
        assert slow.returncode == 130, err
        killed = [r for r in store.runs() if r.info.status == "KILLED"]
        assert len(killed) == 1
        job = killed[0].data.tags["mlexec.kubernetes.job"]
        namespace = killed[0].data.tags["mlexec.kubernetes.namespace"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            pods = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "pods", "-n", namespace, "-l",
                                   f"job-name={job}", "-o", "name"], capture_output=True, text=True).stdout
            if not pods.strip():
                break
            time.sleep(2)
        assert not pods.strip(), f"pods left behind: {pods}"
    finally:
        _remove_images(name)
