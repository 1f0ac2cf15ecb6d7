"""Runs that outlive no supervisor: `kill -9` of mlexec during a local run stops the job's
whole process group (the reaper), and the next mlexec command on the store repairs the run.
Also `mlexec runs list/repair` and `mlexec logs` on real runs in a real sqlite store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mlexec_core.testing import MLEXEC, assert_no_traceback, wait_until


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start(cli_env, tmp_path, *args, env=None):
    out = tmp_path / f"out-{time.monotonic_ns()}.txt"
    f = open(out, "wb")
    proc = subprocess.Popen([*MLEXEC, *map(str, args)], cwd=tmp_path, env={**cli_env, **(env or {})},
                            stdout=f, stderr=subprocess.STDOUT)
    f.close()
    return proc, out


def test_sigkill_of_mlexec_stops_the_whole_job_and_the_next_run_repairs_it(mlexec, project, store, cli_env,
                                                                            tmp_path):
    pids = tmp_path / "pids"
    # the shell, a background child and a grandchild: all in the job's process group
    proj = project(f'entry_points:\n  main: {{command: "sleep 300 & (sleep 300 & echo $! >> {pids}; wait) & '
                   f'echo $$ $! >> {pids}; echo started; wait"}}\n  quick: {{command: "echo quick"}}\n')
    store.runs()
    proc, out = _start(cli_env, tmp_path, "run", proj, "--env-manager", "local", env={"MLEXEC_STOP_TIMEOUT": "2"})
    try:
        wait_until(lambda: b"started" in out.read_bytes() and len(pids.read_text().split()) >= 3
                  if pids.exists() else False, 120, "the job to start")
        job_pids = [int(p) for p in pids.read_text().split()]
        assert all(_alive(p) for p in job_pids)
        run_id = store.only_run().info.run_id
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: not any(_alive(p) for p in job_pids), 30, f"the job's processes {job_pids} to stop")
    assert store.client.get_run(run_id).info.status == "RUNNING"

    listed = mlexec("runs", "list", check=0)
    assert run_id in listed.stdout and "gone" in listed.stdout

    again = mlexec("run", proj, "-e", "quick", "--env-manager", "local", check=0)
    assert "marked 1 run FAILED whose mlexec exited unexpectedly" in again.stderr
    assert run_id in again.stderr
    run = store.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.info.end_time is not None
    assert run.data.tags["mlexec.failureReason"].startswith("mlexec exited unexpectedly (noticed ")
    assert "mlexec.supervisor.live" not in run.data.tags
    assert run.data.tags["mlexec.supervisor.host"]
    assert_no_traceback(again)

    nothing = mlexec("runs", "repair", check=0)
    assert "Nothing to repair" in nothing.stderr


def test_a_run_whose_mlexec_is_alive_is_left_alone(mlexec, project, store, cli_env, tmp_path):
    proj = project('entry_points:\n  main: {command: "echo started; sleep 300"}\n  quick: {command: "true"}\n')
    store.runs()
    proc, out = _start(cli_env, tmp_path, "run", proj, "--env-manager", "local", env={"MLEXEC_STOP_TIMEOUT": "2"})
    try:
        wait_until(lambda: b"started" in out.read_bytes(), 120, "the job to start")
        repaired = mlexec("runs", "repair", check=0)
        assert "Nothing to repair" in repaired.stderr
        statuses = sorted(r.info.status for r in store.runs())
        assert statuses == ["RUNNING"]
        listed = mlexec("runs", "list", check=0)
        assert "running" in listed.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert store.only_run().info.status == "KILLED"
    assert "mlexec.supervisor.live" not in store.only_run().data.tags


def test_logs_prints_the_kept_output_of_ended_runs_and_follows_a_live_one(mlexec, project, store, cli_env,
                                                                        tmp_path):
    go = tmp_path / "go"
    proj = project(f"""
        entry_points:
          ok: {{command: "echo one; echo two >&2"}}
          bad: {{command: "echo failing; exit 3"}}
          slow: {{command: "echo first; while [ ! -e {go} ]; do sleep 0.1; done; echo last"}}
    """)
    mlexec("run", proj, "-e", "ok", "--env-manager", "local", check=0)
    ok = store.only_run().info.run_id
    logs = mlexec("logs", ok, check=0)
    # stdout and stderr come through two pipes: which line is read first is not defined
    assert sorted(logs.stdout.split()) == ["one", "two"]
    mlexec("run", proj, "-e", "bad", "--env-manager", "local")
    bad = next(r.info.run_id for r in store.runs() if r.info.status == "FAILED")
    assert mlexec("logs", bad, check=0).stdout == "failing\n"

    proc, out = _start(cli_env, tmp_path, "run", proj, "-e", "slow", "--env-manager", "local")
    try:
        wait_until(lambda: b"first" in out.read_bytes(), 120, "the job to start")
        slow = next(r.info.run_id for r in store.runs() if r.info.status == "RUNNING")
        follower = subprocess.Popen([*MLEXEC, "logs", "-f", slow], cwd=tmp_path, env=cli_env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        go.touch()
        stdout, stderr = follower.communicate(timeout=120)
        assert follower.returncode == 0, stderr
        assert stdout.split() == ["first", "last"]
    finally:
        proc.wait(60)
    assert mlexec("logs", slow, check=0).stdout.split() == ["first", "last"]

    missing = mlexec("logs", "0" * 32)
    assert missing.returncode == 2 and "no run with id" in missing.stderr
    assert_no_traceback(missing)


def test_reaper_runs_the_cancel_commands_of_a_killed_mlexec_and_only_those_still_registered(tmp_path):
    """``reaper.watch_command``: what cancels a remote job (``scancel ID``) when no mlexec is left."""
    kept, forgotten, clean = tmp_path / "kept", tmp_path / "forgotten", tmp_path / "clean"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from mlexec_core import reaper
        reaper.watch_command("job-1", ["touch", {str(kept)!r}])
        reaper.watch_command("job-2", ["touch", {str(forgotten)!r}])
        reaper.forget_command("job-2")
        print(reaper.reaper_pid(), flush=True)
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script, "kill"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    reaper_pid = int(proc.stdout)
    wait_until(kept.exists, 30, "the reaper to run the registered command")
    wait_until(lambda: not _alive(reaper_pid), 30, "the reaper to exit")
    assert not forgotten.exists()

    # an mlexec that forgot its commands before it exited leaves the reaper nothing to do
    quiet = script.replace(str(kept), str(clean)).replace(
        'print(reaper', 'reaper.forget_command("job-1")\nprint(reaper')
    proc = subprocess.run([sys.executable, "-c", quiet, "exit"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    wait_until(lambda: not _alive(int(proc.stdout)), 30, "the reaper to exit")
    assert not clean.exists()


@pytest.mark.parametrize("key, argv", [("", ["scancel", "1"]), ("a b", ["scancel", "1"]), ("k", []),
                                       ("k", ["echo", "two\nlines"])])
def test_reaper_refuses_commands_it_could_not_run_as_given(key, argv):
    from mlexec_core import reaper

    with pytest.raises(ValueError):
        reaper.watch_command(key, argv)


def test_a_queued_run_whose_mlexec_is_gone_is_repaired_too(mlexec, store):
    """A batch scheduler's run is SCHEDULED until its job starts; if its mlexec died then, the run
    must not stay SCHEDULED forever."""
    from mlexec_core import supervisor

    dead = subprocess.Popen(["sleep", "30"])
    started = supervisor.process_start(dead.pid)
    dead.kill()
    dead.wait()
    host = supervisor.hostname()
    run = store.client.create_run(store.client.get_experiment_by_name("Default").experiment_id, tags={
        supervisor.HOST_TAG: host, supervisor.PID_TAG: str(dead.pid), supervisor.STARTED_TAG: started,
        supervisor.LIVE_TAG: f"{host} {dead.pid} {started}"})
    store.client.update_run(run.info.run_id, status="SCHEDULED")
    repaired = mlexec("runs", "repair", check=0)
    assert repaired.returncode == 0, repaired.stderr
    assert run.info.run_id in repaired.stdout
    after = store.client.get_run(run.info.run_id)
    assert after.info.status == "FAILED"
    assert after.data.tags["mlexec.failureReason"].startswith("mlexec exited unexpectedly")
