"""`mlexec sweep` end to end: the real CLI, real processes, a real sqlite store read back with MlflowClient."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mlexec_core.testing import MLEXEC, assert_no_traceback, wait_until

SWEPT = """
name: swept
entry_points:
  main:
    parameters:
      lr: {type: float, default: 0.1}
      epochs: {type: int, default: 1}
      fail_on: {type: string, default: none}
      nap: {type: float, default: 0}
    command: >-
      echo "start $(date +%s.%N)" > "$MARKS/{lr}-{epochs}.$$";
      echo "training lr={lr} epochs={epochs}";
      sleep {nap};
      echo "end $(date +%s.%N)" >> "$MARKS/{lr}-{epochs}.$$";
      if [ "{fail_on}" = "{lr}" ]; then echo "diverged at lr={lr}" >&2; exit 3; fi
"""


@pytest.fixture
def swept(project, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    return project(SWEPT), {"MARKS": str(marks)}, marks


def children_of(store, parent_id):
    return [r for r in store.runs() if r.data.tags.get("mlflow.parentRunId") == parent_id]


def parent_of(store):
    [parent] = [r for r in store.runs() if r.data.tags.get("mlexec.sweep") == "parent"]
    return parent


def test_grid_sweep_parent_and_children(mlexec, swept, store):
    proj, env, marks = swept
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "lr=0.1,0.2", "-P", "epochs=range(1, 4)",
                  "--max-parallel", "3", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    parent = parent_of(store)
    assert summary["parent_run_id"] == parent.info.run_id and summary["status"] == "FINISHED"
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.lr"] == "0.1,0.2" and parent.data.params["sweep.epochs"] == "range(1, 4)"
    spec = json.loads(parent.data.tags["mlexec.sweep.spec"])
    assert spec["strategy"] == "grid" and spec["parameters"]["lr"] == "0.1,0.2"
    children = children_of(store, parent.info.run_id)
    assert len(children) == 6
    combos = sorted((c.data.params["lr"], c.data.params["epochs"]) for c in children)
    assert combos == [(lr, e) for lr in ("0.1", "0.2") for e in ("1", "2", "3")]
    for child in children:
        tags = child.data.tags
        assert child.info.status == "FINISHED"
        assert child.info.experiment_id == parent.info.experiment_id
        assert tags["mlexec.sweep"] == parent.info.run_id and tags["mlexec.sweep.attempt"] == "1"
        assert tags["mlflow.project.entryPoint"] == "main" and tags["mlflow.source.type"] == "PROJECT"
        assert tags["mlflow.runName"].startswith(parent.info.run_name + "-")
    assert sorted(int(c.data.tags["mlexec.sweep.trial"]) for c in children) == list(range(6))
    assert len(list(marks.iterdir())) == 6
    assert [c["status"] for c in summary["children"]] == ["FINISHED"] * 6


def test_a_value_of_the_wrong_type_is_one_error_before_any_run(mlexec, swept, store):
    proj, env, marks = swept
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "epochs=5,7.5", env=env)
    assert proc.returncode == 2
    assert_no_traceback(proc)
    assert "epochs" in proc.stderr and "'7.5' is not an int" in proc.stderr
    assert "hint: epochs is declared as int" in proc.stderr
    assert store.runs() == [] and list(marks.iterdir()) == []


def test_a_sampled_domain_the_type_cannot_take(mlexec, swept, store):
    proj, env, _ = swept
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "epochs=uniform(1, 5)", "--trials", "3", env=env)
    assert proc.returncode == 2 and "uniform() draws floats, but epochs is a int" in proc.stderr
    assert "use int(low, high)" in proc.stderr
    assert store.runs() == []


def test_usage_errors(mlexec, swept, store, tmp_path):
    proj, env, _ = swept
    for args, message in [
        (["-P", "lr=uniform(0, 1)"], "the random strategy needs --trials N"),
        (["-P", "lr=0.1", "--strategy", "gird"], "unknown search strategy 'gird' (--strategy)"),
        ([], "nothing to sweep"),
        (["-P", "lr=0.1", "-e", "nope"], "unknown entry point 'nope'"),
        (["-P", "lr=0.1", "--sweep-file", str(tmp_path / "missing.yaml")], "missing.yaml"),
    ]:
        proc = mlexec("sweep", proj, "--env-manager", "local", *args, env=env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert_no_traceback(proc)
    (tmp_path / "sweep.yaml").write_text("parameters: {lr: [0.1]}\nmax_paralel: 2\n")
    proc = mlexec("sweep", proj, "--env-manager", "local", "--sweep-file", tmp_path / "sweep.yaml", env=env)
    assert proc.returncode == 2 and "unknown key 'max_paralel'" in proc.stderr and "max_parallel" in proc.stderr
    assert store.runs() == []


def test_the_bound_is_observed_from_the_childrens_own_times(mlexec, swept, store):
    proj, env, marks = swept
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "lr=0.1,0.2,0.3,0.4,0.5,0.6,0.7",
                  "-P", "nap=0.6", "--max-parallel", "3", env=env)
    assert proc.returncode == 0, proc.stderr
    spans = []
    for mark in marks.iterdir():
        lines = dict(line.split() for line in mark.read_text().splitlines())
        spans.append((float(lines["start"]), float(lines["end"])))
    assert len(spans) == 7
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    alive = most = 0
    for _, delta in events:
        alive += delta
        most = max(most, alive)
    assert most <= 3
    assert most >= 2  # children did run side by side


def test_random_sweep_draws_trials_with_a_seed(mlexec, swept, store):
    proj, env, _ = swept
    args = ["sweep", proj, "--env-manager", "local", "-P", "lr=uniform(0.01, 0.5)", "-P", "epochs=int(1, 9)",
            "--trials", "4", "--seed", "3"]
    dry = json.loads(mlexec(*args, "--dry-run", "--json", env=env, check=0).stdout)
    assert dry["strategy"] == "random" and dry["count"] == 4
    proc = mlexec(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    children = children_of(store, parent_of(store).info.run_id)
    assert len(children) == 4
    got = sorted((c.data.params["lr"], c.data.params["epochs"]) for c in children)
    assert got == sorted((c["params"]["lr"], c["params"]["epochs"]) for c in dry["children"])
    for lr, epochs in got:
        assert 0.01 <= float(lr) <= 0.5 and 1 <= int(epochs) <= 9


def test_dry_run_lists_children_and_creates_nothing(mlexec, swept, store):
    proj, env, marks = swept
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "lr=0.1,0.2", "-P", r"fail_on=a\,b",
                  "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "2 children, strategy grid" in proc.stdout
    assert "0.1\t1\ta,b" in proc.stdout or "0.1\ta,b" in proc.stdout
    assert "[ \"a,b\" = \"0.1\" ]" in proc.stdout
    data = json.loads(mlexec("sweep", proj, "--env-manager", "local", "-P", "lr=0.1,0.2", "--dry-run", "--json",
                             env=env, check=0).stdout)
    assert [c["params"]["lr"] for c in data["children"]] == ["0.1", "0.2"]
    assert data["plan"]["backend"] == "local"
    assert store.runs() == [] and list(marks.iterdir()) == []


def test_failure_is_reported_when_it_happens_and_the_parent_fails(mlexec, swept, store):
    proj, env, _ = swept
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "lr=0.1,0.2,0.3", "-P", "fail_on=0.2",
                  "--max-parallel", "1", env=env)
    assert proc.returncode == 1, proc.stderr
    assert_no_traceback(proc)
    assert "child 1 failed (lr=0.2 fail_on=0.2), exit code 3: the command exited with status 3" in proc.stderr
    parent = parent_of(store)
    assert parent.info.status == "FAILED"
    statuses = {c.data.params["lr"]: c.info.status for c in children_of(store, parent.info.run_id)}
    assert statuses == {"0.1": "FINISHED", "0.2": "FAILED", "0.3": "FINISHED"}
    assert "1 finished" not in proc.stderr and "2 finished, 1 failed" in proc.stderr
    # the failure's last lines are in the report; children's output never goes to the terminal raw
    assert "    | training lr=0.2 epochs=1\n" in proc.stderr and "    | diverged at lr=0.2\n" in proc.stderr
    assert "training" not in proc.stdout and "\ntraining lr=0.1" not in proc.stderr


def test_each_childs_output_is_kept_with_its_run(mlexec, swept, store, tmp_path):
    from mlexec_core.pipeline.output import ARTIFACT_PATH

    proj, env, _ = swept
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "lr=0.1,0.2", "-P", "fail_on=0.2", env=env)
    assert proc.returncode == 1
    for child in children_of(store, parent_of(store).info.run_id):
        dest = tmp_path / child.info.run_id
        dest.mkdir()
        log = Path(store.client.download_artifacts(child.info.run_id, ARTIFACT_PATH, str(dest))).read_text()
        lr = child.data.params["lr"]
        assert f"training lr={lr} epochs=1\n" in log
        assert ("diverged at lr=0.2" in log) == (lr == "0.2")


def test_max_failures_starts_no_new_children(mlexec, swept, store):
    proj, env, _ = swept
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "lr=0.1,0.2,0.3,0.4", "-P", "fail_on=0.1",
                  "--max-parallel", "1", "--max-failures", "1", env=env)
    assert proc.returncode == 1
    assert "--max-failures 1 reached" in proc.stderr
    parent = parent_of(store)
    assert parent.info.status == "FAILED"
    assert [c.info.status for c in children_of(store, parent.info.run_id)] == ["FAILED"]


def test_fail_fast_stops_the_running_children(mlexec, swept, store):
    proj, env, _ = swept
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "lr=0.1,0.2,0.3,0.4", "-P", "fail_on=0.1",
                  "-P", "nap=0,30", "--max-parallel", "2", "--fail-fast", env=env, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "--fail-fast" in proc.stderr
    parent = parent_of(store)
    assert parent.info.status == "FAILED"
    children = children_of(store, parent.info.run_id)
    assert len(children) == 2  # nothing started after the failure
    assert sorted(c.info.status for c in children) == ["FAILED", "KILLED"]


def test_retries_rerun_a_failed_child_as_new_runs(mlexec, project, store, tmp_path):
    proj = project("""
        entry_points:
          main:
            parameters: {n: int}
            command: "if [ {n} = 2 ] && [ ! -e $TRIES/seen ]; then touch $TRIES/seen; exit 1; fi"
        """)
    tries = tmp_path / "tries"
    tries.mkdir()
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "n=1,2", "--retries", "2", "--max-parallel", "1",
                  env={"TRIES": str(tries)})
    assert proc.returncode == 0, proc.stderr
    assert "retrying (attempt 2 of 3)" in proc.stderr
    parent = parent_of(store)
    assert parent.info.status == "FINISHED"
    runs = sorted((c.data.params["n"], c.data.tags["mlexec.sweep.attempt"], c.info.status)
                  for c in children_of(store, parent.info.run_id))
    assert runs == [("1", "1", "FINISHED"), ("2", "1", "FAILED"), ("2", "2", "FINISHED")]


def _start(cli_env, env, args, cwd):
    return subprocess.Popen([*MLEXEC, *map(str, args)], cwd=cwd, env={**cli_env, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _said(proc) -> str:
    """For a wait_until message: what mlexec said, when it has exited already."""
    return f" (mlexec exited {proc.returncode}: {proc.stderr.read()})" if proc.poll() is not None else ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


NAPPER = """
entry_points:
  main:
    parameters: {i: int}
    command: "echo $$ > $PIDS/{i}.pid; [ {i} -lt $QUICK ] || [ -e $PIDS/fast ] || { sleep 30 & wait; }; echo done > $PIDS/{i}.done"
"""
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_every_child_and_leaves_nothing(cli_env, project, store, tmp_path, signum):
    proj = project(NAPPER)
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = _start(cli_env, {"PIDS": str(pids), "QUICK": "0"},
                  ["sweep", proj, "--env-manager", "local", "-P", "i=range(0, 6)", "--max-parallel", "3"], tmp_path)
    wait_until(lambda: len(list(pids.glob("*.pid"))) == 3, 60, lambda: f"3 pid files{_said(proc)}")
    started = [int(p.read_text()) for p in pids.glob("*.pid")]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert not any(_alive(pid) for pid in started)
    parent = parent_of(store)
    assert parent.info.status == "KILLED"
    children = children_of(store, parent.info.run_id)
    assert len(children) == 3 and {c.info.status for c in children} == {"KILLED"}
    assert [r for r in store.runs() if r.info.status == "RUNNING"] == []
    assert len(list(pids.glob("*.pid"))) == 3  # no queued child started


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_resume_after_an_interrupted_sweep(cli_env, mlexec, project, store, tmp_path, how):
    proj = project(NAPPER)
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {"PIDS": str(pids), "QUICK": "2"}  # children 0 and 1 end at once, the others nap
    proc = _start(cli_env, env, ["sweep", proj, "--env-manager", "local", "-P", "i=range(0, 5)",
                                 "--max-parallel", "2"], tmp_path)
    wait_until(lambda: {p.name for p in pids.glob("*.pid")} >= {"2.pid", "3.pid"}, 60,
               lambda: f"children 2 and 3 to start{_said(proc)}")
    napping = [int((pids / f"{i}.pid").read_text()) for i in (2, 3)]
    proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    proc.communicate(timeout=60)
    try:
        parent = parent_of(store)
        assert parent.info.status == ("KILLED" if how == "ctrl-c" else "RUNNING")
        (pids / "fast").write_text("")
        resumed = mlexec("sweep", "--resume", parent.info.run_id, "--json", env=env, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert_no_traceback(resumed)
    finally:
        for pid in napping:  # what a SIGKILLed mlexec could not stop
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["parent_run_id"] == parent.info.run_id and summary["status"] == "FINISHED"
    by_trial = {c["trial"]: (c["status"], c["resumed"]) for c in summary["children"]}
    assert by_trial == {0: ("FINISHED", True), 1: ("FINISHED", True), 2: ("FINISHED", False),
                        3: ("FINISHED", False), 4: ("FINISHED", False)}
    assert store.client.get_run(parent.info.run_id).info.status == "FINISHED"
    runs = children_of(store, parent.info.run_id)
    assert sorted((int(r.data.tags["mlexec.sweep.trial"]), r.data.tags["mlexec.sweep.attempt"], r.info.status)
                  for r in runs) == [
        (0, "1", "FINISHED"), (1, "1", "FINISHED"),
        (2, "1", "KILLED" if how == "ctrl-c" else "FAILED"), (2, "2", "FINISHED"),
        (3, "1", "KILLED" if how == "ctrl-c" else "FAILED"), (3, "2", "FINISHED"),
        (4, "1", "FINISHED")]
    assert [r for r in store.runs() if r.info.status == "RUNNING"] == []


def test_resume_refuses_a_changed_spec_or_entry_point(mlexec, swept, store):
    proj, env, _ = swept
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "lr=0.1,0.2", "-P", "fail_on=0.2", env=env)
    assert proc.returncode == 1
    parent = parent_of(store).info.run_id
    proc = mlexec("sweep", "--resume", parent, "-P", "lr=0.1,0.3", env=env)
    assert proc.returncode == 2 and "parameter lr was 0.1,0.2, is now 0.1,0.3" in proc.stderr
    mlproject = proj / "MLproject"
    mlproject.write_text(mlproject.read_text().replace("exit 3", "exit 4"))
    proc = mlexec("sweep", "--resume", parent, env=env)
    assert proc.returncode == 2 and "entry point 'main' changed since the sweep started" in proc.stderr
    assert_no_traceback(proc)
    proc = mlexec("sweep", "--resume", "0" * 32, env=env)
    assert proc.returncode == 2 and "no such run" in proc.stderr


def test_resume_reruns_failed_children_only(mlexec, swept, store):
    proj, env, marks = swept
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "lr=0.1,0.2,0.3", "-P", "fail_on=0.2", env=env)
    assert proc.returncode == 1
    parent = parent_of(store).info.run_id
    proc = mlexec("sweep", "--resume", parent, "--json", env=env)
    assert proc.returncode == 1  # fail_on=0.2 still fails: same spec, same outcome
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["parent_run_id"] == parent
    resumed = {c["params"]["lr"]: (c["status"], c["attempt"], c["resumed"]) for c in summary["children"]}
    assert resumed == {"0.1": ("FINISHED", 1, True), "0.3": ("FINISHED", 1, True), "0.2": ("FAILED", 2, False)}
    children = children_of(store, parent)
    assert len(children) == 4 and len(list(marks.iterdir())) == 4


COUNTED = """
entry_points:
  main:
    parameters: {lr: float, epochs: int}
    command: "echo $$ > $PIDS/$MLFLOW_RUN_ID.pid; [ -e $PIDS/fast ] || [ -e $FAST/{lr}-{epochs} ] || { sleep 30 & wait; }"
"""


@pytest.mark.parametrize("search", [
    ["-P", "lr=loguniform(0.0001, 1)", "-P", "epochs=int(1, 50)", "--trials", "6", "--seed", "11"],
    ["-P", "lr=0.1,0.2,0.3", "-P", "epochs=1,2"],  # (not in alphabetical order: the numbering must not change)
], ids=["random", "grid"])
def test_resume_continues_the_same_children(cli_env, mlexec, project, store, tmp_path, search):
    proj = project(COUNTED)
    pids = tmp_path / "pids"
    pids.mkdir()
    fast = tmp_path / "fast"
    fast.mkdir()
    env = {"PIDS": str(pids), "FAST": str(fast)}
    args = ["sweep", proj, "--env-manager", "local", *search, "--max-parallel", "2"]
    dry = json.loads(mlexec(*args, "--dry-run", "--json", env=env).stdout)
    planned = [(c["params"]["lr"], c["params"]["epochs"]) for c in dry["children"]]
    assert len(planned) == 6 and len(set(planned)) == 6
    for lr, epochs in planned[:2]:  # children 0 and 1 end at once, the next ones nap (by their values: no race)
        (fast / f"{lr}-{epochs}").write_text("")
    proc = _start(cli_env, env, args, tmp_path)
    wait_until(lambda: len(list(pids.iterdir())) == 4, 60, lambda: f"4 files in pids{_said(proc)}")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    parent = parent_of(store)
    assert parent.info.status == "KILLED"
    first = {int(r.data.tags["mlexec.sweep.trial"]): r for r in children_of(store, parent.info.run_id)}
    assert sorted((n, r.info.status) for n, r in first.items()) == [
        (0, "FINISHED"), (1, "FINISHED"), (2, "KILLED"), (3, "KILLED")]
    (pids / "fast").write_text("")
    resumed = mlexec("sweep", "--resume", parent.info.run_id, "--json", env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert_no_traceback(resumed)
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["status"] == "FINISHED" and summary["counts"]["finished"] == 6
    assert {c["trial"]: c["resumed"] for c in summary["children"]} == {
        0: True, 1: True, 2: False, 3: False, 4: False, 5: False}  # the finished ones are not run again
    runs = children_of(store, parent.info.run_id)
    assert len(runs) == 8  # 6 trials; trials 2 and 3 twice (killed, then finished)
    assert len(list(pids.glob("*.pid"))) == 8
    for run in runs:  # same draws (same seed) or the same grid: each trial has the parameters it would have had
        trial = int(run.data.tags["mlexec.sweep.trial"])
        assert (run.data.params["lr"], run.data.params["epochs"]) == planned[trial]
    finished = sorted(int(r.data.tags["mlexec.sweep.trial"]) for r in runs if r.info.status == "FINISHED")
    assert finished == [0, 1, 2, 3, 4, 5]
    assert store.client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert [r for r in store.runs() if r.info.status == "RUNNING"] == []
