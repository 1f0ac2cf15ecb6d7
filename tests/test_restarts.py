"""A job that exits with a status the user marked retryable starts again into the same run
(issue 22, item 5, on this machine): ``--restart-on-exit``, ``--max-restarts``, ``MLEXEC_ATTEMPT``
and ``MLEXEC_CHECKPOINT_DIR``, the tag ``mlexec.attempt``, every attempt's output kept.  The real
CLI and a real store; the job resumes from its own checkpoint and keeps logging metrics with
increasing steps."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from mlexec_core.testing import assert_no_traceback, assert_processes_gone, wait_until

JOB = r'''
import json, os, sys, time
attempt = os.environ.get("MLEXEC_ATTEMPT")
folder = os.environ.get("MLEXEC_CHECKPOINT_DIR")
out = sys.argv[1]
with open(os.path.join(out, f"attempt-{attempt}.json"), "w") as f:
    json.dump({"attempt": attempt, "folder": folder, "pid": os.getpid()}, f)
if attempt is None:  # not started to be restarted
    sys.exit(75)
if sys.argv[2] == "hang-first" and attempt == "1":
    time.sleep(300)
checkpoint = os.path.join(folder, "step")
step = int(open(checkpoint).read()) if os.path.exists(checkpoint) else 0
print(f"attempt {attempt} resumes at step {step}", flush=True)
import mlflow
for s in range(step, step + 2):
    mlflow.log_metric("loss", 1.0 / (s + 1), step=s)
with open(checkpoint, "w") as f:
    f.write(str(step + 2))
if sys.argv[2] == "hang" and attempt == "2":
    time.sleep(300)
sys.exit(0 if int(attempt) >= int(sys.argv[3]) else 75)
'''

MLPROJECT = f"""
name: restarts
entry_points:
  main:
    parameters: {{out: string, mode: {{type: string, default: run}}, finish_at: {{type: int, default: 3}}}}
    command: "{sys.executable} job.py {{out}} {{mode}} {{finish_at}}"
"""


@pytest.fixture
def job(project, tmp_path):
    folder = project(MLPROJECT, files={"job.py": JOB})
    out = tmp_path / "attempts"
    out.mkdir()
    return folder, out


def attempts(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in out.glob("attempt-*.json")}


def test_a_retryable_exit_starts_the_job_again_into_the_same_run(mlexec, job, store, tmp_path):
    folder, out = job
    proc = mlexec("run", folder, "--env-manager", "local", "--restart-on-exit", "75,143", "-P", f"out={out}",
                  check=0)
    assert_no_traceback(proc)
    got = attempts(out)
    assert sorted(got) == ["attempt-1", "attempt-2", "attempt-3"]
    assert len({a["folder"] for a in got.values()}) == 1  # one folder for every attempt
    run = store.only_run()
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlexec.attempt"] == "3"
    history = store.client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(6))  # each attempt went on where the last one stopped
    for n in (2, 3):
        assert f"mlexec: the job exited with status 75 (--restart-on-exit): attempt {n} of at most 4" in proc.stderr
    log = Path(store.client.download_artifacts(run.info.run_id, "mlexec/output.log", str(tmp_path))).read_text()
    for n, step in ((1, 0), (2, 2), (3, 4)):
        assert f"attempt {n} resumes at step {step}" in log
    assert "attempt 2 of at most 4" in log


def test_max_restarts_bounds_them_and_the_run_fails_with_the_last_status(mlexec, job, store):
    folder, out = job
    proc = mlexec("run", folder, "--env-manager", "local", "--restart-on-exit", "75", "--max-restarts", "1",
                  "-P", f"out={out}", check=75)
    assert sorted(attempts(out)) == ["attempt-1", "attempt-2"]
    run = store.only_run()
    assert run.info.status == "FAILED" and run.data.tags["mlexec.attempt"] == "2"
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "failed: the command exited with status 75; not started again: --max-restarts 1 used up ===")


def test_without_restart_options_nothing_restarts_and_nothing_is_set(mlexec, job, store):
    folder, out = job
    mlexec("run", folder, "--env-manager", "local", "-P", f"out={out}", check=75)
    assert attempts(out) == {"attempt-None": {"attempt": None, "folder": None,
                                              "pid": attempts(out)["attempt-None"]["pid"]}}
    assert "mlexec.attempt" not in store.only_run().data.tags


def test_ctrl_c_during_a_later_attempt_kills_the_run_and_starts_nothing_more(mlexec_background, job, store):
    folder, out = job
    bg = mlexec_background("run", folder, "--env-manager", "local", "--restart-on-exit", "75", "-P", f"out={out}",
                           "-P", "mode=hang")
    wait_until(lambda: "attempt-2" in attempts(out), 60, lambda: f"the second attempt: {bg.stderr}")
    bg.signal(signal.SIGINT)
    proc = bg.finish()
    assert proc.returncode == 130, proc.stderr
    run = store.only_run()
    assert run.info.status == "KILLED" and run.data.tags["mlexec.attempt"] == "2"
    assert sorted(attempts(out)) == ["attempt-1", "attempt-2"]
    assert_processes_gone([attempts(out)["attempt-2"]["pid"]], timeout=5)


@pytest.mark.parametrize("args, says", [
    (["--restart-on-exit", "75,x"], "--restart-on-exit 75,x: 'x' is not an exit status (1 to 255)"),
    (["--restart-on-exit", "0"], "'0' is not an exit status"),
    (["--max-restarts", "-1"], "--max-restarts -1: expected a whole number, 0 or more"),
])
def test_bad_restart_options_are_one_error_before_any_run(mlexec, job, store, args, says):
    folder, out = job
    proc = mlexec("run", folder, "--env-manager", "local", *args, "-P", f"out={out}", check=2)
    assert_no_traceback(proc)
    assert says in proc.stderr, proc.stderr
    assert store.runs() == [] and attempts(out) == {}


def test_a_sweep_child_restarts_into_its_own_run(mlexec, job, store):
    """``--max-restarts`` continues the same child run; ``--retries`` would start a new one."""
    folder, out = job
    proc = mlexec("sweep", folder, "--env-manager", "local", "--restart-on-exit", "75", "-P", f"out={out}",
                  "-P", "finish_at=2", check=0)
    assert_no_traceback(proc)
    [child] = [r for r in store.runs() if r.data.tags.get("mlexec.sweep") != "parent"]
    assert child.info.status == "FINISHED" and child.data.tags["mlexec.attempt"] == "2"


def test_the_python_api_takes_the_restart_options(job, store, cli_env, monkeypatch):
    import mlexec_core

    for key, value in cli_env.items():
        monkeypatch.setenv(key, value)
    folder, out = job
    submitted = mlexec_core.run(str(folder), parameters={"out": str(out), "finish_at": 2}, env_manager="local",
                                restart_on_exit=[75], max_restarts=2)
    assert submitted.attempt == 2
    assert store.only_run().data.tags["mlexec.attempt"] == "2"


def test_a_backend_that_cannot_restart_refuses_the_options(mlexec, job, store, tmp_path, cli_env):
    site = tmp_path / "site"
    dist = site / "mlexec_oneshot-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlexec-oneshot\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mlexec]\noneshot = demo_oneshot\n")
    (site / "demo_oneshot.py").write_text(
        "from mlexec_core.builtins.local import LocalBackend\n"
        "from mlexec_core.plugin import Registration, hookimpl\n"
        "@hookimpl\n"
        "def mlexec_backends():\n"
        "    return [Registration(kind='backend', name='oneshot', path=LocalBackend)]\n")
    folder, out = job
    proc = mlexec("run", folder, "-b", "oneshot", "--env-manager", "local", "--restart-on-exit", "75",
                  "-P", f"out={out}", env={**cli_env, "PYTHONPATH": f"{site}:{cli_env['PYTHONPATH']}"}, check=2)
    assert_no_traceback(proc)
    assert "-b oneshot cannot start a job again into the same run" in proc.stderr, proc.stderr
    can = proc.stderr.split("backends that can: ", 1)[1]
    assert "-b local" in can and "-b oneshot" not in can
    assert store.runs() == []


def test_a_job_stopped_at_its_time_limit_is_not_restarted(mlexec, job, store):
    """The stop gives SIGTERM (143): even with 143 retryable, a run past its time is over."""
    folder, out = job
    proc = mlexec("run", folder, "--env-manager", "local", "--restart-on-exit", "75,143", "-R", "time=1s",
                  "-P", f"out={out}", "-P", "mode=hang-first", check=1)
    assert proc.stderr.strip().splitlines()[-1].endswith("failed: time limit 1s reached ===")
    assert store.only_run().data.tags["mlexec.attempt"] == "1"
    assert sorted(attempts(out)) == ["attempt-1"]


# -- a scheduler that starts the job again by itself (SubmittedJob.report_restart) -----------

REQUEUING = '''
"""A third-party backend whose "scheduler" requeues a job by itself: the job's command exiting
with 99 stands for a preemption; the backend runs it again and says so with report_restart."""
import attrs

from mlexec_core.builtins.local import LocalBackend
from mlexec_core.pipeline.plan import RunStatus
from mlexec_core.plugin import Registration, hookimpl
from mlexec_core.plugin.interfaces import SubmittedJob


class RequeuingJob(SubmittedJob):
    def __init__(self, backend, plan, run, prepared):
        self.backend, self.plan, self.run, self.prepared = backend, plan, run, prepared
        self.first = int(run.env["MLEXEC_ATTEMPT"])
        self.restarts = 0
        self.inner = self._start()

    def _start(self):
        env = {**self.run.env, "MLEXEC_ATTEMPT": str(self.first + self.restarts)}
        return LocalBackend.submit(self.backend, self.plan, attrs.evolve(self.run, env=env), self.prepared)

    def wait(self):
        while True:
            status = self.inner.wait()
            if self.inner.exit_code != 99:
                break
            if not self.report_restart("was preempted"):
                self.settle(RunStatus.FAILED, "was preempted", 99)
                return RunStatus.FAILED
            self.restarts += 1
            self.report_status(RunStatus.RUNNING)
            self.inner = self._start()
        self.settle(status, self.inner.failure_reason, self.inner.exit_code)
        return status

    def get_status(self):
        return self.settled or RunStatus.RUNNING

    def cancel(self, signum=None):
        self.inner.cancel(signum)


class RequeuingBackend(LocalBackend):
    def submit(self, plan, run, prepared):
        return RequeuingJob(self, plan, run, prepared)


@hookimpl
def mlexec_backends():
    return [Registration(kind="backend", name="requeuing", path=RequeuingBackend,
                         capabilities={"requeues", "restartable"})]
'''

PREEMPTED = r'''
import os, sys
attempt, folder = os.environ["MLEXEC_ATTEMPT"], os.environ["MLEXEC_CHECKPOINT_DIR"]
print(f"attempt {attempt}", flush=True)
open(os.path.join(folder, f"seen-{attempt}"), "w").close()
sys.exit(99 if int(attempt) < int(sys.argv[1]) else 0)
'''


@pytest.fixture
def requeuing(project, cli_env, tmp_path):
    site = tmp_path / "site"
    dist = site / "mlexec_requeuing-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlexec-requeuing\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mlexec]\nrequeuing = demo_requeuing\n")
    (site / "demo_requeuing.py").write_text(REQUEUING)
    folder = project("entry_points:\n  main:\n    parameters: {until: int}\n"
                     f"    command: '{sys.executable} job.py {{until}}'\n", files={"job.py": PREEMPTED})
    return folder, {**cli_env, "PYTHONPATH": f"{site}:{cli_env['PYTHONPATH']}"}


def test_a_job_its_scheduler_restarts_is_counted_into_the_same_run(mlexec, requeuing, store):
    """No restart option given: a backend that requeues gives every run the attempt and the
    checkpoint folder, and each requeue it reports is an attempt of the same run."""
    folder, env = requeuing
    proc = mlexec("run", folder, "-b", "requeuing", "--env-manager", "local", "-P", "until=3", env=env, check=0)
    assert_no_traceback(proc)
    for n in (2, 3):
        assert f"mlexec: the job was preempted: attempt {n} of at most 4, into the same run" in proc.stderr
    run = store.only_run()
    assert run.info.status == "FINISHED" and run.data.tags["mlexec.attempt"] == "3"
    assert [line for line in proc.stdout.splitlines() if line.startswith("attempt")] == \
        ["attempt 1", "attempt 2", "attempt 3"]


def test_a_scheduler_restart_past_max_restarts_is_refused_and_the_run_fails_saying_so(mlexec, requeuing, store):
    folder, env = requeuing
    proc = mlexec("run", folder, "-b", "requeuing", "--env-manager", "local", "--max-restarts", "1",
                  "-P", "until=5", env=env, check=99)
    assert_no_traceback(proc)
    run = store.only_run()
    assert run.info.status == "FAILED" and run.data.tags["mlexec.attempt"] == "2"
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "failed: was preempted; not started again: --max-restarts 1 used up ===")
    proc = mlexec("run", folder, "-b", "requeuing", "--env-manager", "local", "--max-restarts", "0",
                  "-P", "until=5", env=env, check=99)
    assert proc.stderr.strip().splitlines()[-1].endswith("failed: was preempted; not started again "
                                                         "(--max-restarts 0) ===")


GRACEFUL = r'''
import os, signal, sys, time
folder = os.environ["MLEXEC_CHECKPOINT_DIR"]
def checkpoint(signum, frame):
    time.sleep(0.5)  # a checkpoint takes a moment: the grace period lets it finish
    open(os.path.join(folder, "saved-on-sigterm"), "w").write(str(signum))
    sys.exit(143)
signal.signal(signal.SIGTERM, checkpoint)
print("training", flush=True)
time.sleep(300)
'''


def test_a_stop_warns_the_job_with_sigterm_and_lets_it_checkpoint(mlexec, project, store, cli_env):
    """Locally (and in docker) the warning before the end is SIGTERM, then MLEXEC_STOP_TIMEOUT
    seconds before SIGKILL: a job stopped at its time limit saves its checkpoint first."""
    folder = project(f"entry_points:\n  main:\n    command: '{sys.executable} job.py'\n", files={"job.py": GRACEFUL})
    proc = mlexec("run", folder, "--env-manager", "local", "--restart-on-exit", "75", "-R", "time=2s",
                  env={**cli_env, "MLEXEC_STOP_TIMEOUT": "10"}, check=1)
    assert proc.stderr.strip().splitlines()[-1].endswith("failed: time limit 2s reached ===")
    run = store.only_run()
    from mlexec_core.xdg import state_home

    saved = state_home(cli_env) / "runs" / run.info.run_id / "checkpoints" / "saved-on-sigterm"
    assert saved.read_text() == str(int(signal.SIGTERM))
