"""A run as resolved: what will execute, where, and how it is tracked.

:class:`RunPlan` is built once, before anything runs, from the project and the
user's options; every plugin receives the same frozen plan.  Nothing in it
needs checking again: parameter values are typed and rendered, paths are
absolute, and the environment manager and backend names are canonical.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Mapping

import attrs
from attrs import frozen

from mlexec_core.pipeline.output import RunOutput
from mlexec_core.project.model import EntryPoint, ParamType, Project
from mlexec_core.resources import Resources


class RunStatus(str, enum.Enum):
    """MLflow's run statuses."""

    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED)


@frozen
class ResolvedParameter:
    name: str
    type: ParamType
    #: The plain value, exactly what the command receives (unquoted) and what is logged.
    value: str
    #: "user" (from -P), "default" (from the MLproject)
    source: str


@frozen
class Source:
    """Where the project came from, for tracking tags."""

    #: The URI as the user gave it, credentials removed.
    uri: str
    #: "local" for a directory used in place.
    kind: str = "local"
    git_commit: str | None = None
    git_repo_url: str | None = None
    git_branch: str | None = None
    version: str | None = None
    #: What MLflow records as ``mlflow.source.name`` when it is not ``uri``: for a directory
    #: inside a git work tree, ``file://<work tree root>#<subdirectory>``.
    name: str | None = None


@frozen
class TrackingOptions:
    experiment_name: str | None = None
    experiment_id: str | None = None
    run_name: str | None = None
    #: Attach to this existing run instead of creating one (``--run-id``).
    run_id: str | None = None
    #: Extra tags to set on the run.
    tags: Mapping[str, str] = attrs.field(factory=dict)


@frozen
class Restarts:
    """When a job that ended is started again into the same run (``--restart-on-exit``, ``--max-restarts``)."""

    #: Exit statuses that mean "start me again" (a script's own "preempted, resume me").
    exit_codes: frozenset[int] = frozenset()
    #: Restarts at most, whatever their cause.
    max_restarts: int = 3
    #: The user asked for restarts: every attempt gets ``MLEXEC_ATTEMPT`` and ``MLEXEC_CHECKPOINT_DIR``.
    asked: bool = False


@frozen
class RunPlan:
    project: Project
    source: Source
    entry_point: EntryPoint
    parameters: Mapping[str, ResolvedParameter]
    #: ``-P`` values the entry point does not declare, appended as ``--key value``.
    extra_parameters: Mapping[str, str]
    #: The shell command to run, values substituted and quoted.
    command: str
    #: Canonical name of the environment manager that prepares the environment
    #: ("" when the backend brings its own, e.g. an image, and none applies).
    env_manager: str
    #: The name the user asked for (an alias such as ``uv``), else ``env_manager``.
    env_manager_requested: str
    backend: str
    #: The backend's parsed configuration (whatever its ``parse_config`` returned).
    backend_config: Any
    #: ``-A`` options in the order given: ``(name, value-or-None)``.
    docker_args: tuple[tuple[str, str | None], ...] = ()
    build_image: bool = False
    storage_dir: Path | None = None
    tracking: TrackingOptions = TrackingOptions()
    #: What the run needs (the MLproject's ``resources:``, then ``-R``); every key set is one
    #: the backend declared it honours (checked when the plan was made).
    resources: Resources = Resources()
    #: When the job is started again into the same run.
    restarts: Restarts = Restarts()
    #: Options that came only through the Python API (e.g. ``docker_auth``).
    options: Mapping[str, Any] = attrs.field(factory=dict)
    #: Build the environment from this recorded lock, not from the project's spec (``mlexec rerun``):
    #: an :class:`~mlexec_core.plugin.interfaces.EnvironmentLock` of a kind the manager rebuilds from.
    environment_lock: Any = None
    #: The backend config as given (``-c``: the file's or the JSON's contents), before
    #: ``parse_config``; what a run's record keeps (secrets redacted there).
    backend_config_values: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def work_dir(self) -> Path:
        return self.project.directory

    def logged_params(self) -> dict[str, str]:
        """What goes to the tracking store as params: declared values, then extras."""
        params = {name: p.value for name, p in self.parameters.items()}
        params.update(self.extra_parameters)
        return params


@frozen
class RunRecord:
    """The tracking system's handle on a run, from :func:`mlexec_run_create`."""

    run_id: str
    experiment_id: str | None = None
    tracking_uri: str | None = None
    #: Variables the job needs to log to this run (``MLFLOW_RUN_ID`` ...).
    env: Mapping[str, str] = attrs.field(factory=dict)
    #: Name of the tracker that created it; ``None`` when no tracker answered.
    tracker: str | None = None
    run_name: str | None = None
    #: Where the job's output goes: backends write it here (``run.output.write(data, stream)``).
    #: The core sets it once the run exists; it shows the output and keeps it with the run.
    output: RunOutput = attrs.field(factory=RunOutput, eq=False, repr=False)
