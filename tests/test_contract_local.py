"""The built-in local backend and environment manager pass the conformance kit."""

from mlexec_core.testing.conformance import Contract


class TestLocalContract(Contract):
    backend = "local"
    env_manager = "local"
    bad_backend_config = ({"niceness": 3}, "'niceness'")  # local takes no configuration
