"""`mlexec sweep --strategy optuna`: the real CLI, real children logging a real metric with mlflow,
a real sqlite store read back with MlflowClient."""

from __future__ import annotations

import json
import sys

from mlexec_core.testing import assert_no_traceback

QUADRATIC = """
entry_points:
  main:
    parameters:
      x: float
      shift: {type: float, default: 0.3}
      opt: {type: string, default: a}
    command: >-
      n=$(ls "$DONE" | wc -l); [ "$n" -lt "$LIMIT" ] || { echo "over the limit" >&2; exit 1; };
      touch "$DONE/$$";
      "$PYTHON" -c "import mlflow; mlflow.log_metric('loss', ({x} - {shift}) ** 2 + (0.5 if '{opt}' == 'b' else 0))"
"""


def sweep_runs(store):
    runs = store.runs()
    [parent] = [r for r in runs if r.data.tags.get("mlexec.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_tpe_sweep_ranks_children_and_records_the_best(mlexec, project, store, tmp_path):
    proj = project(QUADRATIC)
    done = tmp_path / "done"
    done.mkdir()
    env = {"DONE": str(done), "LIMIT": "1000", "PYTHON": sys.executable}
    args = ["sweep", proj, "--env-manager", "local", "--strategy", "optuna", "--trials", "5", "--seed", "1",
            "--metric", "loss", "-P", "x=uniform(-1, 1)", "-P", "opt=a,b", "--max-parallel", "2"]
    dry = mlexec(*args, "--dry-run", "--json", env=env, check=0)
    space = json.loads(dry.stdout)["space"]
    assert space["parameters"]["x"] == {"kind": "uniform", "low": -1.0, "high": 1.0}
    assert space["direction"] == "minimize" and store.runs() == []

    proc = mlexec(*args, "--json", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    parent, children = sweep_runs(store)
    assert parent.info.status == "FINISHED" and len(children) == 5
    assert {c.info.status for c in children} == {"FINISHED"}
    losses = {c.info.run_id: c.data.metrics["loss"] for c in children}
    best = min(losses, key=losses.get)
    assert parent.data.tags["mlexec.sweep.bestRunId"] == best
    assert float(parent.data.tags["mlexec.sweep.bestValue"]) == losses[best]
    assert summary["best"]["run_id"] == best
    assert [c["metric"] for c in summary["children"]] == sorted(losses.values())
    for c in children:
        assert -1 <= float(c.data.params["x"]) <= 1 and c.data.params["opt"] in {"a", "b"}


def test_resume_gives_the_finished_trials_to_the_study(mlexec, project, store, tmp_path):
    proj = project(QUADRATIC)
    done = tmp_path / "done"
    done.mkdir()
    args = ["--strategy", "optuna", "--trials", "4", "--seed", "2", "--metric", "loss", "--goal", "maximize"]
    proc = mlexec("sweep", proj, "--env-manager", "local", *args, "-P", "x=uniform(-1, 1)", "--max-parallel", "1",
                  env={"DONE": str(done), "LIMIT": "2", "PYTHON": sys.executable}, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "over the limit" not in proc.stdout  # child output is the child's, kept with its run
    parent, children = sweep_runs(store)
    assert parent.info.status == "FAILED"
    assert sorted(c.info.status for c in children) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]

    proc = mlexec("sweep", "--resume", parent.info.run_id, "--json",
                  env={"DONE": str(done), "LIMIT": "1000", "PYTHON": sys.executable}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    parent, children = sweep_runs(store)
    assert parent.info.status == "FINISHED"
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 4  # the two from before and two new ones: the same number of trials
    new = [c for c in summary["children"] if not c["resumed"]]
    assert len(new) == 2 and min(c["trial"] for c in new) >= 4  # numbering goes on
    losses = [c.data.metrics["loss"] for c in finished]
    assert summary["best"]["value"] == max(losses)  # --goal maximize came from the parent run
    assert parent.data.tags["mlexec.sweep.bestValue"] == repr(max(losses))


def test_optuna_needs_a_metric_and_something_to_search(mlexec, project, store):
    proj = project(QUADRATIC)
    proc = mlexec("sweep", proj, "--env-manager", "local", "--strategy", "optuna", "--trials", "3",
                  "-P", "x=uniform(0, 1)")
    assert proc.returncode == 2 and "needs --metric NAME" in proc.stderr
    proc = mlexec("sweep", proj, "--env-manager", "local", "--strategy", "optuna", "--trials", "3",
                  "--metric", "loss", "-P", "x=0.5")
    assert proc.returncode == 2 and "nothing to search" in proc.stderr
    assert_no_traceback(proc)
    assert store.runs() == []
