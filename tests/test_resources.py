"""Declaring what a run needs (issue 20): the MLproject's ``resources:``, ``-R``, sweep files and the
API, read strictly into one record, shown by ``--dry-run``, tagged on the run, and refused before
anything exists when the backend does not honour a key.  The real CLI and a real MLflow store;
what each backend makes of the record is tested with the backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlexec_core.resources import ResourceValueError, Resources, parse_duration, parse_size, time_limit_reason
from mlexec_core.testing import assert_no_traceback

PROJECT = """
name: res
resources: {cpus: 2, time: 1h}
entry_points:
  main:
    resources: {time: 30m, memory: 1Gi}
    command: "echo main"
  plain:
    command: "echo plain"
  kind:
    resources: {gpu-type: A100}
    command: "echo kind"
"""


@pytest.mark.parametrize("text, size", [
    ("512M", 512 * 2**20), ("16G", 16 * 2**30), ("16Gi", 16 * 2**30), ("1T", 2**40), ("1.5g", 3 * 2**29),
    ("64mb", 64 * 2**20), ("100K", 102400), ("2 GiB", 2 * 2**30),
])
def test_sizes_are_binary_as_slurm_and_docker_read_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("1.5h", 5400),
    ("1:30:00", 5400), ("30:00", 1800), ("2-00:00:00", 172800), ("1-12", 129600), ("0-00:05", 300),
])
def test_durations_in_every_spelling_slurm_users_write(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("parse, value, says", [
    (parse_size, "16", "has no unit"), (parse_size, 16, "has no unit"), (parse_size, "16X", "expected a size"),
    (parse_size, "0G", "above 0"), (parse_duration, 90, "has no unit"), (parse_duration, "90", "has no unit"),
    (parse_duration, "2 weeks", "expected a duration"), (parse_duration, "0s", "above 0"),
])
def test_bad_values_say_what_is_expected(parse, value, says):
    with pytest.raises(ResourceValueError, match=says):
        parse(value)


def test_the_record_shows_values_as_a_user_writes_them():
    r = Resources(cpus=0.5, memory=1536 * 2**20, gpus=1, time=5400.0)
    assert r.shown() == {"cpus": "0.5", "memory": "1536M", "gpus": "1", "time": "1h30m"}
    assert time_limit_reason(7200) == "time limit 2h reached"
    assert Resources(cpus=2.0).merged(Resources(time=60.0)) == Resources(cpus=2.0, time=60.0)
    assert not Resources()


def _plan(mlexec, proj, *args):
    proc = mlexec("run", proj, "--env-manager", "local", "--dry-run", "--json", *args, cwd=proj)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_top_level_is_the_default_and_an_entry_point_overrides_it_key_by_key(mlexec, project):
    proj = project(PROJECT)
    assert _plan(mlexec, proj)["resources"] == {"cpus": "2", "memory": "1G", "time": "30m"}
    assert _plan(mlexec, proj, "-e", "plain")["resources"] == {"cpus": "2", "time": "1h"}
    # a script run as an entry point gets the top level's
    (proj / "train.py").write_text("print('t')\n")
    assert _plan(mlexec, proj, "-e", "train.py")["resources"] == {"cpus": "2", "time": "1h"}


def test_dash_r_overrides_the_file_and_none_drops_a_key(mlexec, project):
    proj = project(PROJECT)
    plan = _plan(mlexec, proj, "-R", "time=2h", "-R", "cpus=none", "-R", "memory=none")
    assert plan["resources"] == {"time": "2h"}
    assert "time" in plan["honoured_resources"]
    proc = mlexec("run", proj, "--env-manager", "local", "--dry-run", "-R", "time=90s", "-R", "memory=none",
                  "-R", "cpus=none", cwd=proj)
    assert proc.returncode == 0, proc.stderr
    assert "time=1m30s" in proc.stdout


@pytest.mark.parametrize("args, says", [
    (["-R", "tme=1h"], "-R tme: unknown resource 'tme'"),
    (["-R", "memory=16"], "-R memory: '16' has no unit"),
    (["-R", "gpus=1.5"], "-R gpus: 1.5: expected a whole number of GPUs"),
    (["-R", "cpus=-1"], "-R cpus: -1 cores: expected a number above 0"),
    (["-R", "time"], "-R 'time' must be NAME=VALUE"),
    (["-R", "time=1h", "-R", "time=2h"], "-R time is given twice"),
])
def test_a_bad_dash_r_is_one_error_before_any_run(mlexec, project, store, args, says):
    proj = project(PROJECT)
    proc = mlexec("run", proj, "-e", "plain", "--env-manager", "local", *args, cwd=proj, check=2)
    assert_no_traceback(proc)
    assert says in proc.stderr, proc.stderr
    assert store.runs() == []


@pytest.mark.parametrize("block, says", [
    ("resources: {cpu: 2}", "resources.cpu: unknown resource 'cpu'"),
    ("resources: {memory: 16}", "resources.memory: '16' has no unit"),
    ("resources: {time: 1:30:00}", "resources.time: 5400 has no unit"),  # YAML 1.1 reads it as a number
    ("resources: [cpus]", "resources: expected a mapping of resources to values, got a list"),
    ("resources: {gpus: two}", "resources.gpus: 'two': expected a whole number of GPUs"),
])
def test_a_bad_resources_block_names_the_file_and_key(mlexec, project, store, block, says):
    proj = project(f"name: bad\n{block}\nentry_points:\n  main:\n    command: echo hi\n")
    proc = mlexec("run", proj, "--env-manager", "local", cwd=proj, check=2)
    assert_no_traceback(proc)
    assert "MLproject" in proc.stderr and says in proc.stderr, proc.stderr
    assert store.runs() == []


def test_an_entry_points_bad_resources_name_it(mlexec, project):
    proj = project("entry_points:\n  main:\n    resources: {shm: lots}\n    command: echo hi\n")
    proc = mlexec("run", proj, "--env-manager", "local", cwd=proj, check=2)
    assert "entry_points.main.resources.shm: 'lots': expected a size" in proc.stderr, proc.stderr


def test_a_resource_the_backend_does_not_honour_is_refused_naming_what_to_do(mlexec, project, store):
    proj = project(PROJECT)
    proc = mlexec("run", proj, "-e", "kind", "--env-manager", "local", "-R", "cpus=none", "-R", "time=none",
                  cwd=proj, check=2)
    assert_no_traceback(proc)
    assert "-b local cannot honour the resource gpu-type: A100 (entry_points.kind.resources in MLproject)" \
        in proc.stderr, proc.stderr
    assert "pass -R gpu-type=none to run without it" in proc.stderr
    assert "kind" not in proc.stdout
    assert store.runs() == []
    proc = mlexec("run", proj, "-e", "plain", "--env-manager", "local", "-R", "gpu-type=h100", "-R", "cpus=none",
                  cwd=proj, check=2)
    assert "cannot honour the resource -R gpu-type=h100" in proc.stderr and "leave out -R gpu-type" in proc.stderr


def test_a_backend_that_declares_nothing_honours_nothing(project, store, monkeypatch):
    """A third-party backend without a ``resources`` declaration gets the refusal, never a silent ignore."""
    import types

    import mlexec_core
    from mlexec_core.builtins.local import LocalBackend
    from mlexec_core.errors import UsageError
    from mlexec_core.plugin import Registration, hookimpl
    from mlexec_core.plugin.manager import build_plugins

    class Quiet(LocalBackend):
        pass

    module = types.ModuleType("quiet_plugin")
    module.mlexec_backends = hookimpl(lambda: [Registration(kind="backend", name="quiet", path=Quiet)])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    plugins = build_plugins(entry_points=False, extra=[("quiet", module)])
    proj = project(PROJECT)
    with pytest.raises(UsageError) as info:
        mlexec_core.run(str(proj), "plain", backend="quiet", env_manager="local", plugins=plugins)
    assert "-b quiet cannot honour the resource cpus: 2 (resources in MLproject)" in str(info.value)
    assert "it honours no resources" in str(info.value)
    assert store.runs() == []
    mlexec_core.run(str(proj), "plain", backend="quiet", env_manager="local", plugins=plugins,
                    resources={"cpus": None, "time": None})
    assert store.only_run().info.status == "FINISHED"


def test_the_run_is_tagged_with_what_it_asked_for(mlexec, project, store):
    proj = project(PROJECT)
    mlexec("run", proj, "-e", "plain", "--env-manager", "local", "-R", "cpus=none", "-R", "time=10m", cwd=proj,
           check=0)
    tags = store.only_run().data.tags
    assert tags["mlexec.resources.time"] == "10m"
    assert "mlexec.resources.cpus" not in tags


def test_sweep_children_get_the_sweep_files_resources_under_dash_r(mlexec, project, store):
    proj = project(PROJECT)
    (proj / "sweep.yaml").write_text("parameters: {}\nresources: {time: 20m, cpus: none}\n")
    proc = mlexec("sweep", proj, "-e", "plain", "-P", "x=1,2", "--sweep-file", "sweep.yaml", "--env-manager",
                  "local", "--dry-run", "--json", cwd=proj)
    assert proc.returncode == 2 and "resources.cpus" in proc.stderr, proc.stderr  # none is for -R only
    (proj / "sweep.yaml").write_text("parameters: {}\nresources: {time: 20m}\n")
    proc = mlexec("sweep", proj, "-e", "plain", "-P", "x=1,2", "--sweep-file", "sweep.yaml", "--env-manager",
                  "local", "-R", "cpus=none", "--dry-run", "--json", cwd=proj)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["plan"]["resources"] == {"time": "20m"}
    proc = mlexec("sweep", proj, "-e", "plain", "-P", "x=1,2", "--sweep-file", "sweep.yaml", "--env-manager",
                  "local", "-R", "cpus=none", "-R", "time=5m", cwd=proj)
    assert proc.returncode == 0, proc.stderr
    children = [r for r in store.runs() if r.data.tags.get("mlexec.sweep") != "parent"]
    assert len(children) == 2
    assert {c.data.tags["mlexec.resources.time"] for c in children} == {"5m"}


def test_a_bad_sweep_file_resource_names_the_file(mlexec, project, store):
    proj = project(PROJECT)
    (proj / "sweep.yaml").write_text("parameters: {x: [1, 2]}\nresources: {gpus: lots}\n")
    proc = mlexec("sweep", proj, "--sweep-file", "sweep.yaml", "--env-manager", "local", cwd=proj, check=2)
    assert "sweep.yaml" in proc.stderr and "resources.gpus: 'lots'" in proc.stderr, proc.stderr
    assert store.runs() == []


def test_the_python_api_takes_resources(project, store, cli_env, monkeypatch):
    import mlexec_core
    from mlexec_core.errors import UsageError

    for key, value in cli_env.items():
        monkeypatch.setenv(key, value)
    proj = project(PROJECT)
    submitted = mlexec_core.run(str(proj), "plain", env_manager="local",
                                resources={"cpus": None, "time": "15m"})
    assert submitted.plan.resources == Resources(time=900.0)
    assert store.only_run().data.tags["mlexec.resources.time"] == "15m"
    with pytest.raises(UsageError, match="cannot honour the resource resources gpu-type=A100"):
        mlexec_core.run(str(proj), "plain", env_manager="local", resources={"gpu_type": "A100", "cpus": None})


def test_a_time_limit_stops_the_whole_group_and_fails_with_the_reason(mlexec, project, store):
    proj = project("entry_points:\n  main:\n    command: 'sleep 60 & echo \"pids $$ $!\"; wait'\n")
    proc = mlexec("run", proj, "--env-manager", "local", "-R", "time=1s", cwd=proj, check=1)
    assert_no_traceback(proc)
    assert proc.stderr.strip().splitlines()[-1].endswith("failed: time limit 1s reached ===")
    run = store.only_run()
    assert run.info.status == "FAILED" and run.data.tags["mlexec.failureReason"] == "time limit 1s reached"
    from mlexec_core.testing import assert_processes_gone

    pids = [int(p) for p in proc.stdout.split("pids ", 1)[1].split()[:2]]
    assert_processes_gone(pids, timeout=5)


@pytest.mark.slow
def test_mlflow_run_ignores_the_resources_keys(mlexec, project, tmp_path, store):
    """A project with ``resources:`` still runs with ``mlflow run`` itself (MLflow ignores the keys)."""
    proj = project(PROJECT.replace("echo main", "echo ran-by-mlflow"))
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(proj), "--env-manager", "local"],
                          cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": store.uri},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ran-by-mlflow" in proc.stdout
    assert store.only_run().info.status == "FINISHED"


def test_describe_shows_what_each_entry_point_needs(mlexec, project):
    proj = project(PROJECT)
    proc = mlexec("describe", proj, "--json", check=0)
    needs = {ep["name"]: ep["resources"] for ep in json.loads(proc.stdout)["entry_points"]}
    assert needs == {"main": {"cpus": "2", "memory": "1G", "time": "30m"}, "plain": {"cpus": "2", "time": "1h"},
                     "kind": {"cpus": "2", "gpu-type": "A100", "time": "1h"}}
    proc = mlexec("describe", proj, check=0)
    assert "main\tcpus=2, memory=1G, time=30m" in proc.stdout, proc.stdout


def test_resume_keeps_the_sweeps_resources(mlexec, project, store):
    proj = project("entry_points:\n  main:\n    parameters: {code: int}\n    command: exit {code}\n")
    proc = mlexec("sweep", proj, "--env-manager", "local", "-P", "code=0,3", "-R", "time=7m", cwd=proj, check=1)
    [parent] = [r for r in store.runs() if r.data.tags.get("mlexec.sweep") == "parent"]
    mlexec("sweep", "--resume", parent.info.run_id, cwd=proj, check=1)
    children = [r for r in store.runs() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3, proc.stderr  # the failed one ran again
    assert {c.data.tags["mlexec.resources.time"] for c in children} == {"7m"}
