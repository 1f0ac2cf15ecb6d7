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
    bad_environment = (BUSYBOX_ENV + '\n  environment: ["MLEXEC_CONTRACT_NOT_SET"]', {},
                       "docker_env.environment: MLEXEC_CONTRACT_NOT_SET")

    @pytest.fixture
    def contract_leftovers(self, engine, busybox_image):
        return lambda: [c["Id"] for c in engine._call("GET", "/containers/json", params={"all": "1"})]
