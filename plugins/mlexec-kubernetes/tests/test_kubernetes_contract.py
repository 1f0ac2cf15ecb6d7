"""The kubernetes backend passes the conformance kit, on the API server double.

No Kubernetes API server can run here, so the double (mlexec_k8s_double.py)
plays the cluster: each case scripts the pod's phases and log.  The command
does not really run (``runs_command`` is false), and what "nothing left" means
is a Job still active in the double after mlexec has exited.
"""

from __future__ import annotations

import pytest

from mlexec_core.testing.conformance import Contract
from mlexec_k8s_double import failing

CONFIG = "repository-uri: registry.example.test/team/demo\nnamespace: ml\n"


def _succeeds(c, ns, job):
    pod = c.start_pod(ns, job)
    c.log(ns, pod, "contract alpha=0.5 name=a b\n")
    c.finish_pod(ns, pod, 0)
    c.job_condition(ns, job, "Complete")


def _runs_forever(c, ns, job):
    pod = c.start_pod(ns, job)
    c.log(ns, pod, "contract-ready\n")


class TestKubernetesContract(Contract):
    backend = "kubernetes"
    env_manager = None  # the image holds the environment
    env_tag = None
    backend_config = "backend_config.yaml"
    environment_files = {"backend_config.yaml": CONFIG}
    bad_backend_config = ({"repository-uri": "registry.example.test/team/demo", "namespac": "ml"}, "namespac")
    runs_command = False
    runs_here = False

    @pytest.fixture
    def contract_env(self, k8s_env):
        return k8s_env

    @pytest.fixture
    def contract_arrange(self, fake_cluster):
        scenarios = {"success": _succeeds, "failure": failing("exit")[0], "slow": _runs_forever, "dry-run": None,
                     "sweep": _succeeds}

        def arrange(case):
            fake_cluster.scenario = scenarios[case]

        return arrange

    @pytest.fixture
    def contract_leftovers(self, fake_cluster):
        def active():
            with fake_cluster.cond:
                jobs = list(fake_cluster.jobs.items())
            done = {"Complete", "Failed"}
            return [f"{ns}/{name}" for (ns, name), job in jobs
                    if not any(c.get("type") in done and c.get("status") == "True"
                               for c in (job.get("status") or {}).get("conditions") or ())]

        return active
