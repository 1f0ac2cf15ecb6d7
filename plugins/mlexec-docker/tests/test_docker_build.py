"""Images: Dockerfile projects, --build-image, content-addressed reuse, .dockerignore, push and pull."""

from __future__ import annotations

import io
import json
import re
import urllib.request

from mlexec_core.testing import assert_no_traceback

DOCKERFILE = """\
FROM mlexec-test/busybox:1
ARG FLAVOUR=plain
RUN echo "environment $FLAVOUR" > /env.txt
COPY data.txt /data.txt
"""


def _built(proc) -> bool:
    return "Building image" in proc.stderr


def test_dockerfile_project_builds_once_and_rebuilds_only_what_changed(mlexec, docker_project, store, engine,
                                                                        busybox_image):
    proj = docker_project(
        """
        dockerfile: Dockerfile
        args: {FLAVOUR: spicy}
        """,
        'main: {command: "cat /env.txt /data.txt"}',
        files={"Dockerfile": DOCKERFILE, "data.txt": "data v1\n"},
    )
    first = mlexec("run", proj, check=0)
    assert _built(first)
    assert "environment spicy\ndata v1" in first.stdout
    uri = store.only_run().data.tags["mlflow.docker.image.uri"]
    image_id = store.only_run().data.tags["mlflow.docker.image.id"]
    assert uri.startswith(f"{proj.joinpath('MLproject').read_text().split()[1]}-env:")
    assert engine.image(uri)["Id"] == image_id

    second = mlexec("run", proj, check=0)  # nothing changed: no build at all
    assert not _built(second), second.stderr
    assert "Step " not in second.stderr
    assert "data v1" in second.stdout
    runs = store.runs()
    assert {r.data.tags["mlflow.docker.image.id"] for r in runs} == {image_id}

    (proj / "data.txt").write_text("data v2\n")  # an edit: the RUN step before the COPY comes from the cache
    third = mlexec("run", proj, check=0)
    assert _built(third)
    assert "(2 of " in third.stderr and "steps from the cache)" in third.stderr  # ARG and RUN
    assert "data v2" in third.stdout
    latest = max(store.runs(), key=lambda r: r.info.start_time)
    assert latest.data.tags["mlflow.docker.image.uri"] != uri
    assert_no_traceback(third)


def test_build_image_copies_the_code_in_honouring_dockerignore(mlexec, docker_project, store, busybox_image):
    proj = docker_project(
        "image: mlexec-test/busybox:1",
        'main: {command: "pwd; ls -a; cat train.sh; echo written > out.txt"}',
        files={"train.sh": "v1", ".dockerignore": "secrets/\n*.log\n!keep.log\n", "secrets/key": "k",
               "debug.log": "noise", "keep.log": "kept"},
    )
    first = mlexec("run", proj, "--build-image", check=0)
    assert _built(first)
    out = first.stdout
    assert out.startswith("/mlflow/projects/code\n")
    assert "train.sh" in out and "keep.log" in out and "v1" in out
    assert "secrets" not in out and "debug.log" not in out
    assert not (proj / "out.txt").exists()  # the container wrote into its own copy
    uri = store.only_run().data.tags["mlflow.docker.image.uri"]

    (proj / "debug.log").write_text("more noise")  # an ignored file: same content key, no build
    second = mlexec("run", proj, "--build-image", check=0)
    assert not _built(second), second.stderr
    assert "unchanged project" in second.stderr

    (proj / "train.sh").write_text("v2")
    third = mlexec("run", proj, "--build-image", check=0)
    assert _built(third)
    assert "v2" in third.stdout
    uris = [r.data.tags["mlflow.docker.image.uri"] for r in sorted(store.runs(), key=lambda r: r.info.start_time)]
    assert uris[0] == uris[1] == uri != uris[2]


def test_build_image_leaves_the_tracking_store_out(mlexec, docker_project, store, busybox_image):
    """The default store ./mlflow.db in the project (mlexec run . --build-image) changes on every run:
    copied in, it would rebuild the image each time and bake every other run's data into it."""
    proj = docker_project("image: mlexec-test/busybox:1", 'main: {command: "ls -a"}',
                          files={"train.sh": "v1", "mlruns/0/meta.yaml": "x"})
    project_store = f"sqlite:///{proj / 'mlflow.db'}"
    import shutil

    shutil.copy(store.path, proj / "mlflow.db")
    first = mlexec("run", proj, "--build-image", env={"MLFLOW_TRACKING_URI": project_store}, check=0)
    assert _built(first)
    assert "train.sh" in first.stdout and "mlflow.db" not in first.stdout and "mlruns" not in first.stdout
    second = mlexec("run", proj, "--build-image", env={"MLFLOW_TRACKING_URI": project_store}, check=0)
    assert not _built(second), second.stderr  # the store changed (a run was added): no rebuild


def test_dockerfile_failure_shows_the_failing_step_and_creates_no_run(mlexec, docker_project, store,
                                                                       busybox_image):
    proj = docker_project(
        "dockerfile: Dockerfile",
        'main: {command: "true"}',
        files={"Dockerfile": "FROM mlexec-test/busybox:1\nRUN echo fine\n"
                             "RUN echo the-step-output && ls /nowhere\n"},
    )
    proc = mlexec("run", proj)
    assert proc.returncode == 2
    assert re.search(r"the image build failed at Step 3/\d+ : RUN echo the-step-output", proc.stderr), proc.stderr
    assert "the-step-output" in proc.stderr
    assert "nowhere" in proc.stderr  # the step's own error output
    assert "returned a non-zero code" in proc.stderr
    assert store.runs() == []
    assert_no_traceback(proc)


def test_dockerfile_syntax_error_is_one_message(mlexec, docker_project, store, busybox_image):
    proj = docker_project("dockerfile: Dockerfile", 'main: {command: "true"}',
                          files={"Dockerfile": "FROM mlexec-test/busybox:1\nRUNN echo typo\n"})
    proc = mlexec("run", proj)
    assert proc.returncode == 2
    assert "the image build failed" in proc.stderr and "runn" in proc.stderr.lower()
    assert store.runs() == []
    assert_no_traceback(proc)


class Recorder:
    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)

    warning = success = info

    def status(self, message):
        import contextlib

        self.lines.append(message)
        return contextlib.nullcontext()


def test_image_builder_pushes_with_the_content_tag_and_skips_an_unchanged_push(
        docker_project, registry, engine, busybox_image):
    from mlexec_core.pipeline.options import RunOptions
    from mlexec_core.pipeline.resolve import resolve_plan
    from mlexec_core.plugin.manager import build_plugins

    proj = docker_project("image: mlexec-test/busybox:1", 'main: {command: "cat msg"}', files={"msg": "hi"})
    recorder = Recorder()
    plugins = build_plugins(reporter=recorder)
    plan = resolve_plan(plugins, RunOptions(uri=str(proj)))
    builder = plugins.image_builder("docker")
    repository = f"{registry}/team/proj"

    ref = builder.build(plan, repository=repository, push=True)
    repo, tag = ref.uri.rsplit(":", 1)
    assert repo == repository and len(tag) == 16
    assert ref.digest and ref.digest.startswith("sha256:")
    assert ref.image_id == engine.image(ref.uri)["Id"]
    tags = json.load(urllib.request.urlopen(f"http://{registry}/v2/team/proj/tags/list"))
    assert tags["tags"] == [tag]
    assert any(line.startswith("Pushed") for line in recorder.lines)

    recorder.lines.clear()
    again = builder.build(plan, repository=repository, push=True)
    assert again == ref
    assert not any("Building" in line for line in recorder.lines)
    assert any("already in the registry" in line for line in recorder.lines), recorder.lines

    (proj / "msg").write_text("changed")
    changed = builder.build(plan, repository=repository, push=True)
    assert changed.uri != ref.uri and changed.digest != ref.digest
    for image in (ref.uri, changed.uri):
        engine.remove_image(image)


def test_missing_image_is_pulled_from_its_registry_with_progress(
        mlexec, docker_project, registry, engine, busybox_image, store):
    from mlexec_docker.images import Images

    from mlexec_docker.images import api_client

    # An image with a layer of its own, in the registry only.
    remote = f"{registry}/mirror/marked:1"
    dockerfile = io.BytesIO(b"FROM mlexec-test/busybox:1\nRUN echo marked > /marker\n")
    events = list(api_client().build(fileobj=dockerfile, tag=remote, rm=True, forcerm=True, decode=True))
    assert not any("error" in e for e in events), events
    Images(engine, Recorder()).push(Images(engine, Recorder()).ensure(remote))
    engine.remove_image(remote)
    assert engine.image(remote) is None
    try:
        proj = docker_project(f"image: {remote}", 'main: {command: "cat /marker; echo pulled-and-ran"}')
        proc = mlexec("run", proj, check=0)
        assert f"Pulling {remote}" in proc.stderr
        assert "pull complete" in proc.stderr
        assert "pulled-and-ran" in proc.stdout
        assert store.only_run().data.tags["mlflow.docker.image.uri"] == remote
    finally:
        engine.remove_image(remote)


def test_env_list_shows_built_images_and_removes_one(mlexec, docker_project, store, engine, busybox_image):
    from mlexec_core.plugin.manager import build_plugins

    proj = docker_project("image: mlexec-test/busybox:1", 'main: {command: "true"}')
    mlexec("run", proj, "--build-image", check=0)
    uri = store.only_run().data.tags["mlflow.docker.image.uri"]
    listed = json.loads(mlexec("env", "list", "--manager", "docker", "--json", check=0).stdout)
    mine = [e for e in listed if e["name"] == uri]
    name = (proj / "MLproject").read_text().split()[1]
    assert len(mine) == 1 and mine[0]["summary"] == f"code image of {name}" and not mine[0]["in_use"]

    manager = build_plugins().environment_manager("docker")
    (info,) = [i for i in manager.list_environments() if i.name == uri]
    assert manager.remove_environment(info) is True
    assert engine.image(uri) is None
