"""mlexec-slurm's hooks: the ``slurm`` backend, as a record; :mod:`mlexec_slurm.backend` is
imported only when a run uses ``-b slurm``."""

from __future__ import annotations

from mlexec_core.plugin import Registration, hookimpl


@hookimpl
def mlexec_backends():
    return [Registration(
        kind="backend", name="slurm", path="mlexec_slurm.backend:SlurmBackend",
        # restartable: a job that ended PREEMPTED or NODE_FAIL without a requeue is submitted again;
        # requeues: a job Slurm requeues (preempted, its node lost, scontrol requeue) goes on in the same
        # run, reported with SubmittedJob.report_restart (mlexec_slurm.job).
        capabilities={"fan-out", "command-in-script", "restartable", "requeues"},
        # sbatch options (mlexec_slurm.resources); no shm: Slurm has no option for /dev/shm.
        # nodes and processes-per-node: --nodes/--ntasks-per-node and one srun task per process.
        resources={"cpus", "memory", "gpus", "gpu-type", "time", "nodes", "processes-per-node"},
        description="submits the project as a Slurm batch job; output streamed, Slurm's own status and reasons",
    )]
