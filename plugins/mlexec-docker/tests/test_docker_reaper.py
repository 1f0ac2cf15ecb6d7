"""`kill -9` of mlexec during a docker run: the container is stopped and removed by the
reaper, and the next mlexec command marks the run FAILED (real engine, real store)."""

from __future__ import annotations

import signal
import subprocess
import time

from mlexec_core.testing import MLEXEC, assert_no_traceback, wait_until



def test_sigkill_of_mlexec_removes_the_container_and_the_next_command_repairs_the_run(
        mlexec, docker_project, store, busybox_image, engine, cli_env, tmp_path):
    proj = docker_project("image: mlexec-test/busybox:1", 'main: {command: "echo started; sleep 120"}')
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        proc = subprocess.Popen([*MLEXEC, "run", str(proj)], cwd=tmp_path, env={**cli_env, "MLEXEC_STOP_TIMEOUT": "2"},
                                stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: b"started" in out.read_bytes(), 120, "the job to start")
        run_id = store.only_run().info.run_id
        label = f"label=mlexec.run-id={run_id}"
        assert engine._call("GET", "/containers/json", params={"all": "1", "filters": f'{{"label": ["mlexec.run-id={run_id}"]}}'})
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: not engine._call("GET", "/containers/json",
                                       params={"all": "1", "filters": f'{{"label": ["mlexec.run-id={run_id}"]}}'}),
              30, f"the container ({label}) to be removed")
    assert store.client.get_run(run_id).info.status == "RUNNING"  # nobody has looked yet
    repaired = mlexec("runs", "repair", check=0)
    assert run_id in repaired.stdout
    run = store.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.failureReason"].startswith("mlexec exited unexpectedly")
    assert_no_traceback(repaired)
