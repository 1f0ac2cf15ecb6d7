"""mlexec-slurm's hooks: the ``slurm`` backend."""

from __future__ import annotations

from mlexec_core.plugin import hookimpl


@hookimpl
def mlexec_backends():
    from mlexec_slurm.backend import SlurmBackend

    return [SlurmBackend]
