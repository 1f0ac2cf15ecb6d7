"""The conda environment manager passes the conformance kit: the built-in rattler
engine, a file:// channel made by the test suite (no conda executable, no network)."""

from __future__ import annotations

import pytest

from mlexec_core.testing import make_project
from mlexec_core.testing.conformance import ENTRY_POINTS, Contract


class TestCondaContract(Contract):
    backend = "local"
    env_manager = "conda"
    environment = "conda_env: conda.yaml"
    bad_environment = ("conda_env: conda.yaml", {"conda.yaml": "channels: [x]\ndependencies: leaf\n"},
                       "dependencies: expected a list of packages")

    @pytest.fixture
    def contract_env(self, conda_env):
        return conda_env

    @pytest.fixture
    def contract_project(self, tmp_path, channel):
        def make(entry_points=ENTRY_POINTS, files=None, environment=None):
            env = self.environment if environment is None else environment
            files = {"conda.yaml": f"name: c\nchannels: [{channel}]\ndependencies: [leaf]\n"} if files is None \
                else files
            body = f"name: contract\n{env}\nentry_points:\n" + "".join(f"  {line}\n" for line in
                                                                         entry_points.splitlines())
            return make_project(tmp_path / "contract", body, files)

        return make
