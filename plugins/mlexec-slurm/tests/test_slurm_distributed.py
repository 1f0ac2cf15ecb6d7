"""One run over many processes on two Slurm nodes (issue 22, the Slurm part of items 3 and 4).

``nodes: N``, ``processes-per-node: P`` become ``--nodes=N --ntasks-per-node=P`` and an
``srun`` step of N x P tasks, each with its rank variables computed from Slurm's.  The
cluster is real and has two nodes (ci-setup.sh): this machine, and ``node2``, a second
slurmd in a network namespace of its own, with its own host name; partition ``multi``
holds both.  The processes do a small all-reduce over TCP (standard-library sockets)
through ``MASTER_ADDR:MASTER_PORT``, across the two nodes.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from mlexec_core.testing import assert_no_traceback, assert_processes_gone, missing_infrastructure, wait_until

from mlexec_core.testing.ranks import WORKER, rank_records
from mlexec_slurm_testkit import queued_jobs, slurm_cmd


MLPROJECT = """
name: dist
entry_points:
  main:
    parameters: {fail: {type: int, default: -1}, out: string}
    command: python3 worker.py {fail} {out}
"""

TWO_BY_TWO = ("-R", "nodes=2", "-R", "processes-per-node=2")


@pytest.fixture(scope="module")
def two_nodes(slurm):
    """Partition multi with both nodes up, or the test cluster is an older one."""
    state = slurm_cmd("sinfo", "-h", "-p", "multi", "-o", "%n %t", check=False).stdout.split("\n")
    up = [line.split()[0] for line in state if line.split() and line.split()[1] in ("idle", "mix", "alloc")]
    if len(up) < 2:
        missing_infrastructure("Slurm cluster", f"partition multi does not have two nodes up "
                               f"(sinfo says {state})", how="run as root: bash plugins/mlexec-slurm/ci-setup.sh")
    return up


@pytest.fixture
def dist(project, tmp_path, slurm_config):
    folder = project(MLPROJECT, files={"worker.py": WORKER})
    out = tmp_path / "ranks"
    out.mkdir()
    return folder, out, slurm_config("partition: multi\n")


ranks = rank_records


def test_two_nodes_two_processes_each_one_run_and_they_find_each_other(mlexec, dist, store, two_nodes,
                                                                       no_jobs_left, tmp_path):
    folder, out, config = dist
    proc = mlexec("run", folder, "-b", "slurm", "-c", config, "--env-manager", "local", *TWO_BY_TWO,
                  "-P", f"out={out}", check=0)
    assert_no_traceback(proc)
    got = ranks(out)
    assert sorted(got) == [0, 1, 2, 3]  # each rank exactly once
    run = store.only_run()
    assert run.info.status == "FINISHED"
    assert run.data.params == {"fail": "-1", "out": str(out)}
    hosts = {r["host"] for r in got.values()}
    assert len(hosts) == 2, hosts  # two nodes, two host names
    for rank, record in got.items():
        assert record["WORLD_SIZE"] == "4" and record["RANK"] == str(rank)
        assert record["LOCAL_WORLD_SIZE"] == "2" and record["NNODES"] == "2"
        assert record["NODE_RANK"] == str(rank // 2) and record["LOCAL_RANK"] == str(rank % 2)
        assert record["MLFLOW_RUN_ID"] == run.info.run_id
        assert record["sum"] == 0 + 1 + 2 + 3  # the all-reduce went through, across the nodes
    by_node = {n: {r["host"] for r in got.values() if r["NODE_RANK"] == n} for n in ("0", "1")}
    assert all(len(h) == 1 for h in by_node.values()) and by_node["0"] != by_node["1"]
    assert {(r["MASTER_ADDR"], r["MASTER_PORT"]) for r in got.values()} == {(got[0]["host"], got[0]["MASTER_PORT"])}
    for rank in range(4):  # every line says whose it is, on the terminal and in the run's log
        assert f"[rank {rank}] rank {rank} of 4 ready on {got[rank]['host']} pid {got[rank]['pid']}\n" in proc.stdout
        assert f"[rank {rank}] sum 6\n" in proc.stdout
    log = Path(store.client.download_artifacts(run.info.run_id, "mlexec/output.log", str(tmp_path))).read_text()
    assert sum(line.startswith("[rank ") for line in log.splitlines()) == 8, log
    # the run records both nodes, as Slurm names them
    assert set(slurm_cmd("scontrol", "show", "hostnames", run.data.tags["mlexec.slurm.nodes"]).stdout.split()) \
        == hosts


def test_a_failing_rank_stops_the_others_and_fails_the_run_naming_it(mlexec, dist, store, two_nodes,
                                                                     no_jobs_left):
    folder, out, config = dist
    proc = mlexec("run", folder, "-b", "slurm", "-c", config, "--env-manager", "local", *TWO_BY_TWO,
                  "-P", "fail=3", "-P", f"out={out}", check=3)
    assert_no_traceback(proc)
    assert "failed: rank 3 exited with status 3; the other ranks were stopped" in proc.stderr
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.failureReason"].startswith("rank 3 exited with status 3; the other ranks")
    others = ranks(out)
    assert sorted(others) == [0, 1, 2]
    assert_processes_gone([r["pid"] for r in others.values()], timeout=10)
    assert run.data.tags["mlexec.slurm.job-id"] not in queued_jobs()


def test_ctrl_c_stops_every_process_on_every_node(mlexec_background, dist, store, two_nodes, no_jobs_left):
    folder, out, config = dist
    bg = mlexec_background("run", folder, "-b", "slurm", "-c", config, "--env-manager", "local", *TWO_BY_TWO,
                           "-P", "fail=-2", "-P", f"out={out}")
    wait_until(lambda: len(ranks(out)) == 4, 60, lambda: f"four ranks to start: {bg.stderr}")
    assert len({r["host"] for r in ranks(out).values()}) == 2
    bg.signal(signal.SIGINT)
    proc = bg.finish()
    assert proc.returncode == 130, proc.stderr
    assert store.only_run().info.status == "KILLED"
    assert_processes_gone([r["pid"] for r in ranks(out).values()], timeout=10)


def test_dry_run_shows_the_srun_line_and_the_sbatch_options(mlexec, dist, store):
    folder, out, config = dist
    proc = mlexec("run", folder, "-b", "slurm", "-c", config, "--env-manager", "local", *TWO_BY_TWO,
                  "-P", f"out={out}", "--dry-run", "--json", check=0)
    plan = json.loads(proc.stdout)["backend_plan"]
    assert "--nodes=2" in plan["sbatch_options"] and "--ntasks-per-node=2" in plan["sbatch_options"]
    assert plan["srun"].startswith("srun --nodes=2 --ntasks-per-node=2 --ntasks=4 --kill-on-bad-exit=1 --label ")
    assert plan["srun"] in plan["batch_script"] and plan["processes"] == 4
    assert "export RANK=$SLURM_PROCID" in plan["rank_script"]
    assert "python3 worker.py -1" in plan["rank_script"] and "worker.py" not in plan["batch_script"]
    text = mlexec("run", folder, "-b", "slurm", "-c", config, "--env-manager", "local", *TWO_BY_TWO,
                  "-P", f"out={out}", "--dry-run", check=0).stdout
    assert "srun --nodes=2" in text and "--ntasks-per-node=2" in text
    # one process stays exactly what it was: no srun, no task options
    one = json.loads(mlexec("run", folder, "-b", "slurm", "-c", config, "--env-manager", "local",
                            "-R", "nodes=1", "-R", "processes-per-node=1", "-P", f"out={out}", "--dry-run",
                            "--json", check=0).stdout)["backend_plan"]
    assert "srun" not in one and "srun --" not in one["batch_script"] and "rank.sh" not in one["text"]
    assert not any(o.startswith(("--nodes", "--ntasks")) for o in one["sbatch_options"])
    assert store.runs() == []


def test_more_nodes_than_the_partition_has_is_slurms_refusal_before_the_run_exists(mlexec, project, store,
                                                                                   slurm_config, slurm,
                                                                                   no_jobs_left):
    folder = project(MLPROJECT, files={"worker.py": WORKER})
    proc = mlexec("run", folder, "-b", "slurm", "-c", slurm_config(), "--env-manager", "local",
                  "-R", "nodes=2", "-P", "out=/tmp", check=2)  # partition debug: one node
    assert_no_traceback(proc)
    # sbatch --test-only's own words, as one error (the hint says where to look)
    assert "error: the cluster refuses the job: allocation failure: Node count specification invalid" \
        in proc.stderr, proc.stderr
    assert proc.stderr.count("error:") == 1, proc.stderr
    assert store.runs() == []


def test_a_sweeps_job_array_runs_each_child_on_two_nodes(mlexec, project, store, slurm_config, two_nodes,
                                                         no_jobs_left):
    folder = project("""
        name: dist-sweep
        entry_points:
          main:
            parameters: {x: {type: int, default: 0}}
            command: "echo x={x} rank $RANK of $WORLD_SIZE on $(hostname); [ {x} != 2 ] || [ $RANK != 1 ] || exit 4"
    """)
    proc = mlexec("sweep", folder, "-b", "slurm", "-c", slurm_config("partition: multi\n"), "--env-manager", "local",
                  "-R", "nodes=2", "-P", "x=1,2", check=None)
    assert_no_traceback(proc)
    assert proc.returncode != 0  # a child failed
    assert "rank 1 exited with status 4; the other ranks were stopped" in proc.stdout + proc.stderr
    runs = {r.data.params["x"]: r for r in store.runs() if "x" in r.data.params}
    assert runs["1"].info.status == "FINISHED" and runs["2"].info.status == "FAILED"
    assert runs["2"].data.tags["mlexec.failureReason"].startswith("rank 1 exited with status 4")
    assert "mlexec.slurm.array-job-id" in runs["1"].data.tags
