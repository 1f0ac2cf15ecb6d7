"""mlexec-kubernetes's hooks: the ``kubernetes`` backend."""

from __future__ import annotations

from mlexec_core.plugin import hookimpl


@hookimpl
def mlexec_backends():
    from mlexec_kubernetes.backend import KubernetesBackend

    return [KubernetesBackend]
