"""Hook implementations of the ``virtualenv`` plugin (``--env-manager virtualenv`` / ``uv``)."""

from mlexec_core.plugin import hookimpl


@hookimpl
def mlexec_environment_managers():
    from mlexec_virtualenv.manager import VirtualenvManager

    return [VirtualenvManager]
