"""The built-in local backend and environment manager pass the conformance kit."""

from mlexec_core.testing.conformance import Contract


class TestLocalContract(Contract):
    backend = "local"
    env_manager = "local"
    bad_backend_config = ({"niceness": 3}, "'niceness'")  # local takes no configuration
    #: What a job sees: its own core (this machine has at least one), and OpenMP told so.
    resource_probes = {
        "cpus": ("1", "echo nproc=$(nproc) omp=$OMP_NUM_THREADS", "nproc=1 omp=1"),
    }
