"""Mistakes stop `mlexec run -b slurm` before any run or job exists: one message, with a hint."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from mlexec_core.testing import assert_no_traceback

from mlexec_slurm_testkit import queued_jobs

PROJECT = """
name: slurm-errors
entry_points:
  main:
    command: "echo ran"
"""


def refused(proc, store, *needles: str) -> None:
    text = proc.stderr
    assert proc.returncode != 0, proc.stdout
    for needle in needles:
        assert needle in text, text
    assert "hint:" in text, text
    assert store.runs() == [], "a run was created"
    assert "ran" not in proc.stdout
    assert_no_traceback(proc)


@pytest.mark.parametrize("config, needles", [
    ("partiton: debug\n", ["unknown --backend-config key 'partiton'", "did you mean 'partition'?"]),
    ("time: '1:99:00'\n", ["'time'", "is not a Slurm time"]),
    ("time: soon\n", ["'time'", "is not a Slurm time", "hours:minutes:seconds"]),
    ("mem: 4GB\n", ["'mem'", "not a Slurm memory size"]),
    ("mem: 4G\nmem-per-cpu: 1G\n", ["exclude each other"]),
    ("ntasks: 0\n", ["'ntasks' must be at least 1"]),
    ("cpus-per-task: two\n", ["'cpus-per-task' must be a whole number"]),
    ("gres: 'gpu:a100:two'\n", ["'gres'", "not a generic resource"]),
    ("exclusive: maybe\n", ["'exclusive' must be true, false"]),
    ("env: {'1BAD': x}\n", ["'env'", "not an environment variable name"]),
    ("sbatch-args: ['--output=/tmp/x']\n", ["--output is not allowed"]),
    ("sbatch-args: ['begin=now']\n", ["'sbatch-args'", "is not an option"]),
    ("setup: {module: cuda}\n", ["'setup' must be a list of shell lines"]),
])
def test_config_mistakes_name_the_key(mlexec, project, store, slurm_config, config, needles):
    proc = mlexec("run", project(PROJECT), "-b", "slurm", "-c", slurm_config(config))
    refused(proc, store, *needles)


def test_config_mistakes_are_caught_by_dry_run_too(mlexec, project, store, slurm_config):
    proc = mlexec("run", project(PROJECT), "-b", "slurm", "-c", slurm_config("qos: [a, b]\n"), "--dry-run")
    refused(proc, store, "'qos' must be a string")


@pytest.mark.parametrize("config, needles", [
    ("partition: nosuch\n", ["the cluster refuses the job", "nosuch"]),
    ("time: '2:00:00'\n", ["the cluster refuses the job", "time limit"]),
    ("nodes: 5\n", ["the cluster refuses the job"]),
    ("account: nosuch\n", ["the cluster refuses the job", "Invalid account"]),  # associations are enforced
])
def test_options_the_cluster_refuses_stop_before_any_run(mlexec, project, store, slurm_config, slurm, config,
                                                          needles, shared_dir):
    before = queued_jobs()
    proc = mlexec("run", project(PROJECT), "-b", "slurm", "-c", slurm_config(config))
    refused(proc, store, *needles)
    assert queued_jobs() == before
    assert not (shared_dir / "jobs").exists() or not list((shared_dir / "jobs").iterdir())
    assert not (shared_dir / "envs").exists()  # asked before the (virtualenv) environment was built


def test_no_slurm_client_on_path(mlexec, project, store, slurm_config, tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with a shell but no Slurm commands
    bin_dir.mkdir()
    for tool in ("bash", "sh"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    proc = mlexec("run", project(PROJECT), "-b", "slurm", "-c", slurm_config(), "--env-manager", "local",
                  env={"PATH": f"{Path(sys.executable).parent}{os.pathsep}{bin_dir}"})
    refused(proc, store, "the Slurm client command sbatch is not on PATH", "slurm-client")


def test_controller_unreachable(mlexec, project, store, slurm_config, slurm, tmp_path):
    conf = Path("/etc/slurm/slurm.conf").read_text()
    lines = [line for line in conf.splitlines() if not line.startswith(("SlurmctldHost", "SlurmctldPort"))]
    bad = tmp_path / "slurm.conf"
    bad.write_text("\n".join(["SlurmctldHost=nowhere(127.0.0.1)", "SlurmctldPort=1", *lines]) + "\n")
    proc = mlexec("run", project(PROJECT), "-b", "slurm", "-c", slurm_config(), "--env-manager", "local",
                  env={"SLURM_CONF": str(bad)})
    refused(proc, store, "the Slurm controller is unreachable", str(bad))


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_docker_env_project_is_refused_with_the_extension_point(mlexec, project, store, slurm_config, dry_run):
    proj = project("""
        name: in-docker
        docker_env: {image: mlexec-test/busybox:1}
        entry_points:
          main: {command: "echo ran"}
        """)
    proc = mlexec("run", proj, "-b", "slurm", "-c", slurm_config(), *dry_run)
    refused(proc, store, "cannot run a docker_env project", "Apptainer", "Containers")
