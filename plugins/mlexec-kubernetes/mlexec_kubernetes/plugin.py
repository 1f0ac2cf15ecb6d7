"""mlexec-kubernetes's hooks: the ``kubernetes`` backend, imported only when ``-b kubernetes`` is used."""

from __future__ import annotations

from mlexec_core.plugin import Registration, hookimpl


@hookimpl
def mlexec_backends():
    return [Registration(
        kind="backend", name="kubernetes", path="mlexec_kubernetes.backend:KubernetesBackend",
        capabilities={"detachable", "restartable"},
        resources={"cpus", "memory", "gpus", "gpu-type", "shm", "time", "nodes", "processes-per-node"},
        description="runs the project as a Kubernetes Job (image built and pushed with mlexec-docker)",
    )]
