"""One run, many processes on this machine (issue 22, items 1, 2 and the local part of 3 and 4):
``processes-per-node: P`` starts the entry point's command P times, each with the variables
``torch.distributed``'s ``env://`` reads, into one MLflow run.  The real CLI, a real store; the
ranks do a small all-reduce over TCP (standard library sockets) to show they find each other.
GPU shares are checked against a pool given as ``CUDA_VISIBLE_DEVICES=0,1,2,3``: no GPU exists on
these machines, the allocation is real and the devices are not."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from mlexec_core.distributed import device_shares, rank_environment
from mlexec_core.testing import assert_no_traceback, assert_processes_gone, wait_until
from mlexec_core.testing.ranks import WORKER, rank_records


MLPROJECT = """
name: dist
entry_points:
  main:
    parameters: {fail: {type: int, default: -1}, out: string}
    command: python worker.py {fail} {out}
"""


@pytest.fixture
def dist(project, tmp_path):
    folder = project(MLPROJECT, files={"worker.py": WORKER})
    out = tmp_path / "ranks"
    out.mkdir()
    return folder, out


ranks = rank_records


def test_the_variables_of_each_process():
    assert rank_environment(node_rank=1, local_rank=1, nodes=2, per_node=2, master_addr="h0", master_port=29500) \
        == {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "1",
            "NNODES": "2", "MASTER_ADDR": "h0", "MASTER_PORT": "29500"}
    assert device_shares(("0", "1", "2", "3"), 2) == [("0", "1"), ("2", "3")]
    assert device_shares(("0", "1", "2"), 2) == [("0", "1", "2"), ("0", "1", "2")]  # uneven: all, LOCAL_RANK picks


def test_p_processes_one_run_and_they_find_each_other(mlexec, dist, store, tmp_path):
    folder, out = dist
    proc = mlexec("run", folder, "--env-manager", "local", "-R", "processes-per-node=3", "-P", f"out={out}",
                  check=0)
    assert_no_traceback(proc)
    got = ranks(out)
    assert sorted(got) == [0, 1, 2]
    run = store.only_run()  # one run, its params once
    assert run.data.params == {"fail": "-1", "out": str(out)}
    assert run.data.tags["mlexec.resources.processes-per-node"] == "3"
    for rank, record in got.items():
        assert record["WORLD_SIZE"] == "3" and record["RANK"] == str(rank) and record["LOCAL_RANK"] == str(rank)
        assert record["LOCAL_WORLD_SIZE"] == "3" and record["NODE_RANK"] == "0" and record["NNODES"] == "1"
        assert record["MLFLOW_RUN_ID"] == run.info.run_id
        assert record["sum"] == 0 + 1 + 2  # the all-reduce went through
    assert len({(r["MASTER_ADDR"], r["MASTER_PORT"]) for r in got.values()}) == 1
    for rank in range(3):  # every line says whose it is, on the terminal and in the run's log
        assert f"[rank {rank}] rank {rank} of 3 ready on " in proc.stdout
        assert f"[rank {rank}] sum 3\n" in proc.stdout
    log = Path(store.client.download_artifacts(run.info.run_id, "mlexec/output.log", str(tmp_path))).read_text()
    assert all(line.startswith("[rank ") for line in log.splitlines() if line), log


def test_a_failing_rank_stops_the_others_and_fails_the_run_naming_it(mlexec, dist, store):
    folder, out = dist
    proc = mlexec("run", folder, "--env-manager", "local", "-R", "processes-per-node=3", "-P", "fail=1",
                  "-P", f"out={out}", check=3)
    assert_no_traceback(proc)
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "failed: rank 1 exited with status 3; the other ranks were stopped ===")
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.failureReason"].startswith("rank 1 exited with status 3")
    others = ranks(out)
    assert sorted(others) == [0, 2]
    assert_processes_gone([r["pid"] for r in others.values()], timeout=5)


def test_ctrl_c_stops_every_rank(mlexec_background, dist, store):
    folder, out = dist
    bg = mlexec_background("run", folder, "--env-manager", "local", "-R", "processes-per-node=3", "-P", "fail=-2",
                           "-P", f"out={out}")
    wait_until(lambda: len(ranks(out)) == 3, 60, lambda: f"three ranks to start: {bg.stderr}")
    bg.signal(signal.SIGINT)
    proc = bg.finish()
    assert proc.returncode == 130, proc.stderr
    assert store.only_run().info.status == "KILLED"
    assert_processes_gone([r["pid"] for r in ranks(out).values()], timeout=5)


def test_each_rank_gets_its_share_of_the_devices(mlexec, dist, tmp_path):
    folder, out = dist
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "XDG_STATE_HOME": str(tmp_path / "state")}
    mlexec("run", folder, "--env-manager", "local", "-R", "processes-per-node=2", "-R", "gpus=4",
           "-P", f"out={out}", env=env, check=0)
    assert {r: g["CUDA_VISIBLE_DEVICES"] for r, g in ranks(out).items()} == {0: "0,1", 1: "2,3"}
    for p in out.iterdir():
        p.unlink()
    mlexec("run", folder, "--env-manager", "local", "-R", "processes-per-node=2", "-R", "gpus=3",
           "-P", f"out={out}", env=env, check=0)
    got = {r: g["CUDA_VISIBLE_DEVICES"] for r, g in ranks(out).items()}
    assert got[0] == got[1] and len(got[0].split(",")) == 3  # uneven: each sees all three


def test_more_than_one_node_is_refused_here_and_dry_run_lists_the_processes(mlexec, dist, store):
    folder, out = dist
    proc = mlexec("run", folder, "--env-manager", "local", "-R", "nodes=2", "-P", f"out={out}", check=2)
    assert "-b local cannot honour the resource -R nodes=2" in proc.stderr
    assert store.runs() == []
    proc = mlexec("run", folder, "--env-manager", "local", "-R", "processes-per-node=2", "-R", "nodes=1",
                  "-P", f"out={out}", "--dry-run", "--json", check=0)
    plan = json.loads(proc.stdout)
    assert plan["backend_plan"]["processes"] == [
        f"WORLD_SIZE=2 RANK={r} LOCAL_RANK={r} LOCAL_WORLD_SIZE=2 NODE_RANK=0 NNODES=1 MASTER_ADDR=127.0.0.1 "
        "MASTER_PORT=<free port>" for r in (0, 1)]
    assert store.runs() == [] and not list(out.iterdir())
