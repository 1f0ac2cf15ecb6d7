"""`mlexec sweep` of a docker_env project on the real Docker engine: one image for every child."""

from __future__ import annotations

from mlexec_core.testing import assert_no_traceback


def test_a_sweep_builds_one_image_and_runs_every_child_in_it(mlexec, docker_project, store, busybox_image,
                                                             engine):
    proj = docker_project(
        f"image: {busybox_image}",
        """
        main:
          parameters: {n: int, word: {type: string, default: hi}}
          command: "echo child n={n} word={word}; test {n} != 3"
        """,
        files={"data.txt": "x"},
    )
    proc = mlexec("sweep", proj, "--build-image", "-P", "n=1,2,3", "-P", r"word=a\,b", "--max-parallel", "2",
                  timeout=300)
    assert proc.returncode == 1, proc.stderr  # n=3 fails, on purpose
    assert_no_traceback(proc)
    assert "child 2 failed (n=3 word=a,b), exit code 1" in proc.stderr
    assert "    | child n=3 word=a,b" in proc.stderr
    runs = store.runs()
    [parent] = [r for r in runs if r.data.tags.get("mlexec.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FAILED"
    assert sorted((c.data.params["n"], c.info.status) for c in children) == [
        ("1", "FINISHED"), ("2", "FINISHED"), ("3", "FAILED")]
    assert {c.data.params["word"] for c in children} == {"a,b"}
    images = {c.data.tags["mlflow.docker.image.id"] for c in children}
    assert len(images) == 1  # prepared once, shared by every child
    assert {c.data.tags["mlflow.project.env"] for c in children} == {"docker"}
    name = proj.joinpath("MLproject").read_text().split()[1]
    assert len(engine.images(f"mlexec.project={name}")) == 1
    # no_leftovers (through docker_project) checks that no container outlives the sweep
