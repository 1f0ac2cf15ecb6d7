"""Projects run as real Slurm batch jobs through the real CLI, tracked in a real MLflow store."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlexec_core.testing import MLEXEC, assert_no_traceback, wait_until

from mlexec_slurm_testkit import queued_jobs, slurm_cmd

PROJECT = """
name: slurm-test
entry_points:
  main:
    parameters:
      lr: {type: float, default: 0.1}
    command: "echo lr={lr} run=$MLFLOW_RUN_ID; echo to-stderr >&2; echo cwd=$(pwd); echo node=$SLURMD_NODENAME job=$SLURM_JOB_ID"
  log:
    parameters:
      python: string
    command: "{python} -c 'import mlflow; mlflow.log_metric(\\"loss\\", 0.5); print(\\"logged\\")'"
  fail:
    command: "echo failing; exit 3"
  wait:
    parameters:
      flag: string
    command: "echo first; while [ ! -e {flag} ]; do sleep 0.1; done; echo second"
  sleep:
    command: "echo started; sleep 300; echo never"
"""


def test_job_runs_with_a_parameter_tags_params_and_output(mlexec, project, store, slurm_config, shared_dir,
                                                           tmp_path, no_jobs_left):
    proj = project(PROJECT)
    proc = mlexec("run", proj, "-b", "slurm", "-c", slurm_config("time: '5:00'\n"), "-P", "lr=0.01",
                  "--env-manager", "local", check=0)
    run = store.only_run()
    out = proc.stdout
    assert f"lr=0.01 run={run.info.run_id}" in out
    assert "to-stderr" in out  # the job's stderr goes to the same output file, streamed
    assert f"cwd={shared_dir}/jobs/" in out and "/project" in out  # the working copy on the shared folder
    tags = run.data.tags
    job_id = tags["mlexec.slurm.job-id"]
    assert f"job={job_id}" in out and "node=" in out
    assert tags["mlexec.slurm.cluster"] == "mlexec"
    assert tags["mlexec.slurm.partition"] == "debug"
    assert tags["mlexec.slurm.state"] == "COMPLETED"
    assert tags["mlflow.project.backend"] == "slurm"
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.01"}
    assert f"Submitted Slurm job {job_id}" in proc.stderr
    assert not list((shared_dir / "jobs").iterdir())  # the job folder is removed once the run ended
    log = Path(store.client.download_artifacts(run.info.run_id, "mlexec/output.log", str(tmp_path))).read_text()
    assert f"lr=0.01 run={run.info.run_id}" in log and "to-stderr" in log  # kept with the run
    assert_no_traceback(proc)


def test_job_logs_to_the_run_through_the_tracking_uri(mlexec, project, store, slurm_config, no_jobs_left):
    proj = project(PROJECT)
    proc = mlexec("run", proj, "-b", "slurm", "-c", slurm_config(), "-e", "log", "-P", f"python={sys.executable}",
                  "--env-manager", "local", check=0)
    assert "logged" in proc.stdout
    run = store.only_run()
    assert run.data.metrics == {"loss": 0.5}
    assert run.info.status == "FINISHED"


def test_failing_exit_code_fails_the_run_with_slurms_reason(mlexec, project, store, slurm_config, no_jobs_left):
    proj = project(PROJECT)
    proc = mlexec("run", proj, "-b", "slurm", "-c", slurm_config(), "-e", "fail", "--env-manager", "local")
    assert proc.returncode == 3  # the command's own status, as on every backend
    assert "failing" in proc.stdout
    assert "the command exited with status 3" in proc.stderr
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert "exited with status 3" in run.data.tags["mlexec.failureReason"]
    assert "FAILED" in run.data.tags["mlexec.failureReason"]
    assert_no_traceback(proc)


def test_output_is_streamed_while_the_job_runs(cli_env, project, store, slurm_config, tmp_path, no_jobs_left):
    proj = project(PROJECT)
    flag = tmp_path / "go"
    proc = subprocess.Popen([*MLEXEC, "run", str(proj), "-b", "slurm", "-c", str(slurm_config()), "-e", "wait",
                             "-P", f"flag={flag}", "--env-manager", "local"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        first = proc.stdout.readline()  # arrives while the job is still waiting for the flag
        assert first.strip() == "first"
        assert proc.poll() is None
        flag.touch()
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "second" in rest
    assert proc.returncode == 0, err
    assert store.only_run().info.status == "FINISHED"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_cancels_the_job_waits_for_it_to_leave_and_marks_killed(cli_env, project, store, slurm_config,
                                                                        tmp_path, no_jobs_left, signum, code):
    proj = project(PROJECT)
    proc = subprocess.Popen([*MLEXEC, "run", str(proj), "-b", "slurm", "-c", str(slurm_config()), "-e", "sleep",
                             "--env-manager", "local"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "started"
        job_id = store.only_run().data.tags["mlexec.slurm.job-id"]  # set as soon as the job was submitted
        assert job_id in queued_jobs()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert job_id not in queued_jobs()  # gone from the queue when mlexec exits
    assert "never" not in out
    assert f"Cancelled Slurm job {job_id}" in err
    run = store.only_run()
    assert run.info.status == "KILLED"
    assert "Traceback" not in err


def test_pending_job_shows_slurms_reason_then_runs(cli_env, project, store, slurm_config, tmp_path, no_jobs_left,
                                                     blocker):
    blocking = blocker()
    proj = project(PROJECT)
    proc = subprocess.Popen([*MLEXEC, "run", str(proj), "-b", "slurm", "-c", str(slurm_config()),
                             "--env-manager", "local"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lines: list[str] = []

    def read_err():
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("is pending: Resources" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("is pending: Resources" in line for line in lines), lines
        assert proc.poll() is None
        while store.only_run().info.status != "SCHEDULED" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.only_run().info.status == "SCHEDULED"  # the MLflow run shows the job queued
        slurm_cmd("scancel", blocking)  # the node becomes free: the job starts
        out = proc.stdout.read()  # (stderr is the reader thread's)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    assert proc.returncode == 0, "".join(lines)
    assert "lr=0.1" in out
    assert any("is running" in line for line in lines)
    assert store.only_run().info.status == "FINISHED"


def test_ctrl_c_while_pending_cancels_the_queued_job(cli_env, project, store, slurm_config, tmp_path, no_jobs_left,
                                                     blocker):
    blocker()
    proj = project(PROJECT)
    proc = subprocess.Popen([*MLEXEC, "run", str(proj), "-b", "slurm", "-c", str(slurm_config()),
                             "--env-manager", "local"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        for line in proc.stderr:
            if "is pending" in line:
                break
        job_id = store.only_run().data.tags["mlexec.slurm.job-id"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert job_id not in queued_jobs()
    assert "lr=" not in out  # it never ran
    assert store.only_run().info.status == "KILLED"


def test_job_cancelled_by_someone_else_fails_the_run(cli_env, project, store, slurm_config, tmp_path, no_jobs_left):
    proj = project(PROJECT)
    proc = subprocess.Popen([*MLEXEC, "run", str(proj), "-b", "slurm", "-c", str(slurm_config()), "-e", "sleep",
                             "--env-manager", "local"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "started"
        slurm_cmd("scancel", store.only_run().data.tags["mlexec.slurm.job-id"])
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "cancelled outside mlexec" in err
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert "CANCELLED" in run.data.tags["mlexec.failureReason"]


def test_job_over_its_time_limit_fails_with_timeout(mlexec, project, store, slurm_config, no_jobs_left):
    """Slurm's smallest limit is one minute: the one slow test (about 60-90 s).  Slurm's own TIMEOUT
    ends the run in the same words as mlexec's own limit (``-R time``, tested to the second in
    test_slurm_resources.py), whether the limit is the config's or the run's."""
    proj = project(PROJECT)
    proc = mlexec("run", proj, "-b", "slurm", "-c", slurm_config("time: 1\n"), "-e", "sleep",
                  "--env-manager", "local", timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert "started" in proc.stdout and "never" not in proc.stdout
    # the words every backend uses for a run past its time (here the config's, Slurm's own kill)
    assert proc.stderr.strip().splitlines()[-1].endswith("failed: time limit 1m reached ===")
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.failureReason"] == "time limit 1m reached"
    assert run.data.tags["mlexec.slurm.state"] == "TIMEOUT"


def test_dry_run_prints_the_sbatch_options_and_the_script_and_submits_nothing(mlexec, project, store, slurm_config,
                                                                                shared_dir, slurm):
    before = queued_jobs()
    config = slurm_config("""
        partition: debug
        time: '10:00'
        cpus-per-task: 2
        mem: 1G
        env: {OMP_NUM_THREADS: 2}
        setup: ['module load cuda/12']
        sbatch-args: ['--mail-type=END']
        """)
    proc = mlexec("run", project(PROJECT), "-b", "slurm", "-c", config, "-P", "lr=0.5", "--env-manager", "local",
                  "--dry-run", check=0)
    out = proc.stdout
    assert ("# sbatch --parsable --job-name=mlexec-slurm-test --partition=debug --time=10:00 --cpus-per-task=2 "
            "--mem=1G --signal=B:USR1@60 --mail-type=END --requeue --open-mode=append --output=") in out
    assert "#!/bin/bash" in out
    assert "export OMP_NUM_THREADS=2" in out
    assert "module load cuda/12" in out
    assert "echo lr=0.5 run=$MLFLOW_RUN_ID" in out
    assert f"export MLFLOW_TRACKING_URI={store.uri}" in out
    assert queued_jobs() == before
    assert store.runs() == []
    assert not list(shared_dir.iterdir())
    assert_no_traceback(proc)


PYTHON_PROJECT = """
name: slurm-venv
python_env: python_env.yaml
entry_points:
  main:
    command: "python -c 'import sys; print(\\"prefix=\\" + sys.prefix)'"
"""


def test_virtualenv_is_built_in_the_shared_folder(mlexec, project, store, slurm_config, shared_dir, no_jobs_left):
    version = ".".join(map(str, sys.version_info[:2]))
    proj = project(PYTHON_PROJECT, {"python_env.yaml": f"python: '{version}'\ndependencies: []\n"})
    proc = mlexec("run", proj, "-b", "slurm", "-c", slurm_config(), "--env-manager", "virtualenv",
                  env={"UV_PYTHON_DOWNLOADS": "never"}, check=0)
    prefix = next(line.split("=", 1)[1] for line in proc.stdout.splitlines() if line.startswith("prefix="))
    assert prefix.startswith(f"{shared_dir}/envs/"), prefix
    run = store.only_run()
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.env"] == "virtualenv"


def test_python_api_sees_the_queued_job_scheduled_with_its_reason(project, store, slurm_config, monkeypatch,
                                                                  no_jobs_left, blocker):
    import mlexec_core
    from mlexec_core.pipeline.plan import RunStatus

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    blocking = blocker()
    submitted = mlexec_core.run(str(project(PROJECT)), backend="slurm", backend_config=str(slurm_config()),
                                env_manager="local", synchronous=False)
    deadline = time.monotonic() + 30
    while submitted.pending_reason != "Resources" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert submitted.get_status() is RunStatus.SCHEDULED
    assert submitted.pending_reason == "Resources"
    slurm_cmd("scancel", blocking)
    assert submitted.wait()
    assert submitted.get_status() is RunStatus.FINISHED
    assert submitted.pending_reason is None
    assert store.only_run().info.status == "FINISHED"


MEMORY_HOG = """
name: slurm-hog
entry_points:
  main:
    parameters:
      python: string
    command: "echo allocating; {python} -c 'import time; x = bytearray(400 * 2**20); x[::4096] = bytes(len(x[::4096])); time.sleep(30)'"
"""


def test_job_over_its_memory_limit_fails_saying_so(mlexec, project, store, slurm_config, no_jobs_left):
    """Where the machine gives slurmd a writable cgroup v1 memory controller, the test cluster
    limits memory with task/cgroup and Slurm ends the job OUT_OF_MEMORY; elsewhere job
    accounting kills it (OverMemoryKill) and Slurm only says FAILED: mlexec says why in both."""
    cgroups = "task/cgroup" in slurm_cmd("scontrol", "show", "config").stdout
    proc = mlexec("run", project(MEMORY_HOG), "-b", "slurm", "-c", slurm_config("mem: 50M\n"),
                  "-P", f"python={sys.executable}", "--env-manager", "local")
    assert proc.returncode != 0, proc.stderr
    assert "allocating" in proc.stdout
    run = store.only_run()
    assert run.info.status == "FAILED"
    if cgroups:
        assert "the job ran out of memory and was killed (OUT_OF_MEMORY, --mem=50M)" in proc.stderr
        assert run.data.tags["mlexec.slurm.state"] == "OUT_OF_MEMORY"
    else:
        assert "the job exceeded its memory limit and was killed (--mem=50M)" in proc.stderr
        assert run.data.tags["mlexec.slurm.state"] == "FAILED"


def test_preempted_job_without_restarts_fails_with_preempted(cli_env, project, store, slurm_config, tmp_path,
                                                            no_jobs_left):
    """The test cluster's `urgent` partition preempts jobs of `debug` on the same node; with
    --max-restarts 0 the job is submitted --no-requeue, so Slurm ends it PREEMPTED instead of
    requeueing it, and mlexec does not start it again (test_slurm_restarts.py: with restarts)."""
    proj = project(PROJECT)
    proc = subprocess.Popen([*MLEXEC, "run", str(proj), "-b", "slurm", "-c", str(slurm_config()), "-e", "sleep",
                             "--env-manager", "local", "--max-restarts", "0"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    urgent = None
    try:
        assert proc.stdout.readline().strip() == "started"
        urgent = slurm_cmd("sbatch", "--parsable", "-p", "urgent", "--exclusive", "--output=/dev/null",
                           "--wrap", "sleep 1").stdout.strip()
        out, err = proc.communicate(timeout=90)  # the cluster's GraceTime, then its next check of time limits
    finally:
        if proc.poll() is None:
            proc.kill()
        if urgent:
            slurm_cmd("scancel", urgent, check=False)
            wait_until(lambda: urgent not in queued_jobs(), 60, f"the urgent job {urgent} to leave the queue")
    assert proc.returncode == 1, err
    assert "the job was preempted by a higher-priority job (PREEMPTED)" in err
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.slurm.state"] == "PREEMPTED"


@pytest.fixture
def node_down():
    """Take the test node down (its jobs fail or are requeued); slurmd brings it back (ReturnToService=2)."""
    node = slurm_cmd("sinfo", "-h", "-p", "debug", "-o", "%n").stdout.split()[0]

    def down():
        slurm_cmd("scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=mlexec-test")

    yield down
    for _ in range(100):
        if slurm_cmd("sinfo", "-h", "-n", node, "-o", "%t").stdout.strip() in ("idle", "mix", "alloc"):
            return
        slurm_cmd("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)
        time.sleep(0.2)


def test_node_failure_fails_the_run_with_node_fail(cli_env, project, store, slurm_config, tmp_path, no_jobs_left,
                                                   node_down):
    proj = project(PROJECT)
    proc = subprocess.Popen([*MLEXEC, "run", str(proj), "-b", "slurm", "-e", "sleep", "--env-manager", "local",
                             "--max-restarts", "0", "-c", str(slurm_config())],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "started"
        node_down()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "a node running the job failed (NODE_FAIL" in err
    assert store.only_run().info.status == "FAILED"


def test_a_command_longer_than_one_argument_may_be_runs_from_the_batch_script(mlexec, project, store, slurm_config,
                                                                              no_jobs_left):
    """Locally such a command is refused (it would go to `bash -c` as one argument, over Linux's
    MAX_ARG_STRLEN); Slurm writes it into the batch script, where no such limit applies."""
    proj = project("\n".join(["name: long", "entry_points:", "  main:", "    parameters:",
                              *[f"      p{i}: string" for i in range(25)],
                              "    command: \"echo " + " ".join(f"{{p{i}}}" for i in range(25)) + " | wc -c\""]))
    values = [f"-Pp{i}={'x' * 6000}" for i in range(25)]
    refused = mlexec("run", proj, *values, "--env-manager", "local", "--dry-run", check=2)
    assert "MAX_ARG_STRLEN" in refused.stderr
    proc = mlexec("run", proj, *values, "-b", "slurm", "-c", slurm_config(), "--env-manager", "local", check=0)
    assert proc.stdout.strip().splitlines()[-1].strip() == str(25 * 6000 + 24 + 1)
    assert store.only_run().info.status == "FINISHED"
