"""mlexec-docker's hooks: the ``docker`` environment manager and image builder."""

from __future__ import annotations

from mlexec_core.plugin import hookimpl


@hookimpl
def mlexec_environment_managers():
    from mlexec_docker.environment import DockerEnvironment

    return [DockerEnvironment]


@hookimpl
def mlexec_image_builders():
    from mlexec_docker.builder import DockerImageBuilder

    return [DockerImageBuilder]
