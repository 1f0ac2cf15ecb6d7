"""Fixtures for mlexec-slurm's tests: a real Slurm cluster on this machine.

The cluster (munged, slurmctld, slurmd; one node, partition ``debug`` with a
60 minute MaxTime) comes from ``plugins/mlexec-slurm/ci-setup.sh``.  Without
it the tests that need it skip, saying why; when ``$CI`` is set they fail.
Every test checks that it leaves no job of its own in the queue.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from mlexec_core.testing import missing_infrastructure
from mlexec_slurm_testkit import queued_jobs, slurm_cmd

pytest_plugins = ["mlexec_core.testing"]



def _unavailable(reason: str):
    missing_infrastructure("Slurm cluster", reason, how="run as root: bash plugins/mlexec-slurm/ci-setup.sh")


@pytest.fixture(scope="session")
def slurm():
    """The cluster, up: the node idle (or busy) in partition debug."""
    if shutil.which("sbatch") is None:
        _unavailable("Slurm's client commands are not installed")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        _unavailable("no Slurm controller answers (scontrol ping did not return within 30 s)")
    if ping.returncode != 0 or "UP" not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip().splitlines()
        _unavailable(f"no Slurm controller answers ({said[0] if said else f'scontrol ping: {ping.returncode}'})")
    for _ in range(50):
        state = slurm_cmd("sinfo", "-h", "-p", "debug", "-o", "%t", check=False).stdout.split()
        # plnd: up, planned by the backfill scheduler for a pending job (one requeued and held, say)
        if any(s in ("idle", "mix", "alloc", "plnd") for s in state):
            return
        time.sleep(0.2)
    _unavailable(f"the Slurm node is not up (sinfo says {state})")


@pytest.fixture
def no_jobs_left(slurm):
    """Fails the test when a job it submitted is still queued or running afterwards."""
    before = queued_jobs()
    yield
    left = queued_jobs() - before
    for job in left:  # clean up before failing, so one failure does not cascade
        slurm_cmd("scancel", job, check=False)
    assert not left, f"jobs left in the queue: {sorted(left)}"


@pytest.fixture
def shared_dir(tmp_path) -> Path:
    path = tmp_path / "shared"
    path.mkdir()
    return path


@pytest.fixture
def slurm_config(tmp_path, shared_dir):
    """Write a backend config file (YAML) with ``shared-dir`` in the test's folder."""

    def write(text: str = "", name: str = "slurm.yaml") -> Path:
        path = tmp_path / name
        path.write_text(f"shared-dir: {shared_dir}\n" + textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def blocker(slurm):
    """A job holding the whole node (``--exclusive``), so the next job pends on Resources."""
    ids = []

    def start() -> str:
        job = slurm_cmd("sbatch", "--parsable", "--exclusive", "--job-name=mlexec-test-blocker",
                        "--output=/dev/null", "--wrap", "sleep 300").stdout.strip()
        ids.append(job)
        for _ in range(100):
            if slurm_cmd("squeue", "-h", "-j", job, "-o", "%T").stdout.strip() == "RUNNING":
                return job
            time.sleep(0.1)
        raise AssertionError(f"the blocker job {job} did not start")

    yield start
    for job in ids:
        slurm_cmd("scancel", job, check=False)
    for _ in range(100):
        if not any(j in queued_jobs() for j in ids):
            break
        time.sleep(0.1)
