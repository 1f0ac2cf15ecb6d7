"""mlexec-slurm passes the conformance kit, on the real cluster: every contract case,
the sweep cases as one job array (the backend's record declares ``fan-out``).

The job's stdout and stderr go to one output file, as with a plain ``sbatch``,
so the command's stderr shows on mlexec's stdout (``separates_stderr``). The
job runs on this machine (the one node), so after a stop none of its
processes may be left; what "left behind" means here is a job still queued.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mlexec_core.testing import make_project
from mlexec_core.testing.conformance import ENTRY_POINTS, Contract

from mlexec_slurm_testkit import queued_jobs


class TestSlurmContract(Contract):
    backend = "slurm"
    env_manager = "local"
    backend_config = "slurm.yaml"
    bad_backend_config = ({"partition": "debug", "cpus-per-tasks": 2}, "cpus-per-tasks")
    separates_stderr = False

    @pytest.fixture(autouse=True)
    def _cluster(self, slurm):
        """The real cluster, up (or the suite skips; fails under CI)."""

    @pytest.fixture
    def contract_project(self, tmp_path):
        shared = tmp_path / "shared"
        shared.mkdir()

        def make(entry_points: str = ENTRY_POINTS, files=None, environment=None) -> Path:
            body = f"name: contract\n{environment or ''}\nentry_points:\n{textwrap.indent(entry_points, '  ')}"
            return make_project(tmp_path / "contract", body,
                                {"slurm.yaml": f"shared-dir: {shared}\n", **(files or {})})

        return make

    @pytest.fixture
    def contract_leftovers(self):
        return lambda: sorted(queued_jobs())
