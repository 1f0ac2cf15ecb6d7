"""mlexec-docker's environment manager passes the conformance kit, on the real engine."""

from __future__ import annotations

import pytest

from mlexec_core.testing.conformance import Contract

BUSYBOX_ENV = "docker_env:\n  image: mlexec-test/busybox:1"


class TestDockerContract(Contract):
    backend = "local"
    env_manager = None  # chosen from docker_env
    env_tag = "docker"
    environment = BUSYBOX_ENV
    runs_here = False  # in the container; what is left is checked as containers
    #: Seen from inside the container: its cgroup's limits (v1 here, v2 elsewhere) and /dev/shm's size.
    resource_probes = {
        "cpus": ("0.5", "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max",
                 "50000"),
        "memory": ("64M", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || "
                          "cat /sys/fs/cgroup/memory.max", "67108864"),
        "shm": ("64M", "df -k /dev/shm", "65536"),
    }
    bad_environment = (BUSYBOX_ENV + '\n  environment: ["MLEXEC_CONTRACT_NOT_SET"]', {},
                       "docker_env.environment: MLEXEC_CONTRACT_NOT_SET")

    @pytest.fixture
    def contract_leftovers(self, engine, busybox_image):
        return lambda: [c["Id"] for c in engine._call("GET", "/containers/json", params={"all": "1"})]
