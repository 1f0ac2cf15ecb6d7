"""Tracking store faults, against real stores: a real ``mlflow server`` on loopback
stopped before and during a run, and a real sqlite store locked by another writer."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mlexec_core.testing import MLEXEC, assert_no_traceback, free_port


def _start_server(db: Path, artifacts: Path, port: int, log: Path) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(artifacts),
                                 "--workers", "1"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240  # the server imports all of mlflow: slow on a busy machine
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop_server(proc)
                pytest.fail(f"mlflow server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)


def _stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_unreachable_server_at_start_is_a_clear_error_within_seconds_and_nothing_runs(mlexec, project, tmp_path):
    marker = tmp_path / "ran"
    proj = project(f'entry_points: {{main: {{command: "touch {marker}"}}}}\n')
    proc = mlexec("run", proj, "--env-manager", "local",
                  env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"},
                  timeout=120)  # MLflow's own retries alone took 248 s
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach the tracking server" in proc.stderr
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in proc.stderr  # the knob is named
    assert not marker.exists()
    assert_no_traceback(proc)


def test_server_stopped_during_a_run_keeps_the_status_locally_until_repair_writes_it(
        cli_env, project, tmp_path, template_db, mlflow_client_cls):
    db = tmp_path / "server.db"
    db.write_bytes(template_db.read_bytes())
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    pending = tmp_path / "pending"
    env = {**cli_env, "MLFLOW_TRACKING_URI": uri, "MLEXEC_PENDING_DIR": str(pending)}
    go = tmp_path / "go"
    proj = project(f'entry_points: {{main: {{command: "echo started; while [ ! -e {go} ]; do sleep 0.1; done; '
                   f'echo finished"}}}}\n')
    server = _start_server(db, tmp_path / "artifacts", port, tmp_path / "server.log")
    out = tmp_path / "out.txt"
    try:
        with open(out, "wb") as f:
            proc = subprocess.Popen([*MLEXEC, "run", str(proj), "--env-manager", "local"], cwd=tmp_path, env=env,
                                    stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while b"started" not in out.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        _stop_server(server)  # the store goes away while the job runs
        go.touch()
        code = proc.wait(120)  # bounded: it never hangs
        text = out.read_text()
        assert code == 1, text  # the job succeeded, but an unrecorded outcome is not a success
        assert "did not record it" in text
        assert "mlexec runs repair" in text
        assert "Traceback" not in text
        kept = list(pending.glob("*.json"))
        assert len(kept) == 1
        run_id = json.loads(kept[0].read_text())["run_id"]
        assert json.loads(kept[0].read_text())["status"] == "FINISHED"

        server = _start_server(db, tmp_path / "artifacts", port, tmp_path / "server.log")
        repaired = subprocess.run([*MLEXEC, "runs", "repair"], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=120)
        assert repaired.returncode == 0, repaired.stderr
        assert run_id in repaired.stdout
        assert not list(pending.glob("*.json"))
        run = mlflow_client_cls(f"sqlite:///{db}").get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.info.end_time is not None
    finally:
        _stop_server(server)


def test_sqlite_store_locked_by_another_writer_fails_clearly_after_a_bounded_wait(mlexec, project, store, tmp_path):
    store.runs()  # the store exists
    marker = tmp_path / "ran"
    proj = project(f'entry_points: {{main: {{command: "touch {marker}"}}}}\n')
    holder = sqlite3.connect(store.path, timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        proc = mlexec("run", proj, "--env-manager", "local", env={"MLEXEC_SQLITE_LOCK_TIMEOUT": "1"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 2, proc.stderr
    assert "locked by another writer" in proc.stderr
    assert "MLEXEC_SQLITE_LOCK_TIMEOUT" in proc.stderr
    assert not marker.exists()
    assert store.runs() == []
    assert_no_traceback(proc)


def test_store_locked_as_the_run_ends_keeps_the_status_and_a_signal_cuts_the_retries(
        project, store, cli_env, tmp_path, mlexec):
    store.runs()
    go = tmp_path / "go"
    pending = tmp_path / "pending"
    done = tmp_path / "done"
    proj = project(f'entry_points: {{main: {{command: "echo started; while [ ! -e {go} ]; do sleep 0.1; done; '
                   f'touch {done}"}}}}\n')
    env = {**cli_env, "MLEXEC_PENDING_DIR": str(pending), "MLEXEC_SQLITE_LOCK_TIMEOUT": "3"}
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        proc = subprocess.Popen([*MLEXEC, "run", str(proj), "--env-manager", "local"], cwd=tmp_path, env=env,
                                stdout=f, stderr=subprocess.STDOUT)
    holder = None
    try:
        deadline = time.monotonic() + 120
        while b"started" not in out.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        holder = sqlite3.connect(store.path, timeout=0, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another writer holds the store as the run ends
        go.touch()
        while not done.exists():  # the job has ended (however slow the machine): mlexec now waits for the store
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)  # while mlexec waits for the store: it stops waiting
        code = proc.wait(60)
    finally:
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
        if proc.poll() is None:
            proc.kill()
    text = out.read_text()
    assert code != 0, text
    assert "did not record it" in text and "Traceback" not in text
    [kept] = pending.glob("*.json")
    run_id = json.loads(kept.read_text())["run_id"]
    assert store.client.get_run(run_id).info.status == "RUNNING"

    # the next command on the store writes it
    logs = mlexec("logs", run_id, env={"MLEXEC_PENDING_DIR": str(pending)}, check=0)
    assert "recorded the final status of 1 run" in logs.stderr
    assert logs.stdout == "started\n"  # the output log was kept too, and stored with the run
    assert store.client.get_run(run_id).info.status == "FINISHED"
    assert not list(pending.iterdir())


def test_bounded_retries_apply_only_to_mlexecs_own_calls_and_never_to_the_environment(monkeypatch):
    """The job inherits mlexec's environment: MLflow's defaults must stay there for it, and a
    thread that starts a job while another one talks to the store must not see the limits."""
    import threading

    from mlflow import environment_variables as variables

    from mlexec_core.builtins.mlflow.client import CLIENT_LIMITS, bounded_client

    for key in CLIENT_LIMITS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "33")  # the user's own setting wins
    defaults = {key: getattr(variables, key).get() for key in CLIENT_LIMITS}
    before = dict(os.environ)
    inside, elsewhere = threading.Event(), {}
    done = threading.Event()

    def other_thread():  # a sweep's child starting while another child's end is written
        inside.wait(10)
        elsewhere.update({key: getattr(variables, key).get() for key in CLIENT_LIMITS})
        elsewhere["environ"] = dict(os.environ)
        done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with bounded_client():
        with bounded_client():
            assert variables.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 1
            assert variables.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 1
        assert variables.MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 33
        assert variables.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 1
        assert dict(os.environ) == before
        inside.set()
        assert done.wait(10)
    thread.join()
    assert elsewhere.pop("environ") == before
    assert elsewhere == defaults
    assert {key: getattr(variables, key).get() for key in CLIENT_LIMITS} == defaults
    assert dict(os.environ) == before


def test_sweep_children_on_a_server_start_with_the_users_environment(cli_env, project, tmp_path, template_db):
    """Children start while other children's runs are ended through the server (mlexec's bounded
    client at work on other threads): each child's environment is still the user's."""
    db = tmp_path / "server.db"
    db.write_bytes(template_db.read_bytes())
    port = free_port()
    seen = tmp_path / "seen"
    seen.mkdir()
    proj = project(f"""
        entry_points:
          main:
            parameters: {{i: int}}
            command: "env | grep ^MLFLOW_HTTP_REQUEST_ > {seen}/{{i}}.txt; echo child {{i}}"
    """)
    env = {**cli_env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    server = _start_server(db, tmp_path / "artifacts", port, tmp_path / "server.log")
    try:
        proc = subprocess.run([*MLEXEC, "sweep", str(proj), "-P", "i=range(0, 12)", "--max-parallel", "4",
                               "--env-manager", "local"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
    finally:
        _stop_server(server)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(seen.glob("*.txt"))
    assert len(files) == 12
    leaked = {f.name: f.read_text() for f in files if f.read_text().strip()}
    assert not leaked, f"children saw mlexec's own client limits: {leaked}"
