"""Hook implementations of the mlexec-conda plugin; the work is done in :mod:`mlexec_conda.manager`."""

from __future__ import annotations

from mlexec_core.plugin import hookimpl

from mlexec_conda.manager import CondaEnvironment


@hookimpl
def mlexec_environment_managers():
    return [CondaEnvironment]
