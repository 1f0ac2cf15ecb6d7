"""Hook implementations of the ``virtualenv`` plugin (``--env-manager virtualenv`` / ``uv``);
:mod:`mlexec_virtualenv.manager` is imported only when a run uses it."""

from mlexec_core.plugin import Registration, hookimpl


@hookimpl
def mlexec_environment_managers():
    return [Registration(
        kind="env-manager", name="virtualenv", aliases=("uv",),
        path="mlexec_virtualenv.manager:VirtualenvManager",
        handles={"python", "conda", "none"}, default_for={"python", "none"}, capabilities={"rebuilds-from-lock"},
        description="a cached uv virtualenv from python_env.yaml (or conda.yaml's python and pip list, or uv.lock)",
    )]
