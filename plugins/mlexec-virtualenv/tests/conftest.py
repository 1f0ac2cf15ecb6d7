"""Fixtures for the virtualenv plugin's tests.

Every test gets its own environment root (``MLEXEC_ENV_ROOT``), and the CLI
runs uv through a small wrapper (``MLEXEC_UV``) that logs each call, so a test
can tell "no uv call at all" from "uv ran", and can hold uv still half way
through an install to interrupt it.  Real uv, real installs from the package
index this machine reaches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from virtualenv_helpers import WRAPPER, UvWrapper

pytest_plugins = ["mlexec_core.testing"]


@pytest.fixture
def uv_wrapper(tmp_path) -> UvWrapper:
    from uv import find_uv_bin

    path = tmp_path / "bin" / "uv"
    path.parent.mkdir()
    path.write_text(WRAPPER.format(python=sys.executable, real=find_uv_bin()))
    path.chmod(0o755)
    return UvWrapper(path, tmp_path / "uv-calls.log")


@pytest.fixture(autouse=True)
def env_root(tmp_path, monkeypatch) -> Path:
    """A fresh environment root for each test, for in-process code and (through cli_env) the CLI."""
    root = tmp_path / "envs"
    monkeypatch.setenv("MLEXEC_ENV_ROOT", str(root))
    return root


@pytest.fixture
def cli_env(cli_env, env_root, uv_wrapper):
    return {**cli_env, "MLEXEC_ENV_ROOT": str(env_root), "MLEXEC_UV": str(uv_wrapper.path),
            "UVWRAP_LOG": str(uv_wrapper.log)}
