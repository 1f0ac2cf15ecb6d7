"""kill -9 of mlexec while its Slurm job is queued or running: the reaper cancels the job,
and the next mlexec command on the store ends the run (a queued run too: SCHEDULED)."""

from __future__ import annotations

import signal
import subprocess

import pytest

from mlexec_core.testing import MLEXEC, assert_no_traceback, wait_until

from mlexec_slurm_testkit import queued_jobs

PROJECT = """
name: slurm-reaper
entry_points:
  sleep: {command: "echo started; sleep 300"}
"""


@pytest.mark.parametrize("when", ["running", "pending"])
def test_sigkill_of_mlexec_cancels_its_job_and_the_run_is_repaired(cli_env, project, store, slurm_config, tmp_path,
                                                                   no_jobs_left, blocker, mlexec, when):
    if when == "pending":
        blocker()
    proj = project(PROJECT)
    proc = subprocess.Popen([*MLEXEC, "run", str(proj), "-b", "slurm", "-c", str(slurm_config()), "-e", "sleep",
                             "--env-manager", "local"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        if when == "running":
            assert proc.stdout.readline().strip() == "started"
        else:
            wait_until(lambda: store.runs() and store.only_run().info.status == "SCHEDULED", 60,
                       "the run to be SCHEDULED")
        job_id = store.only_run().data.tags["mlexec.slurm.job-id"]
        assert job_id in queued_jobs()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: job_id not in queued_jobs(), 60, f"Slurm job {job_id} to be cancelled by the reaper")

    repaired = mlexec("runs", "repair", check=0)
    assert_no_traceback(repaired)
    assert store.only_run().info.run_id in repaired.stdout
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.failureReason"].startswith("mlexec exited unexpectedly")
