"""The built-in ``local`` plugin's hooks: records for the ``local`` backend and
environment manager, registered exactly as an installed plugin's are.  The
classes live in :mod:`mlexec_core.builtins.local`, imported when selected."""

from __future__ import annotations

from mlexec_core.plugin import Registration, hookimpl


@hookimpl
def mlexec_backends():
    return [Registration(
        kind="backend", name="local", path="mlexec_core.builtins.local:LocalBackend",
        capabilities={"restartable"}, resources={"cpus", "memory", "gpus", "time", "processes-per-node"},
        description="runs on this machine, output streamed to the terminal and kept with the run",
    )]


@hookimpl
def mlexec_environment_managers():
    return [Registration(
        kind="env-manager", name="local", path="mlexec_core.builtins.local:LocalEnvironment",
        handles={"none", "python", "conda"}, default_for={"none"}, priority=0,
        description="the environment mlexec runs in; the project's environment file is not used",
    )]
