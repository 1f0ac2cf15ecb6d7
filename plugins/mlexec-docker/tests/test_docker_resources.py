"""A run's resources (``-R``, the MLproject's ``resources:``) as container limits, through the real
CLI on the real Docker engine: seen from inside the container (cgroup v1 files, ``df /dev/shm``)
and in ``docker inspect``; ``-A`` options a resource replaces; the time limit; what is refused
before the run exists.  GPUs cannot be started here (no GPU, no NVIDIA runtime): their device
requests are checked as container options only."""

from __future__ import annotations

import attrs
import pytest

from mlexec_core.testing import assert_no_traceback, wait_until

BB = "image: mlexec-test/busybox:1"
MiB = 1024**2
#: What the container sees of its limits: cgroup v1 (this machine's engine), then /dev/shm in KiB.
SHOW_LIMITS = ("echo memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
               " memsw=$(cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes)"
               " quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)"
               " period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
               " shm=$(df -k /dev/shm | tail -1 | awk '{print $2}')")


def limits(stdout: str) -> dict[str, int]:
    """The ``name=value`` pairs of :data:`SHOW_LIMITS`' line."""
    (line,) = [line for line in stdout.splitlines() if line.startswith("memory=")]
    return {k: int(v) for k, v in (item.split("=") for item in line.split())}


def project_name(proj) -> str:
    return (proj / "MLproject").read_text().split()[1]


def test_resources_become_the_containers_limits(
        mlexec, mlexec_background, docker_project, store, busybox_image, engine):
    # The command shows its limits, then waits for the test to look at the running container
    # with `docker inspect` (the file `release`, in the mounted project, lets it end).
    proj = docker_project(BB, f"""
        main:
          command: "{SHOW_LIMITS}; i=0; while [ ! -e release ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done"
        """)
    bg = mlexec_background("run", proj, "-R", "cpus=1.5", "-R", "memory=256M", "-R", "shm=128M")
    bg.wait_for("memory=")
    (container,) = wait_until(lambda: engine.containers(f"mlexec.project={project_name(proj)}"), 30,
                              "the run's container")
    host = engine.inspect(container["Id"])["HostConfig"]
    (proj / "release").touch()
    proc = bg.finish()
    assert proc.returncode == 0, proc.stderr
    assert host["NanoCpus"] == 1_500_000_000
    assert host["Memory"] == host["MemorySwap"] == 256 * MiB
    assert host["ShmSize"] == 128 * MiB
    assert not host.get("DeviceRequests")
    seen = limits(proc.stdout)
    assert seen["memory"] == seen["memsw"] == 256 * MiB  # memory-swap = memory: no swap on top
    assert seen["quota"] * 2 == seen["period"] * 3  # 1.5 CPUs
    assert seen["shm"] == 128 * 1024
    assert store.only_run().info.status == "FINISHED"
    assert "warning" not in proc.stderr.lower()
    assert_no_traceback(proc)


def test_the_mlprojects_resources_become_the_containers_limits(mlexec, docker_project, store, busybox_image):
    proj = docker_project(BB, f"""
        main:
          command: "{SHOW_LIMITS}"
          resources: {{memory: 192M, shm: 64M}}
        """)
    with open(proj / "MLproject", "a") as mlproject:  # the top level: every entry point's default
        mlproject.write("resources: {cpus: 0.5, memory: 512M}\n")
    proc = mlexec("run", proj, check=0)
    seen = limits(proc.stdout)
    assert seen["quota"] * 2 == seen["period"]  # 0.5 CPUs, from the top level
    assert seen["memory"] == seen["memsw"] == 192 * MiB  # the entry point's, over the top level's
    assert seen["shm"] == 64 * 1024
    assert store.only_run().info.status == "FINISHED"

    proc = mlexec("run", proj, "-R", "memory=none", "-R", "cpus=1", check=0)  # -R over the file
    seen = limits(proc.stdout)
    assert seen["quota"] == seen["period"]
    assert seen["memory"] > 2**40  # no limit
    assert seen["shm"] == 64 * 1024


def test_a_resource_replaces_the_docker_arg_that_sets_the_same_thing_with_one_warning(
        mlexec, docker_project, busybox_image):
    proj = docker_project(BB, f'main: {{command: "{SHOW_LIMITS}; echo nvidia=$NVIDIA_VISIBLE_DEVICES"}}')
    proc = mlexec("run", proj, "-A", "memory=512m", "-A", "shm-size=32m", "-R", "memory=256M", check=0)
    warnings = [line for line in proc.stderr.splitlines() if "-A memory=512m" in line]
    assert len(warnings) == 1, proc.stderr
    assert "memory=256M" in warnings[0] and "-R memory=none" in warnings[0]
    assert "shm-size" not in proc.stderr  # no resource sets it: kept, no warning
    seen = limits(proc.stdout)
    assert seen["memory"] == seen["memsw"] == 256 * MiB
    assert seen["shm"] == 32 * 1024

    proc = mlexec("run", proj, "-A", "memory=512m", "-R", "memory=none", check=0)  # keeping the -A value
    assert "warning" not in proc.stderr.lower(), proc.stderr
    assert limits(proc.stdout)["memory"] == 512 * MiB

    # -A gpus=all alone cannot start here (no NVIDIA runtime); -R gpus=0 wins: no device request
    proc = mlexec("run", proj, "-A", "gpus=all", "-R", "gpus=0", check=0)
    (warning,) = [line for line in proc.stderr.splitlines() if "-A gpus=all" in line]
    assert "gpus=0" in warning and "-R gpus=none" in warning
    assert "nvidia=void" in proc.stdout


def test_time_limit_stops_and_removes_the_container(mlexec, docker_project, store, busybox_image, engine):
    proj = docker_project(BB, 'main: {command: "echo started; sleep 30"}')
    proc = mlexec("run", proj, "-R", "time=2s")
    assert proc.returncode == 1, proc.stderr
    assert "started" in proc.stdout
    assert "time limit 2s reached" in proc.stderr
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert engine.containers(f"mlexec.run-id={run.info.run_id}") == []
    assert_no_traceback(proc)
    # no_leftovers (through docker_project) checks that no container at all is left


def test_gpu_type_is_refused_before_anything_exists(mlexec, docker_project, store):
    proj = docker_project(BB, 'main: {command: "true"}')
    proc = mlexec("run", proj, "-R", "gpu-type=A100")
    assert proc.returncode == 2, proc.stderr
    assert "-b local with the docker environment cannot honour the resource -R gpu-type=A100" in proc.stderr
    assert "leave out -R gpu-type" in proc.stderr
    assert store.runs() == []
    assert_no_traceback(proc)


@pytest.mark.parametrize("resource, docker_arg, needle, hint", [
    # the engine runs on this machine here, so the local backend (which pins the container to cores
    # of its own) refuses first; an engine with fewer CPUs than this machine gets the docker manager's words
    ("cpus={more}", None, "cpus={more}: this machine has|the resource cpus={more}: the Docker engine has", "cpus"),
    ("memory=4M", None, "the resource memory=4M: Docker limits a container to at least 6M", "-R memory=none"),
    ("memory=256M", "memory-swap=128m", "-A memory-swap=128m is below the resource memory=256M",
     "leave out -A memory-swap"),
    ("memory=256M", "memory-reservation=1g", "-A memory-reservation=1g is above the resource memory=256M",
     "soft limit"),
], ids=["cpus-above-the-engine", "memory-below-6M", "swap-below-memory", "reservation-above-memory"])
def test_limits_the_engine_would_refuse_are_refused_before_the_run(
        mlexec, docker_project, store, busybox_image, engine, resource, docker_arg, needle, hint):
    more = engine.cpus() + 1  # this engine's CPUs, and one
    proj = docker_project(BB, 'main: {command: "true"}')
    args = ["-R", resource.format(more=more)] + (["-A", docker_arg] if docker_arg else [])
    proc = mlexec("run", proj, *args)
    assert proc.returncode == 2, proc.stderr
    assert any(text.format(more=more) in proc.stderr for text in needle.split("|")), proc.stderr
    assert hint in proc.stderr
    assert store.runs() == []
    assert_no_traceback(proc)


def test_allocated_gpus_and_cores_as_container_options(tmp_path):
    """A unit test of the container options, without starting a container: there is no GPU
    and no NVIDIA runtime here, so a container with a GPU device request cannot start.  The
    allocation is what the local backend gives a job from this machine's pool; the spec's
    environment carries the host's CUDA_VISIBLE_DEVICES as it would for a process."""
    from mlexec_core.plugin.interfaces import Allocation, CommandSpec, Resources
    from mlexec_docker.engine import Engine
    from mlexec_docker.launcher import ContainerLauncher

    warnings = []

    class Reporter:
        def warning(self, message):
            warnings.append(message)

    def body(resources, allocation, host_config=None):
        launcher = ContainerLauncher(Engine(), "img", project="p", mount_code=None, binds=[], environment={},
                                     config={}, host_config=host_config or {}, resources=resources,
                                     reporter=Reporter())
        spec = CommandSpec(command="true", cwd=tmp_path, env={"MLFLOW_RUN_ID": "r1"},
                           added={"CUDA_VISIBLE_DEVICES": "1,3"}, allocation=allocation)
        made = launcher.body(spec)
        return made["HostConfig"], dict(item.split("=", 1) for item in made["Env"])

    host, env = body(Resources(gpus=2, cpus=2), Allocation(gpus=("1", "3"), cores=(0, 1)),
                     host_config={"NanoCpus": 2_000_000_000})
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": ["1", "3"],
                                       "Capabilities": [["gpu"]]}]
    assert host["CpusetCpus"] == "0,1" and host["NanoCpus"] == 2_000_000_000
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"  # renumbered from 0 inside the container
    assert env["NVIDIA_VISIBLE_DEVICES"] == "1,3"  # the host's ids

    host, env = body(Resources(gpus=2), None)  # asked, nothing allotted: the engine picks two
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": 2, "DeviceIDs": None,
                                       "Capabilities": [["gpu"]]}]
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and "NVIDIA_VISIBLE_DEVICES" not in env
    assert "CpusetCpus" not in host

    host, env = body(Resources(gpus=0), Allocation())
    assert "DeviceRequests" not in host and env["NVIDIA_VISIBLE_DEVICES"] == "void"

    host, env = body(Resources(), None, host_config={"DeviceRequests": ["from -A gpus"]})  # nothing asked
    assert host["DeviceRequests"] == ["from -A gpus"] and env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert warnings == []

    host, env = body(Resources(cpus=1), Allocation(cores=(1,)), host_config={"CpusetCpus": "0"})  # -A cpuset-cpus=0
    assert host["CpusetCpus"] == "1"
    (warning,) = warnings
    assert "-A cpuset-cpus=0 is replaced by the cores this machine gave the job (1)" in warning


def test_dry_run_shows_the_docker_run_options(docker_project, busybox_image):
    from mlexec_core.pipeline.options import RunOptions
    from mlexec_core.pipeline.resolve import resolve_plan
    from mlexec_core.plugin.interfaces import Resources
    from mlexec_core.plugin.manager import build_plugins

    class Recorder:
        def __init__(self):
            self.lines = []

        def warning(self, message):
            self.lines.append(message)

        info = success = warning

    proj = docker_project(BB, 'main: {command: "true"}')
    recorder = Recorder()
    plugins = build_plugins(reporter=recorder)
    plan = resolve_plan(plugins, RunOptions(uri=str(proj), docker_args=["memory=1g", "user=1000", "shm-size=1g"]))
    # resources set on the plan directly: which keys a backend honours is the core's check
    plan = attrs.evolve(plan, resources=Resources(cpus=1.5, memory=256 * MiB, gpus=2))
    shown = plugins.environment_manager("docker").dry_run(plan)
    assert shown == {"image": busybox_image, "docker_run": [
        "--cpus=1.5", "--memory=256M", "--memory-swap=256M", "--gpus=2 (the devices the local backend allots)",
        "--user=1000", "--shm-size=1g"]}
    (warning,) = recorder.lines
    assert "-A memory=1g" in warning and "memory=256M" in warning and "-R memory=none" in warning


def test_resources_over_docker_args_as_engine_options():
    """The mapping without a daemon (it also runs where the core does not yet let a docker run ask
    for cpus, memory or shm): what each resource sets, what it replaces, what it keeps."""
    from mlexec_core.errors import UsageError
    from mlexec_core.plugin.interfaces import Resources
    from mlexec_docker.resources import apply_resources, check_limits
    from mlexec_docker.runconfig import apply_docker_args

    args = (("m", "1g"), ("memory-swap", "2g"), ("cpus", "2"), ("gpus", None), ("pids-limit", "64"))
    _, from_args = apply_docker_args(args)
    host, warnings = apply_resources(Resources(memory=512 * MiB, cpus=0.5, gpus=1), args, from_args)
    assert host["Memory"] == 512 * MiB and host["MemorySwap"] == 2 * 1024**3  # -A memory-swap kept: swap on top
    assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 64
    assert "DeviceRequests" not in host  # the allotted devices are added when the container is created
    assert [w.split(" and ")[0] for w in warnings] == ["-A cpus=2", "-A m=1g", "-A gpus"]
    assert all("-R " in w and "=none" in w for w in warnings)

    host, warnings = apply_resources(Resources(shm=64 * MiB, memory=128 * MiB), (), {})
    assert host == {"ShmSize": 64 * MiB, "Memory": 128 * MiB, "MemorySwap": 128 * MiB} and warnings == []
    assert apply_resources(Resources(), args, from_args) == (from_args, [])  # nothing asked: -A as given

    with pytest.raises(UsageError, match="the Docker engine has 2 CPUs"):
        check_limits(Resources(cpus=2.5), (), {}, engine_cpus=2)
    with pytest.raises(UsageError, match="at least 0.01 CPUs"):
        check_limits(Resources(cpus=0.005), (), {})
    check_limits(Resources(cpus=2, memory=6 * MiB), (), {"MemorySwap": -1}, engine_cpus=2)
