"""The job folder on the shared filesystem, and the batch script that runs in it.

A job folder (``<shared-dir>/jobs/<name>/``) holds:

- ``project/``: a working copy of the project, where the command runs;
- ``job.sh``: the batch script (the prepared environment, the config's ``env``
  and ``setup`` lines, then the entry point's command);
- ``job.out``: the job's output (stdout and stderr), which mlexec streams to
  the terminal as it is written;
- ``exit-status``: written by the script as it exits (its exit code, 143 when
  Slurm stopped it), so mlexec learns of the end at once instead of waiting
  for its next question to the controller.
"""

from __future__ import annotations

import shlex
import shutil
import time
import uuid
from pathlib import Path
from typing import Mapping, Sequence

from attrs import frozen

from mlexec_core.plugin.interfaces import PreparedEnvironment

#: What is not copied into the working copy.
COPY_IGNORE = (".git", "__pycache__", "mlruns", ".mlexec-slurm")


@frozen
class JobDir:
    path: Path

    @classmethod
    def new(cls, jobs_dir: Path, project_name: str) -> "JobDir":
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in project_name)[:40] or "project"
        return cls(jobs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{uuid.uuid4().hex[:8]}")

    @property
    def project(self) -> Path:
        return self.path / "project"

    @property
    def script(self) -> Path:
        return self.path / "job.sh"

    @property
    def output(self) -> Path:
        return self.path / "job.out"

    @property
    def exit_status(self) -> Path:
        return self.path / "exit-status"

    def copy_project(self, source: Path, shared_dir: Path) -> None:
        """Copy the project (without .git, caches, mlruns and the shared folder itself)."""
        shared = shared_dir.resolve()

        def ignore(folder: str, names: list[str]) -> list[str]:
            skipped = [n for n in names if n in COPY_IGNORE]
            skipped += [n for n in names if n not in skipped and (Path(folder) / n).resolve() == shared]
            return skipped

        self.path.mkdir(parents=True, exist_ok=True)
        self.path.chmod(0o700)  # the script may hold credentials (a tracking server's)
        shutil.copytree(source, self.project, symlinks=True, ignore=ignore)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def environment_lines(environment: PreparedEnvironment | None, run_env: Mapping[str, str],
                      config_env: Mapping[str, str]) -> list[str]:
    """Shell lines setting up the prepared environment, the run's variables, then the config's."""
    lines = []
    if environment is not None:
        lines += [f"unset {name}" for name in environment.unset]
        lines += [f"export {name}={shlex.quote(str(value))}" for name, value in environment.env.items()]
        if environment.path_prepend:
            prefix = ":".join(shlex.quote(p) for p in environment.path_prepend)
            lines.append(f'export PATH={prefix}:"$PATH"')
    lines += [f"export {name}={shlex.quote(str(value))}" for name, value in run_env.items()]
    lines += [f"export {name}={shlex.quote(str(value))}" for name, value in config_env.items()]
    return lines


def batch_script(*, job_dir: JobDir, header: Sequence[str], env_lines: Sequence[str], setup: Sequence[str],
                 command: str) -> str:
    """The batch script: records its exit status, sets the environment, runs setup, then the command."""
    status = shlex.quote(str(job_dir.exit_status))
    parts = [
        "#!/bin/bash",
        *(f"# {line}" for line in header),
        "",
        "# Written as the script exits, so mlexec sees the end at once (143: stopped by Slurm).",
        f"__mlexec_status={status}",
        '__mlexec_end() { local code=$?; printf \'%s\\n\' "$code" >"$__mlexec_status.tmp" '
        '&& mv -f "$__mlexec_status.tmp" "$__mlexec_status"; }',
        "trap __mlexec_end EXIT",
        "trap 'exit 143' TERM",
        "",
        "# The environment",
        *env_lines,
        f"cd {shlex.quote(str(job_dir.project))} || exit 1",
    ]
    if setup:
        parts += ["", "# setup (from the backend config); a failing line fails the job", "set -e", *setup, "set +e"]
    parts += ["", "# The entry point's command", "(", command, ")", ""]
    return "\n".join(parts)
