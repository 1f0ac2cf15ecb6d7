"""A sweep on Slurm as one job array, through the real CLI, on the real cluster, into a real store."""

from __future__ import annotations

import json
import os
import shutil
import signal

from mlexec_core.testing import assert_no_traceback, wait_until

from mlexec_slurm_testkit import queued_jobs

PROJECT = """
name: slurm-array
entry_points:
  main:
    parameters:
      x: {type: int, default: 0}
      stamps: string
    command: "echo start-{x}; python3 -c 'import time; print(time.time())' > {stamps}/{x}.start; sleep 1.5; python3 -c 'import time; print(time.time())' > {stamps}/{x}.end; echo end-{x}; [ {x} -ne 3 ] || exit 7"
  sleep:
    parameters:
      x: {type: int, default: 0}
    command: "echo started-{x}; sleep 300"
"""


def children(store):
    return [r for r in store.runs() if r.data.tags.get("mlexec.sweep.trial") is not None
            or r.data.tags.get("mlflow.parentRunId")]


def test_grid_sweep_is_one_array_within_its_bound_a_failing_task_fails_its_child_then_resume(
        mlexec, project, store, slurm_config, shared_dir, tmp_path, no_jobs_left):
    proj = project(PROJECT)
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    config = slurm_config("time: '5:00'\n")
    # squeue through a wrapper that writes down how it was asked
    wrapper, calls = tmp_path / "bin", tmp_path / "squeue-calls"
    wrapper.mkdir()
    (wrapper / "squeue").write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {shutil.which("squeue")} "$@"\n')
    (wrapper / "squeue").chmod(0o755)
    proc = mlexec("sweep", proj, "-b", "slurm", "-c", config, "--env-manager", "local", "-P", "x=0,1,2,3,4",
                  "-P", f"stamps={stamps}", "--max-parallel", "2", check=None,
                  env={"PATH": f"{wrapper}{os.pathsep}{os.environ['PATH']}"})
    assert_no_traceback(proc)
    assert proc.returncode != 0  # child 3 exits 7
    kids = children(store)
    assert len(kids) == 5
    tags = [k.data.tags for k in kids]
    arrays = {t["mlexec.slurm.array-job-id"] for t in tags}
    assert len(arrays) == 1  # one sbatch for all five children
    array = arrays.pop()
    assert sorted(t["mlexec.slurm.job-id"] for t in tags) == [f"{array}_{i}" for i in range(5)]
    assert f"Submitted Slurm job array {array} (5 tasks, 0-4%2)" in proc.stderr
    # the children follow their tasks through one squeue of the whole array, never one each
    asked = calls.read_text().splitlines()
    assert asked and all(f"-j {array}_" not in line for line in asked), asked
    assert any(f"-r -j {array} " in line for line in asked), asked
    by_x = {k.data.params["x"]: k for k in kids}
    assert {x: k.info.status for x, k in by_x.items()} == {
        "0": "FINISHED", "1": "FINISHED", "2": "FINISHED", "3": "FAILED", "4": "FINISHED"}
    for x, k in by_x.items():  # each child's own output, kept with its run
        text = store.client.download_artifacts(k.info.run_id, "mlexec/output.log", str(tmp_path / f"o{x}"))
        assert f"start-{x}" in open(text).read()
        others = [f"start-{y}" for y in range(5) if str(y) != x]
        assert not any(o in open(text).read() for o in others)
        assert k.data.tags["mlexec.slurm.array-task-id"] == x  # grid order: task i is child i
    # %2 honoured: from the children's own clocks, never more than two at once
    spans = [(float((stamps / f"{x}.start").read_text()), float((stamps / f"{x}.end").read_text()))
             for x in range(5)]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    assert not list((shared_dir / "jobs").iterdir())  # the array's folder went with its last task
    parent = next(r for r in store.runs() if r.info.run_id not in {k.info.run_id for k in kids})
    assert parent.info.status == "FAILED"

    # resume: only the failed child goes in the new array
    for f in stamps.iterdir():
        f.unlink()
    again = mlexec("sweep", "--resume", parent.info.run_id, "-c", config, check=None)
    assert_no_traceback(again)
    assert "Submitted Slurm job array" in again.stderr and "(1 tasks, 0-0)" in again.stderr
    assert sorted(p.name for p in stamps.iterdir()) == ["3.end", "3.start"]


def test_ctrl_c_cancels_the_array_and_leaves_nothing_queued(mlexec_background, project, store, slurm_config,
                                                            no_jobs_left):
    proj = project(PROJECT)
    before = queued_jobs()
    sweep = mlexec_background("sweep", proj, "-e", "sleep", "-b", "slurm", "-c", slurm_config(),
                              "--env-manager", "local", "-P", "x=0,1,2,3", "--max-parallel", "2")
    sweep.wait_for("Submitted Slurm job array")
    wait_until(lambda: sum(1 for r in store.runs() if r.info.status == "RUNNING"
                           and r.data.tags.get("mlflow.parentRunId")) == 2, 60, "two tasks running")
    sweep.signal(signal.SIGINT)
    proc = sweep.finish(timeout=90)
    assert_no_traceback(proc)
    assert proc.returncode != 0
    assert queued_jobs() - before == set()  # nothing of the array left, pending tasks included
    statuses = {r.info.status for r in store.runs()}
    assert statuses == {"KILLED"}


def test_dry_run_shows_the_array_script_and_options(mlexec, project, store, slurm_config, tmp_path):
    proj = project(PROJECT)
    proc = mlexec("sweep", proj, "-b", "slurm", "-c", slurm_config(), "--env-manager", "local",
                  "-P", "x=0,1,2", "-P", "stamps=/tmp", "--max-parallel", "2", "--dry-run", "--json")
    plan = json.loads(proc.stdout)
    assert "--array=0-2%2" in plan["fan_out"]["sbatch_options"]
    assert '/"$SLURM_ARRAY_TASK_ID"/job.sh' in plan["fan_out"]["array_script"]
    assert store.runs() == []


def test_retries_after_the_array_are_jobs_of_their_own_each_in_its_own_folder(
        mlexec, project, store, slurm_config, shared_dir, tmp_path, no_jobs_left):
    """Every child fails its first attempt (in the array); the three retries are single jobs
    submitted at once from the same prepared sweep: none may share another's script or output."""
    marks = tmp_path / "marks"
    marks.mkdir()
    proj = project(f"""
        name: slurm-retries
        entry_points:
          main:
            parameters: {{x: {{type: int, default: 0}}}}
            command: "echo child-{{x}}; [ -e {marks}/{{x}} ] || {{ touch {marks}/{{x}}; exit 3; }}; sleep 1; echo done-{{x}}"
    """)
    proc = mlexec("sweep", proj, "-b", "slurm", "-c", slurm_config(), "--env-manager", "local",
                  "-P", "x=0,1,2", "--retries", "1", "--max-parallel", "3", check=None)
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    kids = children(store)
    retried = [k for k in kids if k.data.tags.get("mlexec.sweep.attempt") == "2"]
    assert sorted(k.data.params["x"] for k in retried) == ["0", "1", "2"]
    assert all(k.info.status == "FINISHED" for k in retried)
    assert all("mlexec.slurm.array-job-id" not in k.data.tags for k in retried)  # single jobs
    for k in retried:
        x = k.data.params["x"]
        text = open(store.client.download_artifacts(k.info.run_id, "mlexec/output.log",
                                                    str(tmp_path / f"r{x}"))).read()
        assert f"done-{x}" in text and not any(f"child-{y}" in text for y in "012" if y != x)
    assert not list((shared_dir / "jobs").iterdir())  # every job removed its own folder
