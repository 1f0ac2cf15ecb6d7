"""The run's resources (``-R``, the MLproject's ``resources:``) as sbatch options, on the real cluster.

Each job prints what Slurm gave it (``SLURM_CPUS_PER_TASK``, ``SLURM_MEM_PER_NODE``)
and what the controller recorded for it (``scontrol show job``, asked from inside
the job while it runs), so the tests see the allocation itself, not only the
sbatch command line.
"""

from __future__ import annotations

import json

import pytest

from mlexec_core.testing import assert_no_traceback, wait_until

from mlexec_slurm_testkit import queued_jobs, slurm_cmd

#: What the job got, one ``key=value`` a line.
SHOW = ("echo cpus=$SLURM_CPUS_PER_TASK; echo mem=$SLURM_MEM_PER_NODE; echo gpus=$CUDA_VISIBLE_DEVICES; "
        "scontrol show job -o $SLURM_JOB_ID | tr ' ' '\\\\n'")

PROJECT = f"""
name: slurm-resources
entry_points:
  main:
    command: "{SHOW}"
  sleep:
    command: "echo started; sleep 300; echo never"
"""


def got(out: str) -> dict[str, str]:
    """The ``key=value`` lines of the job's output (its own variables, then scontrol's fields)."""
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line and " " not in line)


def test_cpus_memory_and_time_are_the_jobs_allocation(mlexec, project, store, slurm_config, no_jobs_left):
    proc = mlexec("run", project(PROJECT), "-b", "slurm", "-c", slurm_config(), "--env-manager", "local",
                  "-R", "cpus=2", "-R", "memory=300M", "-R", "time=10m", check=0)
    job = got(proc.stdout)
    assert job["cpus"] == "2" and job["mem"] == "300"  # what the job's own environment says
    assert job["NumCPUs"] == "2" and job["MinMemoryNode"] == "300M" and job["TimeLimit"] == "00:10:00"
    assert "warning" not in proc.stderr  # no config value said otherwise, nothing rounded
    run = store.only_run()
    assert run.info.status == "FINISHED"
    job_id = run.data.tags["mlexec.slurm.job-id"]
    accounted = lambda: slurm_cmd("sacct", "-n", "-P", "-X", "-j", job_id,  # noqa: E731
                                  "-o", "AllocCPUS,ReqMem,Timelimit").stdout.split()
    # accounting too (slurmdbd is written asynchronously: the record fills in within moments)
    wait_until(lambda: accounted() == ["2|300M|00:10:00"], 30, lambda: f"sacct to record {accounted()}")
    assert_no_traceback(proc)


def test_the_mlprojects_resources_reach_the_job_a_fraction_of_a_cpu_rounded_up(mlexec, project, store,
                                                                               slurm_config, no_jobs_left):
    proj = project(f"""
        name: slurm-resources
        resources: {{cpus: 1.5, time: 90s}}
        entry_points:
          main:
            resources: {{memory: 200.5M}}
            command: "{SHOW}"
    """)
    proc = mlexec("run", proj, "-b", "slurm", "-c", slurm_config(), "--env-manager", "local", check=0)
    job = got(proc.stdout)
    assert job["cpus"] == "2" and job["NumCPUs"] == "2"
    assert job["mem"] == "201" and job["MinMemoryNode"] == "201M"  # megabytes, rounded up
    assert job["TimeLimit"] == "00:02:00"  # Slurm's limit is whole minutes; mlexec's own is 90 s
    assert ("cpus=1.5: Slurm allocates whole CPUs, so the job asks for --cpus-per-task=2 (rounded up)"
            in proc.stderr)
    assert proc.stderr.index("Slurm allocates whole CPUs") < proc.stderr.index("Submitted Slurm job")
    assert store.only_run().info.status == "FINISHED"


def test_a_resource_wins_over_the_backend_config_saying_so_before_submission(mlexec, project, store,
                                                                               slurm_config, no_jobs_left):
    proj = project(f"""
        name: slurm-resources
        resources: {{cpus: 2, memory: 1G, time: 5m}}
        entry_points:
          main: {{command: "{SHOW}"}}
    """)
    config = slurm_config("cpus-per-task: 1\nmem: 1024M\ntime: '5:00'\n")
    proc = mlexec("run", proj, "-b", "slurm", "-c", config, "--env-manager", "local", check=0)
    assert got(proc.stdout)["NumCPUs"] == "2"
    warning = ("the run asks for cpus=2 but the backend config's cpus-per-task is 1: the job gets "
               "--cpus-per-task=2; to keep the config's value, run with -R cpus=none")
    assert warning in proc.stderr
    assert proc.stderr.index(warning) < proc.stderr.index("Submitted Slurm job")
    # the same value in other words (1G and 1024M, 5m and 5:00) is no conflict
    assert "mem is" not in proc.stderr and "time is" not in proc.stderr
    assert proc.stderr.count("warning") == 1

    kept = mlexec("run", proj, "-b", "slurm", "-c", config, "--env-manager", "local", "-R", "cpus=none",
                  "--dry-run", "--json", check=0)
    plan = json.loads(kept.stdout)["backend_plan"]
    assert "--cpus-per-task=1" in plan["sbatch_options"] and plan["warnings"] == []
    assert "warning" not in kept.stderr


def test_sbatch_args_and_other_keys_that_say_the_same_give_way_too(mlexec, project, slurm_config, slurm):
    config = slurm_config("""
        mem-per-cpu: 2G
        gres: gpu:2,nic:1
        sbatch-args: ['-c3', '--time=5', '--mail-type=END']
    """)
    proc = mlexec("run", project(PROJECT), "-b", "slurm", "-c", config, "--env-manager", "local",
                  "-R", "cpus=0.5", "-R", "memory=100.5M", "-R", "gpus=1", "-R", "gpu-type=a100", "-R", "time=90s",
                  "--dry-run", "--json", check=0)
    options = json.loads(proc.stdout)["backend_plan"]["sbatch_options"]
    assert options[1:7] == ["--time=0-00:02:00", "--cpus-per-task=1", "--mem=101M", "--gres=gpu:a100:1,nic:1",
                            "--signal=B:USR1@60", "--mail-type=END"]
    err = proc.stderr
    assert "cpus=0.5: Slurm allocates whole CPUs, so the job asks for --cpus-per-task=1 (rounded up)" in err
    assert "the backend config's sbatch-args has '-c3' (left out): the job gets --cpus-per-task=1" in err
    assert ("the backend config's mem-per-cpu is 2G: the job gets --mem=101M instead (sbatch takes one of --mem "
            "and --mem-per-cpu); to keep the config's value, run with -R memory=none") in err
    assert ("the run asks for gpus=1, gpu-type=a100 but the backend config's gres is gpu:2,nic:1: the job gets "
            "--gres=gpu:a100:1; to keep the config's value, run with -R gpus=none -R gpu-type=none") in err
    assert ("the backend config's sbatch-args has '--time=5' (left out): the job gets --time=0-00:02:00 (Slurm "
            "counts whole minutes; mlexec stops the job at 1m30s)") in err
    assert_no_traceback(proc)


def test_time_limit_stops_the_job_to_the_second_and_fails_the_run(mlexec, project, store, slurm_config,
                                                                   no_jobs_left):
    proc = mlexec("run", project(PROJECT), "-e", "sleep", "-b", "slurm", "-c", slurm_config(),
                  "--env-manager", "local", "-R", "time=3s")
    assert proc.returncode == 1, proc.stderr
    assert "started" in proc.stdout and "never" not in proc.stdout
    assert "time limit 3s reached" in proc.stderr
    run = store.only_run()
    job_id = run.data.tags["mlexec.slurm.job-id"]
    assert f"Slurm job {job_id} reached its time limit (3s): cancelled it" in proc.stderr
    assert job_id not in queued_jobs()
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.failureReason"] == "time limit 3s reached"  # the local backend's words
    assert run.data.tags["mlexec.slurm.state"] == "CANCELLED"
    assert_no_traceback(proc)


@pytest.fixture
def gpus(slurm):
    """The test node's two a100 GPUs, which exist only in Slurm's bookkeeping (ci-setup.sh)."""
    gres = slurm_cmd("sinfo", "-h", "-p", "debug", "-o", "%G").stdout.split()
    if "gpu:a100:2" not in gres:
        pytest.fail(f"the test node has no gres gpu:a100:2 (sinfo says {gres}); "
                    "rerun plugins/mlexec-slurm/ci-setup.sh, which declares them")


def test_gpus_of_a_type_are_allocated_as_gres(mlexec, project, store, slurm_config, no_jobs_left, gpus):
    """No GPU exists on this machine: the test node declares two a100 GPUs whose device files are
    stand-ins (ci-setup.sh), so the allocation is Slurm's bookkeeping, which is what mlexec asks for."""
    proc = mlexec("run", project(PROJECT), "-b", "slurm", "-c", slurm_config(), "--env-manager", "local",
                  "-R", "gpus=1", "-R", "gpu-type=a100", check=0)
    job = got(proc.stdout)
    assert job["TresPerNode"] == "gres:gpu:a100:1"
    assert job["gpus"] == "0"  # Slurm gave the job one of the two, as CUDA_VISIBLE_DEVICES
    assert store.only_run().info.status == "FINISHED"


def test_gpus_the_cluster_does_not_have_are_refused_before_anything_exists(mlexec, project, store, slurm_config,
                                                                           shared_dir, gpus, slurm):
    before = queued_jobs()
    proc = mlexec("run", project(PROJECT), "-b", "slurm", "-c", slurm_config(), "--env-manager", "local",
                  "-R", "gpus=1", "-R", "gpu-type=h100", check=2)
    assert "the cluster refuses the job" in proc.stderr and "sinfo -o" in proc.stderr
    untyped = mlexec("run", project(PROJECT), "-b", "slurm", "-c", slurm_config(), "--env-manager", "local",
                     "-R", "gpu-type=a100", check=2)
    assert "gpu-type=a100 says which GPU but not how many" in untyped.stderr
    assert store.runs() == [] and queued_jobs() == before and not list(shared_dir.iterdir())
    assert_no_traceback(proc)
    assert_no_traceback(untyped)


def test_shm_is_refused_before_anything_exists(mlexec, project, store, slurm_config, shared_dir, slurm):
    """Slurm has no option for /dev/shm: the backend does not declare it, and the core refuses it."""
    before = queued_jobs()
    proc = mlexec("run", project(PROJECT), "-b", "slurm", "-c", slurm_config(), "--env-manager", "local",
                  "-R", "shm=1G", check=2)
    assert "-b slurm cannot honour the resource -R shm=1G: it honours cpus, memory, gpus, gpu-type, time" \
        in proc.stderr
    assert store.runs() == [] and queued_jobs() == before and not list(shared_dir.iterdir())
    assert_no_traceback(proc)


SWEEP_PROJECT = f"""
name: slurm-resources-sweep
entry_points:
  main:
    resources: {{cpus: 1, memory: 200M, time: 5s}}
    parameters:
      x: {{type: int, default: 0}}
    command: "echo x={{x}}; {SHOW}; [ {{x}} -eq 0 ] || sleep 60"
"""


def test_a_sweeps_job_array_carries_the_resources_and_each_task_its_time_limit(mlexec, project, store,
                                                                               slurm_config, tmp_path,
                                                                               no_jobs_left):
    """(A sweep takes the MLproject's resources: -R on `mlexec sweep` is not there yet.)"""
    proj = project(SWEEP_PROJECT)
    dry = mlexec("sweep", proj, "-b", "slurm", "-c", slurm_config(), "--env-manager", "local", "-P", "x=0,1",
                 "--dry-run", "--json", check=0)
    options = json.loads(dry.stdout)["fan_out"]["sbatch_options"]
    assert {"--cpus-per-task=1", "--mem=200M", "--time=0-00:01:00", "--array=0-1"} <= set(options)

    proc = mlexec("sweep", proj, "-b", "slurm", "-c", slurm_config(), "--env-manager", "local", "-P", "x=0,1",
                  check=None)
    assert_no_traceback(proc)
    assert "Submitted Slurm job array" in proc.stderr
    kids = {r.data.params["x"]: r for r in store.runs() if r.data.tags.get("mlflow.parentRunId")}
    assert kids["0"].info.status == "FINISHED"
    assert kids["1"].info.status == "FAILED"
    assert kids["1"].data.tags["mlexec.failureReason"] == "time limit 5s reached"
    for x, kid in kids.items():
        log = store.client.download_artifacts(kid.info.run_id, "mlexec/output.log", str(tmp_path / x))
        job = got(open(log).read())
        assert job["cpus"] == "1" and job["mem"] == "200" and job["MinMemoryNode"] == "200M"
        assert job["TimeLimit"] == "00:01:00"
