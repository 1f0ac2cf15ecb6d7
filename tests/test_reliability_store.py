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
