"""The stop contract, enforced by the core whatever the backend does: nothing of a
job is left running on this machine once its run has ended, and a backend's
cancel() has returned before KILLED is recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import types

import mlexec_core
from mlexec_core.pipeline.plan import RunStatus
from mlexec_core.plugin import Registration, hookimpl
from mlexec_core.plugin.interfaces import Backend, SubmittedJob, command_env
from mlexec_core.plugin.manager import build_plugins
from mlexec_core.testing import assert_no_traceback, assert_processes_gone, process_alive, wait_until


class LeaderOnlyJob(SubmittedJob):
    """Signals only the shell it started, never its group: the mistake the core must catch."""

    def __init__(self, proc):
        self.proc = proc
        self.cancelled = False

    def wait(self):
        code = self.proc.wait()
        return RunStatus.KILLED if self.cancelled else (RunStatus.FINISHED if code == 0 else RunStatus.FAILED)

    def get_status(self):
        return RunStatus.RUNNING if self.proc.poll() is None else self.wait()

    def cancel(self, signum=None):
        self.cancelled = True
        if self.proc.poll() is None:
            self.proc.send_signal(signum or signal.SIGTERM)


def _sigint_as_from_a_terminal():
    """Run in the job's shell before it starts: SIGINT at its default action and unblocked.

    A child inherits an ignored or blocked signal (not a handler), so without this the
    shell would share whatever the process running pytest was started with. Started in
    the background (``bash scripts/test.sh &`` in a script, a runner that launches jobs
    that way) it ignores SIGINT; some runners block it. Then the shell survives SIGINT,
    its job never ends, and this test waited 30 s for a run that could not end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class LeakyBackend(Backend):
    def submit(self, plan, run, prepared):
        proc = subprocess.Popen(["sh", "-c", plan.command], cwd=plan.work_dir,
                                env=command_env(os.environ, prepared, run), start_new_session=True,
                                preexec_fn=_sigint_as_from_a_terminal)
        return LeaderOnlyJob(proc)


def plugin(name, **hooks):
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def wait_for_file(path, timeout=30):
    text = wait_until(lambda: path.exists() and path.read_text().strip(), timeout, f"{path}", interval=0.05)
    return int(text.split()[0])


def test_a_backend_that_signals_only_its_shell_leaves_nothing(project, store, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.setenv("MLEXEC_STOP_TIMEOUT", "3")
    child = tmp_path / "child.pid"
    proj = project(f"entry_points: {{main: {{command: 'sleep 300 & echo $! > {child}; wait'}}}}\n")
    plugins = build_plugins(entry_points=False, extra=[("leaky", plugin("leaky", mlexec_backends=lambda: [Registration(kind="backend", name="leaky", path=LeakyBackend)]))])
    submitted = mlexec_core.run(str(proj), backend="leaky", env_manager="local", synchronous=False, plugins=plugins)
    pid = wait_for_file(child)
    submitted.cancel(signal.SIGINT)  # the shell dies; its & child ignores SIGINT
    wait_until(lambda: submitted.status is not None, 30, "the run to end", interval=0.05)
    assert submitted.status is RunStatus.KILLED
    assert pid in submitted.left_behind
    assert not process_alive(pid)
    assert store.only_run().info.status == "KILLED"


def test_a_finished_job_leaves_no_background_process(mlexec, project, store, tmp_path):
    child = tmp_path / "daemon.pid"
    proj = project(f"entry_points: {{main: {{command: 'sleep 300 & echo $! > {child}; echo done'}}}}\n")
    proc = mlexec("run", proj, "--env-manager", "local", env={"MLEXEC_STOP_TIMEOUT": "3"})
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    pid = int(child.read_text())
    assert_processes_gone([pid], timeout=1)
    assert f"the job left 1 process running on this machine after it ended (pid {pid}); mlexec stopped it" \
        in proc.stderr
    assert store.only_run().info.status == "FINISHED"


class SlowCancelJob(SubmittedJob):
    """A remote-style job: wait() returns as soon as the stop is asked for, cancel()
    takes a while to have the remote side accept it."""

    def __init__(self, log):
        self.log = log
        self.stop_asked = threading.Event()

    def wait(self):
        self.stop_asked.wait(60)
        return RunStatus.FAILED  # what a careless backend might say

    def get_status(self):
        return RunStatus.RUNNING

    def cancel(self, signum=None):
        self.stop_asked.set()
        time.sleep(1.0)
        self.log.append("cancel returned")


def test_killed_is_recorded_only_after_cancel_returned(project, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    log: list[str] = []

    class SlowBackend(Backend):
        def submit(self, plan, run, prepared):
            return SlowCancelJob(log)

    def finished(status):
        log.append(f"finished {status.value}")

    plugins = build_plugins(entry_points=False, extra=[("slow", plugin(
        "slow", mlexec_backends=lambda: [Registration(kind="backend", name="slow", path=SlowBackend)], mlexec_run_finished=finished))])
    proj = project("entry_points: {main: {command: 'true'}}\n")
    submitted = mlexec_core.run(str(proj), backend="slow", env_manager="local", synchronous=False, plugins=plugins)
    threading.Thread(target=submitted.cancel, args=(signal.SIGTERM,)).start()
    wait_until(lambda: submitted.status is not None and "finished KILLED" in log, 30,
               lambda: f"the run to be recorded KILLED (so far: {log})", interval=0.05)
    assert log == ["cancel returned", "finished KILLED"]
    assert store.only_run().info.status == "KILLED"
