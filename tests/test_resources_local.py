"""The local machine as a small cluster (issue 20, items 7 to 9): GPUs, cores and memory
leased to runs, shared safely by every mlexec of the machine.

No GPU exists on the machines these tests run on: the GPU pool is ``CUDA_VISIBLE_DEVICES=0,1,2,3``
in mlexec's environment.  The allocation is real (the lease store, the waiting, the
``CUDA_VISIBLE_DEVICES`` each job gets); the devices are not.  ``MLEXEC_TEST_GPUS=1`` runs
one more test on a machine that has real GPUs (``nvidia-smi``).

Every job is the small program ``rec.py`` below: it records what it got (its
``CUDA_VISIBLE_DEVICES``, its affinity and its process group's, ``OMP_NUM_THREADS``, its
memory cgroup's limit) and when it started and ended by its own clock, and it waits for
files the test creates, so that which jobs overlap is decided by the test, never by a
duration.  Each mlexec is a separate process, as two sweeps sharing a machine are, and
each test has its own lease store (``XDG_STATE_HOME`` in its folder).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from mlexec_core.testing import assert_no_traceback, assert_processes_gone, wait_until

POOL = ("0", "1", "2", "3")

REC = r'''
import json, os, signal, subprocess, sys, time

name, hold, barrier, on_term = sys.argv[1], sys.argv[2], int(float(sys.argv[3])), sys.argv[4]
out = os.environ["REC_DIR"]
start = time.time()
record = {"name": name, "start": start, "pid": os.getpid(), "pgid": os.getpgid(0),
          "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "affinity": sorted(os.sched_getaffinity(0)),
          "leader_affinity": sorted(os.sched_getaffinity(os.getpgid(0))),
          "omp": os.environ.get("OMP_NUM_THREADS"), "mkl": os.environ.get("MKL_NUM_THREADS")}
record["grandchild_affinity"] = json.loads(subprocess.check_output(
    [sys.executable, "-c", "import os, json; print(json.dumps(sorted(os.sched_getaffinity(0))))"]))
for line in open("/proc/self/cgroup").read().splitlines():
    number, controllers, path = line.split(":", 2)
    if "memory" in controllers.split(","):
        limit = f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
    elif number == "0" and not controllers and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        limit = f"/sys/fs/cgroup{path}/memory.max"
    else:
        continue
    record["cgroup"] = path
    record["memory_limit"] = open(limit).read().strip() if os.path.exists(limit) else None


def touch(what):
    open(os.path.join(out, what), "w").close()


def wait_file(what, seconds=60):
    until = time.time() + seconds
    while not os.path.exists(os.path.join(out, what)) and time.time() < until:
        time.sleep(0.02)


def save(code=0):
    record["end"] = time.time()
    with open(os.path.join(out, name + ".tmp"), "w") as f:
        json.dump(record, f)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name + ".json"))
    sys.exit(code)


def on_sigterm(signum, frame):
    touch(name + ".term")
    wait_file(on_term)
    save(143)


if on_term != "-":
    signal.signal(signal.SIGTERM, on_sigterm)
touch(name + ".started")
if barrier:  # wait until `barrier` jobs have started: they run at the same time
    until = time.time() + 60
    while len([f for f in os.listdir(out) if f.endswith(".started")]) < barrier and time.time() < until:
        time.sleep(0.02)
if hold != "-":
    wait_file(hold)
save()
'''

MLPROJECT = """
name: rec
entry_points:
  main:
    parameters:
      name: string
      hold: {type: string, default: "-"}
      barrier: {type: float, default: 0}
      on_term: {type: string, default: "-"}
    command: python rec.py {name} {hold} {barrier} {on_term}
"""


@pytest.fixture
def rec(project, tmp_path):
    """(the project folder, the folder jobs record into, the environment of every mlexec)."""
    folder = project(MLPROJECT, files={"rec.py": REC})
    out = tmp_path / "records"
    out.mkdir()
    env = {"CUDA_VISIBLE_DEVICES": ",".join(POOL), "REC_DIR": str(out),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    return folder, out, env


def args(folder, name, *resources, hold="-", barrier=0, on_term="-"):
    return ["run", folder, "--env-manager", "local", "-P", f"name={name}", "-P", f"hold={hold}",
            "-P", f"barrier={barrier}", "-P", f"on_term={on_term}", *[a for r in resources for a in ("-R", r)]]


def records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


def lease_store(tmp_path: Path) -> dict:
    """What the test's lease store holds (``{}`` when nothing was ever written)."""
    found = list((tmp_path / "state" / "mlexec" / "leases").glob("*.json"))
    return json.loads(found[0].read_text()) if found else {}


def assert_store_empty(tmp_path: Path) -> None:
    def empty():
        state = lease_store(tmp_path)
        return not state.get("leases") and not state.get("queue")

    wait_until(empty, 10, lambda: f"an empty lease store, not {lease_store(tmp_path)}")


def overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def assert_no_device_shared(got: dict[str, dict]) -> None:
    """No two jobs that ran at the same time (by their own clocks) had a device in common."""
    names = sorted(got)
    for x, a in enumerate(names):
        for b in names[x + 1:]:
            if overlap(got[a], got[b]):
                shared = set(got[a]["cuda"].split(",")) & set(got[b]["cuda"].split(","))
                assert not shared, f"{a} and {b} ran at the same time on device {shared}"


def test_concurrent_mlexec_processes_never_share_a_device(rec, mlexec_background, store, tmp_path):
    folder, out, env = rec
    asks = [1, 2, 1, 2, 1, 1, 2]  # 10 devices asked of a pool of 4, at once
    # the first job holds its device until every other mlexec is waiting or running
    runs = [mlexec_background(*args(folder, f"j{i}", f"gpus={k}", hold="go" if i == 0 else "-"), env=env)
            for i, k in enumerate(asks)]
    wait_until(lambda: (out / "j0.started").exists(), 60, "the first job to start")
    for i, bg in enumerate(runs[1:], 1):  # each has either started its job or is waiting for devices
        wait_until(lambda: "mlexec: waiting for" in bg.stderr or (out / f"j{i}.started").exists(), 60,
                   lambda: f"mlexec to start its job or wait: {bg.stderr}")
    (out / "go").touch()
    done = [bg.finish(90) for bg in runs]
    for proc in done:
        assert proc.returncode == 0, proc.stderr
        assert_no_traceback(proc)
    got = records(out)
    assert len(got) == len(asks)
    for i, k in enumerate(asks):
        devices = got[f"j{i}"]["cuda"].split(",")
        assert len(devices) == k and len(set(devices)) == k and set(devices) <= set(POOL), got[f"j{i}"]
    assert_no_device_shared(got)
    # more was asked than the pool holds: someone waited, and said so
    assert any("mlexec: waiting for" in p.stderr and "pool 0,1,2,3" in p.stderr for p in done)
    tags = {r.data.params["name"]: r.data.tags.get("mlexec.gpus") for r in store.runs()}
    assert tags == {name: rec["cuda"] for name, rec in got.items()}
    assert_store_empty(tmp_path)


def test_a_waiting_run_is_scheduled_then_runs_once_the_devices_are_free(rec, mlexec_background, store, tmp_path):
    folder, out, env = rec
    holder = mlexec_background(*args(folder, "holder", "gpus=3", hold="go"), env=env)
    wait_until(lambda: (out / "holder.started").exists(), 60, lambda: f"the holder to start: {holder.stderr}")
    waiter = mlexec_background(*args(folder, "waiter", "gpus=2"), env=env)
    waiter.wait_for("mlexec: waiting for 2 GPUs")
    assert f"held by pid {holder.pid}" in waiter.stderr
    wait_until(lambda: [r for r in store.runs() if r.info.status == "SCHEDULED"], 30, "a SCHEDULED run")
    assert not (out / "waiter.started").exists()
    (out / "go").touch()
    assert holder.finish().returncode == 0
    finished = waiter.finish()
    assert finished.returncode == 0, finished.stderr
    got = records(out)
    assert got["waiter"]["start"] >= got["holder"]["end"]
    assert {r.info.status for r in store.runs()} == {"FINISHED"}
    assert_store_empty(tmp_path)


def test_a_run_cancelled_while_it_waits_ends_killed_with_nothing_started(rec, mlexec_background, store, tmp_path):
    folder, out, env = rec
    holder = mlexec_background(*args(folder, "holder", "gpus=4", hold="go"), env=env)
    wait_until(lambda: (out / "holder.started").exists(), 60, lambda: f"the holder to start: {holder.stderr}")
    waiter = mlexec_background(*args(folder, "waiter", "gpus=1"), env=env)
    waiter.wait_for("mlexec: waiting for 1 GPU")
    waiter.signal(signal.SIGTERM)
    stopped = waiter.finish()
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert_no_traceback(stopped)
    killed = [r for r in store.runs() if r.data.params["name"] == "waiter"]
    assert [r.info.status for r in killed] == ["KILLED"]
    assert not (out / "waiter.started").exists()
    state = lease_store(tmp_path)  # only the holder's lease; the waiter left no place in the queue
    assert [lease["holder"] for lease in state["leases"]] == [holder.pid] and state["queue"] == []
    (out / "go").touch()
    assert holder.finish().returncode == 0
    assert_store_empty(tmp_path)


def test_an_mlexec_killed_with_sigkill_gives_its_devices_back_once_its_job_is_gone(
        rec, mlexec_background, store, tmp_path):
    folder, out, env = rec
    # the reaper gives the orphaned job 60 s after SIGTERM: it ends when the test says so
    first = mlexec_background(*args(folder, "orphan", "gpus=4", hold="never", on_term="let-go"),
                              env={**env, "MLEXEC_STOP_TIMEOUT": "60"})
    wait_until(lambda: (out / "orphan.started").exists(), 60, lambda: f"the job to start: {first.stderr}")
    first.kill()  # SIGKILL: mlexec cannot release anything itself
    wait_until(lambda: (out / "orphan.term").exists(), 30, "the reaper's SIGTERM to the orphaned job")
    second = mlexec_background(*args(folder, "next", "gpus=1"), env=env)
    # the job of the dead mlexec still runs: its devices are not handed out
    second.wait_for("mlexec: waiting for 1 GPU")
    assert "held by the job of a gone mlexec" in second.stderr
    assert not (out / "next.started").exists()
    (out / "let-go").touch()
    done = second.finish()
    assert done.returncode == 0, done.stderr
    got = records(out)
    assert got["next"]["start"] >= got["orphan"]["end"]
    assert_processes_gone([got["orphan"]["pid"]])
    assert_store_empty(tmp_path)


def test_a_run_past_its_time_limit_ends_failed_and_gives_its_devices_back(rec, mlexec, store, tmp_path):
    folder, out, env = rec
    proc = mlexec(*args(folder, "late", "gpus=2", "cpus=1", "time=1s", hold="never"), env=env, check=1)
    assert "time limit 1s reached" in proc.stderr, proc.stderr
    assert_no_traceback(proc)
    assert [(r.info.status, r.data.tags.get("mlexec.gpus")) for r in store.runs()] == [("FAILED", "0,1")]
    assert_store_empty(tmp_path)


def test_more_gpus_than_the_pool_is_refused_before_any_run(rec, mlexec, store, tmp_path):
    folder, out, env = rec
    proc = mlexec(*args(folder, "big", "gpus=5"), env=env, check=2)
    assert "gpus=5" in proc.stderr and "0,1,2,3 (from CUDA_VISIBLE_DEVICES)" in proc.stderr
    assert_no_traceback(proc)
    assert store.runs() == [] and not records(out)
    assert not lease_store(tmp_path).get("leases")
    proc = mlexec(*args(folder, "any", "gpus=1"), env={**env, "CUDA_VISIBLE_DEVICES": ""}, check=2)
    assert "CUDA_VISIBLE_DEVICES is empty" in proc.stderr
    dry = mlexec(*args(folder, "dry", "gpus=2"), "--dry-run", "--json", env=env, check=0)
    plan = json.loads(dry.stdout)["backend_plan"]
    assert "GPUs 0,1,2,3 (from CUDA_VISIBLE_DEVICES)" in plan["machine"]
    assert "2 GPUs" in plan["allocation"]


def test_cpus_pin_each_run_to_cores_of_its_own(rec, mlexec_background, mlexec, store, tmp_path):
    folder, out, env = rec
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs 2 cores")
    # both wait for each other to start: they run at the same time, each on its core
    runs = [mlexec_background(*args(folder, f"c{i}", "cpus=1", barrier=2), env=env) for i in range(2)]
    for bg in runs:
        done = bg.finish(90)
        assert done.returncode == 0, done.stderr
    got = records(out)
    assert overlap(got["c0"], got["c1"])
    for r in got.values():
        assert len(r["affinity"]) == 1 and r["affinity"][0] in cores
        assert r["leader_affinity"] == r["grandchild_affinity"] == r["affinity"]  # the whole job, from the start
        assert (r["omp"], r["mkl"]) == ("1", "1")
    assert got["c0"]["affinity"] != got["c1"]["affinity"]
    assert {r.data.tags["mlexec.cores"] for r in store.runs()} == {str(got["c0"]["affinity"][0]),
                                                                   str(got["c1"]["affinity"][0])}
    # a fraction takes a whole core; the user's own OMP_NUM_THREADS is kept
    mlexec(*args(folder, "frac", "cpus=0.5"), env={**env, "OMP_NUM_THREADS": "7"}, check=0)
    frac = records(out)["frac"]
    assert len(frac["affinity"]) == 1 and (frac["omp"], frac["mkl"]) == ("7", "1")
    # without resources nothing changes: every core, no thread variables, the pool as it was
    mlexec(*args(folder, "plain"), env=env, check=0)
    plain = records(out)["plain"]
    assert plain["affinity"] == cores and plain["omp"] is None and plain["cuda"] == "0,1,2,3"
    assert_store_empty(tmp_path)


def _memory_total() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))


def test_memory_is_admission_and_a_cgroup_limit_where_mlexec_may_make_one(rec, mlexec_background, store, tmp_path):
    folder, out, env = rec
    half = _memory_total() // 2 // 1024 ** 2 + 256  # MiB: two of them do not fit
    first = mlexec_background(*args(folder, "m0", f"memory={half}M", hold="go"), env=env)
    wait_until(lambda: (out / "m0.started").exists(), 60, lambda: f"the first job to start: {first.stderr}")
    second = mlexec_background(*args(folder, "m1", f"memory={half}M"), env=env)
    second.wait_for("mlexec: waiting for")
    assert "of memory" in second.stderr and "held" in second.stderr
    (out / "go").touch()
    assert first.finish().returncode == 0
    done = second.finish()
    assert done.returncode == 0, done.stderr
    got = records(out)
    assert got["m1"]["start"] >= got["m0"]["end"]
    enforced = "not enforced" not in first.stderr
    if os.geteuid() == 0 and Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").is_file():
        assert enforced, first.stderr  # root on cgroup v1: mlexec may make one
    if enforced:
        for r in got.values():
            assert r["memory_limit"] == str(half * 1024 ** 2), r
            assert Path(r["cgroup"]).name.startswith("mlexec-")
        for r in got.values():  # removed after the job
            assert not list(Path("/sys/fs/cgroup").glob(f"*{r['cgroup']}"))
    else:
        assert "mlexec: memory" in first.stderr and "admission only" in first.stderr
    assert_store_empty(tmp_path)


COUNT_DEVICES = (
    "import ctypes; cuda = ctypes.CDLL('libcuda.so.1'); assert cuda.cuInit(0) == 0; n = ctypes.c_int(); "
    "cuda.cuDeviceGetCount(ctypes.byref(n)); print(n.value)")


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").is_file(),
                    reason="needs root on cgroup v1, where mlexec makes a memory cgroup per job")
def test_a_job_over_its_memory_is_killed_in_its_cgroup_and_says_so(project, mlexec, store, tmp_path):
    folder = project("""
        name: hog
        entry_points:
          main:
            command: python -c "b = bytearray(256 * 1024 * 1024); print('survived')"
    """)
    proc = mlexec("run", folder, "--env-manager", "local", "-R", "memory=64M",
                  env={"XDG_STATE_HOME": str(tmp_path / "state")}, check=1)
    assert "survived" not in proc.stdout
    assert "out of memory: the job went over its memory=64M and the kernel killed it" in proc.stderr, proc.stderr
    assert [r.info.status for r in store.runs()] == ["FAILED"]
    assert_store_empty(tmp_path)


@pytest.mark.skipif(os.environ.get("MLEXEC_TEST_GPUS") != "1",
                    reason="needs a machine with real GPUs: set MLEXEC_TEST_GPUS=1 there")
def test_real_gpus_each_run_sees_exactly_its_own_device(project, mlexec_background, tmp_path):
    """Two runs at once, each with one device: the CUDA driver shows each exactly one (nvidia-smi
    itself lists every GPU whatever CUDA_VISIBLE_DEVICES says, so the driver is asked)."""
    if shutil.which("nvidia-smi") is None:
        pytest.fail("MLEXEC_TEST_GPUS=1 but nvidia-smi is not on PATH")
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    if len([line for line in listed.splitlines() if line.startswith("GPU ")]) < 2:
        pytest.fail(f"MLEXEC_TEST_GPUS=1 needs 2 GPUs; nvidia-smi -L lists:\n{listed}")
    folder = project(f"""
        name: gpus
        entry_points:
          main:
            parameters: {{name: string}}
            command: "python -c \\"{COUNT_DEVICES}\\" > {{name}}.txt && echo $CUDA_VISIBLE_DEVICES >> {{name}}.txt && sleep 2"
    """)
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    runs = [mlexec_background("run", folder, "--env-manager", "local", "-R", "gpus=1", "-P", f"name=g{i}", env=env)
            for i in range(2)]
    for bg in runs:
        assert bg.finish(120).returncode == 0, bg.stderr
    seen = [(folder / f"g{i}.txt").read_text().split() for i in range(2)]
    assert [s[0] for s in seen] == ["1", "1"], seen
    assert seen[0][1] != seen[1][1], seen


def test_no_resources_leaves_the_machine_alone(rec, mlexec, tmp_path):
    """A run that asks for nothing (or for no GPU) takes no lease and writes no store."""
    folder, out, env = rec
    mlexec(*args(folder, "plain"), env=env, check=0)
    mlexec(*args(folder, "none", "gpus=0"), env=env, check=0)  # no GPU at all, and nothing to lease
    assert records(out)["none"]["cuda"] == ""
    assert not (tmp_path / "state" / "mlexec" / "leases").exists()  # (the state folder also keeps code digests)


def test_the_lease_store_counts_a_lease_by_its_mlexec_and_its_job(tmp_path):
    """In one process: a lease of a pid that was reused (another start time) with no job left
    is free; a lease whose mlexec is gone but whose job's process group still runs is held."""
    from mlexec_core.allocation import GpuPool, Grant, LeaseStore, Request

    path = tmp_path / "leases.json"
    job = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        path.write_text(json.dumps({"queue": [], "leases": [
            {"id": "reused", "holder": os.getpid(), "holder_start": "1", "pgid": None, "mark": None,
             "gpus": ["0"], "cores": [], "memory": 0, "cgroup": None, "since": 0},
            {"id": "orphan", "holder": 2 ** 22 + 1, "holder_start": "1", "pgid": job.pid, "mark": None,
             "gpus": ["1"], "cores": [], "memory": 0, "cgroup": None, "since": 0}]}))
        store = LeaseStore(path)
        pool = GpuPool(("0", "1"), "CUDA_VISIBLE_DEVICES")
        grant = store.acquire(Request(gpus=1), "t1", pool=pool)
        assert isinstance(grant, Grant) and grant.allocation.gpus == ("0",)
        why = store.acquire(Request(gpus=1), "t2", pool=pool)
        assert why.startswith("waiting for 1 GPU (pool 0,1: ") and "0 held by this mlexec" in why
        assert f"1 held by the job of a gone mlexec (process group {job.pid})" in why
        store.release(grant.lease)
        assert store.acquire(Request(gpus=1), "t2", pool=pool).allocation.gpus == ("0",)
    finally:
        job.kill()
        job.wait()
    assert [lease["gpus"] for lease in LeaseStore(path).leases()] == [["0"]]  # the orphan's group is gone


def test_a_sweep_shares_the_pool_without_collisions_and_shows_each_childs_devices(rec, mlexec, store, tmp_path):
    """Six children asking for a GPU each, on a pool of four: never more than four at once (the
    machine's room bounds --max-parallel), no two running children on one device."""
    folder, out, env = rec
    proc = mlexec("sweep", folder, "--env-manager", "local", "-P", "name=c0,c1,c2,c3,c4,c5", "-P", "barrier=4",
                  "-R", "gpus=1", "--max-parallel", "6", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    assert "at most 4 children at once: this machine has room for 4 with gpus=1 each" in proc.stderr
    assert "at most 4 at once" in proc.stderr
    got = records(out)
    assert sorted(got) == [f"c{i}" for i in range(6)]
    for name, record in got.items():
        assert record["cuda"] in POOL, record
    assert_no_device_shared(got)
    # the first four waited for each other (barrier=4): four devices were in use at once
    assert len({got[f"c{i}"]["cuda"] for i in range(4)}) == 4
    children = [r for r in store.runs() if r.data.tags.get("mlexec.sweep") != "parent"]
    assert {r.data.params["name"]: r.data.tags["mlexec.gpus"] for r in children} == \
        {name: record["cuda"] for name, record in got.items()}
    for name, record in got.items():  # each child's line says where it ran (piped: one line per child)
        line = next(x for x in proc.stderr.splitlines() if f"name={name} " in x)
        assert line.endswith(f"(GPU {record['cuda']})"), line
    assert_store_empty(tmp_path)


def test_mlexec_run_says_what_it_asked_for_and_what_it_got(rec, mlexec, tmp_path):
    folder, out, env = rec
    proc = mlexec(*args(folder, "one", "gpus=2", "cpus=1"), env=env, check=0)
    got = records(out)["one"]
    assert "    resources: cpus=1, gpus=2" in proc.stderr, proc.stderr
    assert len(got["affinity"]) == 1
    assert f"    on GPUs {got['cuda']}; core {got['affinity'][0]}" in proc.stderr, proc.stderr
