"""A job Slurm starts again (preempted, requeued, its node lost) goes on in the same MLflow run.

The test cluster (ci-setup.sh): `urgent` preempts `debug` with PreemptMode=REQUEUE, a GraceTime
of 5 s and preempt_send_user_signal, so a preempted job first gets its --signal (SIGUSR1), then
goes back to the queue.  Slurm holds a requeued job until its old job credential has expired
(its BeginTime: AuthInfo=cred_expire + 1 s, 11 s on the test cluster, 121 s by default); a job
started sooner on the same node is refused there ("Job credential revoked") and fails, so the
tests wait for the hold (:func:`hurry` only waits for the requeue).
"""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import pytest

from mlexec_core.testing import assert_no_traceback, wait_until

from mlexec_slurm_testkit import queued_jobs, slurm_cmd

#: One step a second into the run's metrics, a checkpoint after each; SIGUSR1 recorded in the
#: checkpoint folder. The first attempt stops after step 2 and waits to be stopped by Slurm;
#: a later one goes on from the checkpoint to step 5 and ends.
TRAIN = """
import os, signal, sys, time
import mlflow

folder = os.environ["MLEXEC_CHECKPOINT_DIR"]
attempt = int(os.environ["MLEXEC_ATTEMPT"])
signal.signal(signal.SIGUSR1, lambda *_: open(os.path.join(folder, f"usr1-attempt-{attempt}"), "w").close())
checkpoint = os.path.join(folder, "step")
start = int(open(checkpoint).read()) + 1 if os.path.exists(checkpoint) else 0
print(f"attempt {attempt} starts at step {start}", flush=True)
for step in range(start, 6):
    mlflow.log_metric("step", step, step=step)
    with open(checkpoint + ".tmp", "w") as f:
        f.write(str(step))
    os.replace(checkpoint + ".tmp", checkpoint)
    if attempt == 1 and step == 2:
        print("waiting to be stopped", flush=True)
        while True:
            time.sleep(0.1)
print(f"attempt {attempt} done", flush=True)
"""

PROJECT = """
name: restarts
entry_points:
  main:
    parameters:
      python: string
    command: "{python} train.py"
"""


@pytest.fixture
def train(project):
    return project(PROJECT, files={"train.py": TRAIN})


def job_id(text: str) -> str:
    return re.search(r"Submitted Slurm job (\d+)", text).group(1)


def job_field(job: str, field: str) -> str:
    out = slurm_cmd("scontrol", "show", "job", "-o", job, check=False).stdout
    found = re.search(rf"\b{field}=(\S+)", out)
    return found.group(1) if found else ""


def hurry(job: str, restarts: int = 1) -> None:
    """Wait until Slurm has requeued ``job`` (``restarts`` times); it starts again after its hold
    (11 s here).  Moving its start to now is not done: the node refuses a job whose revoked
    credential has not expired yet, and the job fails (Slurm's "Job credential revoked")."""
    wait_until(lambda: job_field(job, "JobState") == "PENDING" and job_field(job, "Restarts") == str(restarts),
               90, f"Slurm to requeue job {job}")


@pytest.fixture
def urgent(slurm):
    """Submit a short job to `urgent` that needs the whole node: it preempts the debug jobs there."""
    ids = []

    def submit() -> str:
        ids.append(slurm_cmd("sbatch", "--parsable", "-p", "urgent", "--exclusive", "--output=/dev/null",
                             "--job-name=mlexec-test-urgent", "--wrap", "sleep 1").stdout.strip())
        return ids[-1]

    yield submit
    for job in ids:
        slurm_cmd("scancel", job, check=False)
    wait_until(lambda: not set(ids) & queued_jobs(), 60, "the urgent jobs to leave the queue")


def run_output(store, run_id: str, tmp_path: Path) -> str:
    return Path(store.client.download_artifacts(run_id, "mlexec/output.log", str(tmp_path))).read_text()


def test_preempted_job_is_requeued_warned_and_resumes_in_the_same_run(
        mlexec_background, train, store, slurm_config, shared_dir, urgent, tmp_path, no_jobs_left):
    bg = mlexec_background("run", train, "-b", "slurm", "-c", slurm_config(), "-P", f"python={sys.executable}",
                           "--env-manager", "local", "--max-restarts", "2")
    bg.wait_for("waiting to be stopped", 120)
    job = job_id(bg.stderr)
    urgent()
    hurry(job)
    proc = bg.finish(120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = store.only_run()  # one run, ended once
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlexec.attempt"] == "2"
    assert run.data.tags["mlexec.slurm.job-id"] == job  # Slurm's requeue: the same job, not a new one
    steps = [m.step for m in store.client.get_metric_history(run.info.run_id, "step")]
    assert sorted(steps) == [0, 1, 2, 3, 4, 5]  # attempt 2 went on from the checkpoint, not from 0
    assert f"Slurm job {job} was preempted" in proc.stderr
    checkpoints = shared_dir / "checkpoints" / run.info.run_id
    assert (checkpoints / "usr1-attempt-1").exists()  # warned before the requeue, through the batch script
    log = run_output(store, run.info.run_id, tmp_path)
    first, second = log.index("attempt 1 starts at step 0"), log.index("attempt 2 starts at step 3")
    assert first < log.index("got SIGUSR1") < second and "attempt 2 done" in log  # both attempts kept, in order
    assert_no_traceback(proc)


def test_scontrol_requeue_goes_on_in_the_same_run(mlexec_background, train, store, slurm_config, tmp_path,
                                                  no_jobs_left):
    bg = mlexec_background("run", train, "-b", "slurm", "-c", slurm_config(), "-P", f"python={sys.executable}",
                           "--env-manager", "local")  # restarts not asked for: 3 at most
    bg.wait_for("waiting to be stopped", 120)
    job = job_id(bg.stderr)
    slurm_cmd("scontrol", "requeue", job)
    hurry(job)
    proc = bg.finish(120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Slurm job {job} was requeued" in proc.stderr
    run = store.only_run()
    assert run.info.status == "FINISHED" and run.data.tags["mlexec.attempt"] == "2"
    assert sorted(m.step for m in store.client.get_metric_history(run.info.run_id, "step")) == list(range(6))


@pytest.fixture
def node2(slurm):
    """Node ``node2`` (partition multi); brought back up however the test ends."""
    yield "node2"
    slurm_cmd("scontrol", "update", "NodeName=node2", "State=RESUME", check=False)
    wait_until(lambda: slurm_cmd("sinfo", "-h", "-n", "node2", "-o", "%t").stdout.strip() in ("idle", "mix", "alloc"),
               60, "node2 to come back")


def test_job_that_lost_its_node_is_requeued_into_the_same_run(mlexec_background, train, store, slurm_config, node2,
                                                              no_jobs_left):
    config = slurm_config(f"partition: multi\nsbatch-args: ['--nodelist={node2}']\n")
    bg = mlexec_background("run", train, "-b", "slurm", "-c", config, "-P", f"python={sys.executable}",
                           "--env-manager", "local", "--max-restarts", "1")
    bg.wait_for("waiting to be stopped", 120)
    job = job_id(bg.stderr)
    slurm_cmd("scontrol", "update", f"NodeName={node2}", "State=DOWN", "Reason=mlexec-test")
    bg.wait_for(f"Slurm job {job} lost its node", 60)
    # Back up (slurmd may already have brought it back: ReturnToService=2).
    slurm_cmd("scontrol", "update", f"NodeName={node2}", "State=RESUME", check=False)
    hurry(job)
    proc = bg.finish(120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = store.only_run()
    assert run.info.status == "FINISHED" and run.data.tags["mlexec.attempt"] == "2"
    assert sorted(m.step for m in store.client.get_metric_history(run.info.run_id, "step")) == list(range(6))


def test_ctrl_c_while_the_job_waits_requeued_kills_the_run(mlexec_background, train, store, slurm_config,
                                                          no_jobs_left):
    bg = mlexec_background("run", train, "-b", "slurm", "-c", slurm_config(), "-P", f"python={sys.executable}",
                           "--env-manager", "local")  # restarts not asked for: 3 at most
    bg.wait_for("waiting to be stopped", 120)
    job = job_id(bg.stderr)
    slurm_cmd("scontrol", "requeue", job)
    bg.wait_for(f"Slurm job {job} is pending", 60)  # requeued, held by Slurm for its BeginTime
    bg.signal(signal.SIGINT)
    proc = bg.finish(60)
    assert proc.returncode != 0
    assert store.only_run().info.status == "KILLED"
    assert job not in queued_jobs()
    assert_no_traceback(proc)


def test_a_requeue_past_max_restarts_cancels_the_job_and_fails_the_run(mlexec_background, project, store,
                                                                       slurm_config, no_jobs_left):
    proj = project('name: forever\nentry_points:\n  main:\n    command: "echo attempt $MLEXEC_ATTEMPT; sleep 300"\n')
    bg = mlexec_background("run", proj, "-b", "slurm", "-c", slurm_config(), "--env-manager", "local",
                           "--max-restarts", "1")
    bg.wait_for("attempt 1", 120)
    job = job_id(bg.stderr)
    slurm_cmd("scontrol", "requeue", job)
    hurry(job)
    wait_until(lambda: job_field(job, "JobState") == "RUNNING", 60, f"job {job} to run again")
    bg.wait_for("attempt 2\n", 60)  # the job's own line, not mlexec's "attempt 2 of at most 2"
    slurm_cmd("scontrol", "requeue", job)  # the second restart: one too many
    proc = bg.finish(60)
    assert proc.returncode == 1, proc.stderr
    assert "was requeued; not started again: --max-restarts 1 used up" in proc.stderr
    run = store.only_run()
    assert run.info.status == "FAILED" and run.data.tags["mlexec.attempt"] == "2"
    assert job not in queued_jobs()  # cancelled, not left waiting in the queue
    assert_no_traceback(proc)


def test_a_requeue_seen_only_in_accounting_still_counts(mlexec_background, train, store, slurm_config,
                                                        no_jobs_left):
    """mlexec is stopped (SIGSTOP) while the job is requeued, runs again and ends, and the controller
    forgets it (MinJobAge): the requeue comes from sacct's records of the job (sacct -D)."""
    bg = mlexec_background("run", train, "-b", "slurm", "-c", slurm_config(), "-P", f"python={sys.executable}",
                           "--env-manager", "local")
    bg.wait_for("waiting to be stopped", 120)
    job = job_id(bg.stderr)
    bg.signal(signal.SIGSTOP)
    try:
        slurm_cmd("scontrol", "requeue", job)
        hurry(job)
        wait_until(lambda: job not in queued_jobs(), 60, f"job {job} to end")
        wait_until(lambda: not job_field(job, "JobState"), 60, f"the controller to forget job {job}", interval=0.5)
    finally:
        bg.signal(signal.SIGCONT)
    proc = bg.finish(60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Slurm job {job} was requeued" in proc.stderr
    run = store.only_run()
    assert run.info.status == "FINISHED" and run.data.tags["mlexec.attempt"] == "2"


def test_a_job_preempted_without_a_requeue_is_submitted_again_into_the_same_run(
        mlexec_background, train, store, slurm_config, urgent, tmp_path, no_jobs_left):
    """Partition `spot` cancels preempted jobs (PreemptMode=CANCEL): the job ends PREEMPTED and
    mlexec submits a new job, which goes on from the checkpoint in the same run."""
    bg = mlexec_background("run", train, "-b", "slurm", "-c", slurm_config("partition: spot\n"),
                           "-P", f"python={sys.executable}", "--env-manager", "local")
    bg.wait_for("waiting to be stopped", 120)
    first = job_id(bg.stderr)
    urgent()
    proc = bg.finish(120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mlexec: the job was preempted: attempt 2 of at most 4, into the same run" in proc.stderr
    run = store.only_run()
    assert run.info.status == "FINISHED" and run.data.tags["mlexec.attempt"] == "2"
    assert run.data.tags["mlexec.slurm.job-id"] != first  # a new job, not Slurm's requeue
    assert sorted(m.step for m in store.client.get_metric_history(run.info.run_id, "step")) == list(range(6))
    log = run_output(store, run.info.run_id, tmp_path)
    assert log.index("attempt 1 starts at step 0") < log.index("attempt 2 starts at step 3")
