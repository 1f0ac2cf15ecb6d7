"""A sweep's children as one Slurm job array (``Backend.submit_many``).

One ``sbatch --array=0-N%P`` for N+1 children, at most P running at once.  The
job folder (made once by :meth:`SlurmBackend.prepare`) holds the working copy
of the project, shared by every task, and one folder per task::

    <job folder>/project/            the working copy (every task runs here)
    <job folder>/array.sh            the array's batch script: runs tasks/$SLURM_ARRAY_TASK_ID/job.sh
    <job folder>/tasks/<i>/job.sh    child i's own script (its run's variables, its command)
    <job folder>/tasks/<i>/job.out   child i's output (sbatch --output=.../tasks/%a/job.out)
    <job folder>/tasks/<i>/exit-status

Each child is a :class:`~mlexec_slurm.job.SlurmJob` on the task's id
(``ARRAYID_i``): ``squeue``/``scancel`` take it as they take a job id, so a
child's status, pending reason, output and cancel are a single job's.  The last
task to end removes the job folder.
"""

from __future__ import annotations

import shlex
import shutil
import threading
from pathlib import Path

from attrs import field, frozen

from mlexec_slurm.script import JobDir

#: Tags of a child that ran as a task of a job array.
TAG_ARRAY_JOB_ID = "mlexec.slurm.array-job-id"
TAG_ARRAY_TASK_ID = "mlexec.slurm.array-task-id"


class ArrayFolder:
    """The array's job folder, removed once every task's child has ended (unless kept)."""

    def __init__(self, job_dir: JobDir, tasks: int, keep: bool) -> None:
        self.job_dir = job_dir
        self.remaining = tasks
        self.keep = keep
        self._lock = threading.Lock()

    @property
    def script(self) -> Path:
        return self.job_dir.path / "array.sh"

    def task(self, index: int) -> "TaskDir":
        return TaskDir(self.job_dir.path / "tasks" / str(index), self)

    def task_ended(self) -> None:
        with self._lock:
            self.remaining -= 1
            last = self.remaining == 0
        if last and not self.keep:
            self.job_dir.remove()


@frozen
class TaskDir(JobDir):
    """One task's folder: its script, output and exit status; the project is the array's."""

    array: ArrayFolder = field(eq=False, repr=False)

    @property
    def project(self) -> Path:
        return self.array.job_dir.project

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.array.task_ended()


def array_option(count: int, max_parallel: int) -> str:
    """``--array=0-N%P`` (no ``%P`` when the bound is not below the count)."""
    spec = f"0-{count - 1}"
    if 0 < max_parallel < count:
        spec += f"%{max_parallel}"
    return f"--array={spec}"


def array_script(folder_path: Path, header: list[str]) -> str:
    """The array's batch script: each task runs its own child's script."""
    tasks = shlex.quote(str(folder_path / "tasks"))
    return "\n".join([
        "#!/bin/bash",
        *(f"# {line}" for line in header),
        "",
        "# Each task of the array is one child run of the sweep, with its own script.",
        f'exec /bin/bash {tasks}/"$SLURM_ARRAY_TASK_ID"/job.sh',
        "",
    ])
