"""Issue 23 for docker: a run records the image it ran (its ID, and its repo digest when it is in a
registry), and `mlexec rerun` runs that very image again, never a rebuild: by its ID while the
engine has it, pulled back by its digest when it does not, else one error before any run."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from mlexec_core.testing import assert_no_traceback

DOCKERFILE = "FROM mlexec-test/busybox:1\nRUN echo {marker} > /marker.txt\n"


def run_id(proc) -> str:
    return proc.stderr.split("=== Run ", 1)[1].split()[0]


def image_id_of(store, rid: str) -> str:
    return store.client.get_run(rid).data.tags["mlflow.docker.image.id"]


def recorded_lock(store, rid: str) -> str:
    run = store.client.get_run(rid)
    return Path(run.info.artifact_uri.replace("file://", ""), "mlexec", "environment.lock").read_text()


def test_rerun_runs_the_recorded_image_not_the_changed_dockerfile(mlexec, docker_project, store, engine,
                                                                  busybox_image):
    proj = docker_project("dockerfile: Dockerfile", 'main: {command: "cat /marker.txt"}',
                          files={"Dockerfile": DOCKERFILE.format(marker="first-image")})
    first = mlexec("run", proj, check=0)
    assert "first-image" in first.stdout
    first_id = image_id_of(store, run_id(first))
    assert recorded_lock(store, run_id(first)).splitlines()[0] == f"image-id {first_id}"

    (proj / "Dockerfile").write_text(DOCKERFILE.format(marker="second-image"))
    fresh = mlexec("run", proj, check=0)  # a fresh run builds the changed Dockerfile
    assert "second-image" in fresh.stdout and image_id_of(store, run_id(fresh)) != first_id

    dry = mlexec("rerun", run_id(first), "--allow-changed-code", "--dry-run", check=0)
    assert f"the recorded image {first_id}" in dry.stdout and "run by its ID" in dry.stdout
    again = mlexec("rerun", run_id(first), "--allow-changed-code", check=0)
    assert_no_traceback(again)
    assert "first-image" in again.stdout  # the image the run had, though the Dockerfile now says otherwise
    assert "Building image" not in again.stderr
    assert image_id_of(store, run_id(again)) == first_id
    assert store.client.get_run(run_id(again)).data.tags["mlexec.rerunOf"] == run_id(first)

    engine.remove_image(first_id)  # gone from this machine, and it never was in a registry
    dry = mlexec("rerun", run_id(first), "--allow-changed-code", "--dry-run", check=0)
    assert "NOT on this machine and never pushed" in dry.stdout
    runs = len(store.runs())
    proc = mlexec("rerun", run_id(first), "--allow-changed-code", check=2)
    assert_no_traceback(proc)
    assert f"image {first_id}" in proc.stderr
    assert "is no longer on this machine and was never pushed to a registry" in proc.stderr
    assert "Building image" not in proc.stderr and engine.image(first_id) is None  # never rebuilt
    assert len(store.runs()) == runs  # no run created; no_leftovers: no container either


def test_a_code_image_is_rerun_as_it_was_with_nothing_mounted_over_it(mlexec, docker_project, store, busybox_image):
    proj = docker_project("image: mlexec-test/busybox:1", 'main: {command: "cat data.txt"}',
                          files={"data.txt": "the code the run had\n"})
    first = mlexec("run", proj, "--build-image", check=0)
    assert "the code the run had" in first.stdout
    (proj / "data.txt").write_text("edited since\n")
    again = mlexec("rerun", run_id(first), "--allow-changed-code", check=0)
    assert_no_traceback(again)
    assert "the code the run had" in again.stdout  # the code image's own files, the folder not mounted over them
    assert image_id_of(store, run_id(again)) == image_id_of(store, run_id(first))
    assert "the project's code in it" in again.stderr


def test_an_image_gone_from_this_machine_is_pulled_back_by_its_digest(mlexec, docker_project, store, engine,
                                                                      registry, busybox_image, tmp_path):
    marker = f"pushed-{uuid.uuid4().hex[:8]}"  # an image of this test's own: removing it touches no one else's
    uri = f"{registry}/mlexec-envlock-rerun:{marker}"
    context = tmp_path / "image"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE.format(marker=marker) + "LABEL mlexec.test=envlock-rerun\n")
    subprocess.run(["docker", "build", "-q", "-t", uri, str(context)], check=True, capture_output=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "0"})
    image_id = engine.image(uri)["Id"]
    try:
        subprocess.run(["docker", "push", uri], check=True, capture_output=True)
        proj = docker_project(f"image: {uri}", 'main: {command: "cat /marker.txt"}')
        first = mlexec("run", proj, check=0)
        assert marker in first.stdout
        lock = recorded_lock(store, run_id(first))
        (digest,) = [line.split(" ", 1)[1] for line in lock.splitlines() if line.startswith("repo-digest ")]
        assert digest.startswith(f"{registry}/mlexec-envlock-rerun@sha256:")

        engine.remove_image(uri)  # untagged and deleted: only the registry has it now
        assert engine.image(image_id) is None
        dry = mlexec("rerun", run_id(first), "--dry-run", check=0)
        assert f"pulled back as {digest}" in dry.stdout
        again = mlexec("rerun", run_id(first), check=0)
        assert_no_traceback(again)
        assert marker in again.stdout and f"pulling {digest}" in again.stderr
        assert image_id_of(store, run_id(again)) == image_id
        assert engine.image(image_id) is not None
    finally:
        for ref in (image_id, uri):
            try:
                engine.remove_image(ref)
            except Exception:
                pass


def test_a_failing_pull_of_the_recorded_digest_is_one_error_before_any_run(mlexec, docker_project, store, engine,
                                                                           busybox_image):
    from mlexec_core.testing import free_port

    proj = docker_project("dockerfile: Dockerfile", 'main: {command: "cat /marker.txt"}',
                          files={"Dockerfile": DOCKERFILE.format(marker=f"gone-{uuid.uuid4().hex[:8]}")})
    first = mlexec("run", proj, check=0)
    first_id = image_id_of(store, run_id(first))
    lock = Path(store.client.get_run(run_id(first)).info.artifact_uri.replace("file://", ""), "mlexec",
                "environment.lock")
    digest = f"127.0.0.1:{free_port()}/gone@sha256:{'0' * 64}"  # a registry that no longer answers
    lock.write_text(lock.read_text() + f"repo-digest {digest}\n")
    engine.remove_image(first_id)
    proc = mlexec("rerun", run_id(first), check=2)
    assert_no_traceback(proc)
    assert f"image {first_id}" in proc.stderr and "pulling it back failed" in proc.stderr
    assert digest in proc.stderr and "unreachable" in proc.stderr
    assert "Building image" not in proc.stderr and engine.image(first_id) is None
    assert len(store.runs()) == 1
