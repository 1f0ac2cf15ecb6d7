"""The built-in ``local`` backend and ``local`` environment manager.

The backend runs the command on this machine in its own session (so its
process group can be stopped as a whole), with its output piped through the
run's output (shown live, kept with the run).  The environment manager uses
the environment mlexec itself runs in, as ``mlflow run --env-manager local`` does.
The process pieces are in :mod:`mlexec_core.plugin.process`; the hooks that
register these classes (as records) are in :mod:`mlexec_core.builtins.local_plugin`.
"""

from __future__ import annotations

import os
from typing import Any

from mlexec_core.pipeline.plan import RunPlan, RunRecord
from mlexec_core.plugin.interfaces import (
    Backend,
    CommandSpec,
    EnvironmentManager,
    PreparedEnvironment,
    SubmittedJob,
    command_env,
)
from mlexec_core.plugin.process import ExecutionJob, ProcessLauncher, shell
from mlexec_core.project.model import Project


class LocalEnvironment(EnvironmentManager):
    """The environment mlexec runs in (registered in :mod:`mlexec_core.builtins.local_plugin`)."""

    def prepare(self, plan: RunPlan) -> PreparedEnvironment:
        return PreparedEnvironment(name="local", location="current environment")

    def describe(self, project: Project) -> str:
        return "the current environment (nothing is installed)"


class LocalBackend(Backend):
    """Runs on this machine (registered in :mod:`mlexec_core.builtins.local_plugin`)."""

    def submit(self, plan: RunPlan, run: RunRecord, prepared: PreparedEnvironment | None) -> SubmittedJob:
        spec = CommandSpec(
            command=plan.command,
            cwd=plan.work_dir,
            env=command_env(os.environ, prepared, run),
            added={**(prepared.env if prepared else {}), **run.env},
            output=run.output,
        )
        launcher = (prepared.launcher if prepared else None) or ProcessLauncher()
        return ExecutionJob(launcher.start(spec), time_limit=plan.resources.time)

    def dry_run(self, plan: RunPlan) -> dict[str, Any]:
        return {"cwd": str(plan.work_dir), "shell": shell()[0]}
