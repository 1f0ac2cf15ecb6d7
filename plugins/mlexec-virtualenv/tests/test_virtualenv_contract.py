"""The virtualenv environment manager passes the conformance kit (real uv, real venvs)."""

from __future__ import annotations

import sys

from mlexec_core.testing.conformance import Contract

PYTHON_ENV = f'python: "{sys.version_info[0]}.{sys.version_info[1]}"\n'


class TestVirtualenvContract(Contract):
    backend = "local"
    env_manager = "virtualenv"
    environment = "python_env: python_env.yaml"
    environment_files = {"python_env.yaml": PYTHON_ENV}
    bad_environment = ("python_env: python_env.yaml", {"python_env.yaml": PYTHON_ENV + "dependecies: [six]\n"},
                       "python_env.yaml: unknown key 'dependecies'")
