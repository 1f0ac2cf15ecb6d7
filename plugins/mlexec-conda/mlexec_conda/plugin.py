"""Hook implementations of the mlexec-conda plugin; the work is done in :mod:`mlexec_conda.manager`,
imported only when a run uses ``--env-manager conda``."""

from __future__ import annotations

from mlexec_core.plugin import Registration, hookimpl


@hookimpl
def mlexec_environment_managers():
    return [Registration(
        kind="env-manager", name="conda", path="mlexec_conda.manager:CondaEnvironment",
        handles={"conda"}, default_for={"conda"}, capabilities={"rebuilds-from-lock"},
        description="conda.yaml environments, built with conda/mamba/micromamba when installed, else with the "
                    "built-in rattler engine; cached by content",
    )]
