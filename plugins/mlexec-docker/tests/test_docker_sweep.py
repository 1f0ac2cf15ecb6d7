"""`mlexec sweep` of a docker_env project on the real Docker engine: one image for every child."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from mlexec_core.testing import MLEXEC, assert_no_traceback, wait_until


def processes_of(run_ids) -> list[int]:
    """Pids on this machine (containers' processes included) whose environment names one of ``run_ids``."""
    needles = [f"MLFLOW_RUN_ID={r}".encode() for r in run_ids]
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read()
            except OSError:
                continue
            if any(n in environ for n in needles):
                found.append(int(entry))
    return found


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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_every_container_and_starts_no_queued_child(cli_env, docker_project, store, busybox_image,
                                                                   engine, tmp_path, signum):
    proj = docker_project(f"image: {busybox_image}", """
        main:
          parameters: {i: int}
          command: "sleep 60"
        """)
    name = proj.joinpath("MLproject").read_text().split()[1]
    proc = subprocess.Popen([*MLEXEC, "sweep", str(proj), "-P", "i=range(0, 6)", "--max-parallel", "3"],
                            cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running():
        return [c for c in engine.containers(f"mlexec.project={name}") if c["State"] == "running"]

    wait_until(lambda: len(running()) == 3 or proc.poll() is not None, 120, "3 running containers")
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert engine.containers(f"mlexec.project={name}") == []  # stopped and removed, every one
    runs = store.runs()
    [parent] = [r for r in runs if r.data.tags.get("mlexec.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "KILLED"
    assert len(children) == 3 and {c.info.status for c in children} == {"KILLED"}  # no queued child started
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    assert processes_of([c.info.run_id for c in children]) == [], "a child's process outlived the sweep"
