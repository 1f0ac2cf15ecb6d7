"""mlexec-docker's hooks: the ``docker`` environment manager and image builder.

Records only: :mod:`mlexec_docker.environment` and :mod:`mlexec_docker.builder`
are imported when a run selects them.
"""

from __future__ import annotations

from mlexec_core.plugin import Registration, hookimpl


@hookimpl
def mlexec_environment_managers():
    return [Registration(
        kind="env-manager", name="docker", path="mlexec_docker.environment:DockerEnvironment",
        handles={"docker"}, default_for={"docker"}, priority=10, capabilities={"rebuilds-from-lock"},
        # the container's limits (mlexec_docker.resources) and the local backend's time limit;
        # processes-per-node: the ranks in one container (mlexec_docker.ranks); not nodes (one
        # engine is one machine), nor gpu-type: a local machine cannot choose a kind of GPU
        resources={"cpus", "memory", "gpus", "shm", "time", "processes-per-node"},
        description="runs docker_env projects in a container (image or Dockerfile; --build-image copies the code in)",
    )]


@hookimpl
def mlexec_image_builders():
    return [Registration(
        kind="image-builder", name="docker", path="mlexec_docker.builder:DockerImageBuilder",
        description="builds (content-addressed) and pushes images with the local Docker engine",
    )]
