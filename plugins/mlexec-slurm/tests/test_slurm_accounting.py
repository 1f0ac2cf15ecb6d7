"""How a job ended, once the controller has forgotten it: from accounting (sacct), or,
on a cluster without accounting, from the exit status the batch script wrote.

The test cluster keeps finished jobs 5 s (``MinJobAge``) and records every job
in slurmdbd. mlexec asks the controller within a fraction of a second of a
job's end, so to reach accounting a test stops mlexec (SIGSTOP) while its job
ends and lets it go on (SIGCONT) once ``scontrol`` no longer knows the job,
as happens to a real mlexec whose machine was suspended or whose connection
to the controller was down for longer than MinJobAge. The cluster without
accounting is the same cluster seen through a client configuration with
``AccountingStorageType`` removed: there, the real ``sacct`` answers that
accounting storage is disabled.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from mlexec_core.testing import MLEXEC, wait_until

from mlexec_slurm_testkit import queued_jobs, slurm_cmd

PROJECT = """
name: slurm-accounting
entry_points:
  sleep: {command: "echo started; sleep 300; echo never"}
  fail:
    parameters:
      flag: string
    command: "echo started; while [ ! -e {flag} ]; do sleep 0.1; done; exit 3"
"""


@pytest.fixture
def accounting(slurm):
    """The cluster has accounting storage (``sacct`` answers)."""
    proc = slurm_cmd("sacct", "-n", "-X", "-S", "now", check=False)
    if proc.returncode != 0:
        pytest.fail(f"the test cluster has no accounting ({proc.stderr.strip()}); "
                    "plugins/mlexec-slurm/ci-setup.sh starts slurmdbd")


@pytest.fixture
def no_accounting_env(cli_env, tmp_path):
    """The CLI's environment with a client configuration whose cluster has no accounting."""
    conf = tmp_path / "slurm-no-accounting.conf"
    lines = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    path = next(line.split("=", 1)[1].strip() for line in lines.splitlines() if line.startswith("SLURM_CONF"))
    with open(path) as f:
        conf.write_text("".join(line for line in f if not line.startswith("AccountingStorage")))
    env = {**cli_env, "SLURM_CONF": str(conf)}
    disabled = subprocess.run(["sacct", "-n"], capture_output=True, text=True, env=env)
    assert disabled.returncode != 0 and "disabled" in disabled.stderr, disabled.stderr
    return env


def forgotten(job_id: str) -> bool:
    proc = slurm_cmd("scontrol", "show", "job", "-o", job_id, check=False)
    return proc.returncode != 0 or job_id not in proc.stdout


def run_while_stopped(env, store, proj, config, tmp_path, entry, end_the_job, *params):
    """Start ``mlexec run``; once the job runs, stop mlexec, end the job with
    ``end_the_job(job_id)``, wait until the controller has forgotten it, let mlexec go on."""
    proc = subprocess.Popen([*MLEXEC, "run", str(proj), "-b", "slurm", "-c", str(config), "-e", entry,
                             "--env-manager", "local", *params],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "started"
        job_id = store.only_run().data.tags["mlexec.slurm.job-id"]  # set as soon as the job was submitted
        proc.send_signal(signal.SIGSTOP)
        end_the_job(job_id)
        wait_until(lambda: job_id not in queued_jobs(), 60, f"job {job_id} to leave the queue")
        wait_until(lambda: forgotten(job_id), 120, f"the controller to forget job {job_id} (MinJobAge)",
                   interval=0.5)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    return proc.returncode, out, err, job_id


def test_job_cancelled_while_mlexec_was_away_ends_from_accounting(cli_env, project, store, slurm_config, tmp_path,
                                                                    no_jobs_left, accounting):
    code, out, err, job_id = run_while_stopped(cli_env, store, project(PROJECT), slurm_config(), tmp_path, "sleep",
                                               lambda job: slurm_cmd("scancel", job))
    assert code == 1, err
    assert "Traceback" not in err
    assert "the job was cancelled outside mlexec (CANCELLED by 0" in err
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.slurm.job-id"] == job_id
    assert run.data.tags["mlexec.slurm.state"] == "CANCELLED"  # scontrol no longer knew: this came from sacct
    assert "CANCELLED" in run.data.tags["mlexec.failureReason"]
    assert "never" not in out


def test_without_accounting_a_job_cancelled_while_mlexec_was_away_says_so(no_accounting_env, store, project,
                                                                          slurm_config, tmp_path, no_jobs_left):
    """Slurm kills a cancelled batch script without letting it write its exit status, and
    with no accounting nothing else remembers the job: the run fails saying exactly that."""
    code, out, err, job_id = run_while_stopped(no_accounting_env, store, project(PROJECT), slurm_config(), tmp_path,
                                               "sleep", lambda job: slurm_cmd("scancel", job))
    assert code == 1, err
    assert "Traceback" not in err
    assert f"Slurm no longer knows job {job_id} and there is no accounting (sacct) to ask how it ended" in err
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert "mlexec.slurm.state" not in run.data.tags


@pytest.mark.parametrize("with_accounting", [True, False], ids=["sacct", "no-accounting"])
def test_failing_exit_code_after_the_controller_forgot_the_job(cli_env, no_accounting_env, project, store,
                                                               slurm_config, tmp_path, no_jobs_left, accounting,
                                                               with_accounting):
    """A job that fails while mlexec is stopped: its exit code comes from sacct, or without
    accounting from the exit status the batch script wrote; mlexec exits with it either way."""
    flag = tmp_path / "flag"
    env = cli_env if with_accounting else no_accounting_env
    code, out, err, job_id = run_while_stopped(env, store, project(PROJECT), slurm_config(), tmp_path, "fail",
                                               lambda job: flag.touch(), "-P", f"flag={flag}")
    assert code == 3, err
    assert "Traceback" not in err
    run = store.only_run()
    assert run.info.status == "FAILED"
    if with_accounting:
        assert f"the command exited with status 3 (Slurm job {job_id}: FAILED)" in err
        assert run.data.tags["mlexec.slurm.state"] == "FAILED"
    else:
        assert f"the command exited with status 3 (Slurm job {job_id})" in err
        assert "mlexec.slurm.state" not in run.data.tags
