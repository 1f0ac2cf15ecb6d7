"""mlexec-slurm: the ``slurm`` backend (see ``mlexec_slurm.backend``)."""
