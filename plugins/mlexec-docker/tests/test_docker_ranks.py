"""``processes-per-node: P`` for docker_env projects (issue 22, item 3): the P ranks of one run in
one container, each a ``docker exec`` with its rank variables.  The real CLI, the real Docker
engine, a real store; the ranks do a small all-reduce over TCP (standard library sockets, in the
python test image) inside the container, and write what they saw into the mounted project."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from mlexec_core.testing import assert_no_traceback
from mlexec_core.testing.ranks import WORKER, rank_records


#: A rank that says it started, and says so again when it is stopped.
WAITS = "trap 'echo stopped $RANK; exit 0' INT TERM; echo started $RANK; while :; do sleep 1; done"


ranks = rank_records


def test_p_ranks_run_in_one_container_into_one_run_and_find_each_other(
        mlexec, docker_project, store, python_image, engine, tmp_path):
    proj = docker_project("image: mlexec-test/python:3.11", 'main: {command: "python3 worker.py -1 out"}',
                          files={"worker.py": WORKER, "out/.keep": ""})
    proc = mlexec("run", proj, "-R", "processes-per-node=3", check=0)
    assert_no_traceback(proc)
    got = ranks(proj / "out")
    assert sorted(got) == [0, 1, 2]
    run = store.only_run()  # one run
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlexec.resources.processes-per-node"] == "3"
    assert len({r["host"] for r in got.values()}) == 1  # one container
    for rank, record in got.items():
        assert record["WORLD_SIZE"] == "3" and record["RANK"] == str(rank) and record["LOCAL_RANK"] == str(rank)
        assert record["LOCAL_WORLD_SIZE"] == "3" and record["NODE_RANK"] == "0" and record["NNODES"] == "1"
        assert record["MASTER_ADDR"] == "127.0.0.1"  # the ranks share the container's network
        assert record["MLFLOW_RUN_ID"] == run.info.run_id
        assert record["sum"] == 0 + 1 + 2  # the all-reduce went through
    assert len({r["MASTER_PORT"] for r in got.values()}) == 1
    for rank in range(3):  # every line says whose it is, on the terminal and in the run's log
        assert f"[rank {rank}] rank {rank} of 3 ready on {got[rank]['host']} pid {got[rank]['pid']}\n" in proc.stdout
        assert f"[rank {rank}] sum 3\n" in proc.stdout
    assert "mlexec-rank-pid" not in proc.stdout + proc.stderr  # how mlexec stops a rank is not output
    log = Path(store.client.download_artifacts(run.info.run_id, "mlexec/output.log", str(tmp_path))).read_text()
    assert log.strip() and all(line.startswith("[rank ") for line in log.splitlines() if line), log
    assert engine.containers(f"mlexec.run-id={run.info.run_id}") == []


def test_a_failing_rank_stops_the_others_and_fails_the_run_naming_it(
        mlexec, docker_project, store, busybox_image, engine):
    proj = docker_project("image: mlexec-test/busybox:1",
                          f'main: {{command: "if [ $RANK = 1 ]; then sleep 0.5; exit 3; fi; {WAITS}"}}')
    proc = mlexec("run", proj, "-R", "processes-per-node=3", check=3)
    assert_no_traceback(proc)
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "failed: rank 1 exited with status 3; the other ranks were stopped ===")
    for rank in (0, 2):  # the others were told, and stopped in their own way
        assert f"[rank {rank}] started {rank}\n" in proc.stdout
        assert f"[rank {rank}] stopped {rank}\n" in proc.stdout
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.failureReason"].startswith("rank 1 exited with status 3")
    assert engine.containers(f"mlexec.run-id={run.info.run_id}") == []  # no_leftovers checks every container


def test_ctrl_c_stops_every_rank_and_removes_the_container(
        mlexec_background, docker_project, store, busybox_image, engine):
    proj = docker_project("image: mlexec-test/busybox:1", f'main: {{command: "{WAITS}"}}')
    bg = mlexec_background("run", proj, "-R", "processes-per-node=2")
    for rank in (0, 1):
        bg.wait_for(f"[rank {rank}] started {rank}")
    bg.signal(signal.SIGINT)
    proc = bg.finish()
    assert proc.returncode == 130, proc.stderr
    assert_no_traceback(proc)
    for rank in (0, 1):
        assert f"[rank {rank}] stopped {rank}\n" in proc.stdout  # the signal reached each rank
    run = store.only_run()
    assert run.info.status == "KILLED"
    assert engine.containers(f"mlexec.run-id={run.info.run_id}") == []


def test_dry_run_lists_the_processes_and_more_than_one_node_is_refused(mlexec, docker_project, store):
    proj = docker_project("image: mlexec-test/busybox:1", 'main: {command: "echo $RANK"}')
    proc = mlexec("run", proj, "-R", "processes-per-node=2", "--dry-run", "--json", check=0)
    plan = json.loads(proc.stdout)
    environment = plan["env_plan"]
    assert environment["processes"] == [
        f"WORLD_SIZE=2 RANK={r} LOCAL_RANK={r} LOCAL_WORLD_SIZE=2 NODE_RANK=0 NNODES=1 MASTER_ADDR=127.0.0.1 "
        "MASTER_PORT=<free port>" for r in (0, 1)]
    assert "docker exec" in environment["container"]
    proc = mlexec("run", proj, "-R", "nodes=2", check=2)
    assert "cannot honour the resource -R nodes=2" in proc.stderr
    assert_no_traceback(proc)
    assert store.runs() == []


def test_each_rank_gets_its_share_of_the_containers_devices():
    # no GPU here: the device request the container would get, and the variables each exec adds
    from mlexec_core.plugin.interfaces import Allocation, Resources
    from mlexec_docker.ranks import rank_variables
    from mlexec_docker.resources import allocation_options

    host, env = allocation_options(Resources(gpus=4), Allocation(gpus=("1", "3", "4", "6")))
    assert host["DeviceRequests"][0]["DeviceIDs"] == ["1", "3", "4", "6"]  # the whole run's, one container
    ranks = rank_variables([f"{k}={v}" for k, v in env.items()], 2)
    assert {rank: got["CUDA_VISIBLE_DEVICES"] for rank, got in ranks} == {0: "0,1", 1: "2,3"}  # as numbered inside
    _, env = allocation_options(Resources(gpus=3), Allocation(gpus=("1", "3", "4")))
    ranks = rank_variables([f"{k}={v}" for k, v in env.items()], 2)
    assert [got["CUDA_VISIBLE_DEVICES"] for _, got in ranks] == ["0,1,2", "0,1,2"]  # uneven: each sees all three
    assert all("CUDA_VISIBLE_DEVICES" not in got for _, got in rank_variables(["A=1"], 2))  # no GPU: not set
    assert {got["MASTER_ADDR"] for _, got in ranks} == {"127.0.0.1"}
