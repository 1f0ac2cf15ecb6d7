"""What the user asked for, before anything is checked: one record for every way in.

``mlexec run``, ``mlexec sweep``, :func:`mlexec_core.run` and
:func:`mlexec_core.sweep` each build one :class:`RunOptions`;
:func:`~mlexec_core.pipeline.resolve.resolve_plan` turns it into a checked
:class:`~mlexec_core.pipeline.plan.RunPlan`, and a sweep resolves its base plan
from the same record.  A new option that applies to every run is one field
here, one entry in :data:`mlexec_core.cli.options.RUN_OPTIONS` and one
keyword of the Python API, and every path sees it.

Values are kept as given (``-P`` items or a mapping, a backend config file
name or a mapping): reading them is :func:`resolve_plan`'s job, so that every
mistake is reported in one place, before any run exists.

This module imports only attrs.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import attrs
from attrs import frozen


def _given(value: Mapping[str, Any] | Sequence[str] | None) -> Mapping[str, Any] | tuple[str, ...]:
    """``-P``-style items as a tuple, a mapping as a dict (a copy: the record does not change under it)."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@frozen(kw_only=True)
class RunOptions:
    """One run's (or every child's of a sweep) options, as the user gave them."""

    #: The project: a directory, a git URI, an archive.
    uri: str | None = None
    #: ``-e``; ``None``: ``main``.
    entry_point: str | None = None
    #: ``-v``: a git commit, branch or tag.
    version: str | None = None
    #: ``-P NAME=VALUE`` items, or the API's mapping (a sweep's values are in its spec instead).
    parameters: Mapping[str, Any] | tuple[str, ...] = attrs.field(default=(), converter=_given)
    #: ``-A NAME[=VALUE]`` items, or the API's mapping.
    docker_args: Mapping[str, Any] | tuple[str, ...] = attrs.field(default=(), converter=_given)
    #: ``-R NAME=VALUE`` items, or a mapping (the API, a sweep file): over the MLproject's ``resources:``.
    resources: Mapping[str, Any] | tuple[str, ...] = attrs.field(default=(), converter=_given)
    experiment_name: str | None = None
    experiment_id: str | None = None
    #: ``-b``; ``None``: ``local``.
    backend: str | None = None
    #: ``-c``: a JSON or YAML file, inline JSON, or the API's mapping.
    backend_config: str | Mapping[str, Any] | None = None
    env_manager: str | None = None
    storage_dir: str | None = None
    #: ``--run-id``: log to this existing run.
    run_id: str | None = None
    run_name: str | None = None
    build_image: bool = False
    #: ``--restart-on-exit 75,143``: exit statuses after which the job is started again, into the same run.
    restart_on_exit: str | tuple[int, ...] | None = None
    #: ``--max-restarts K``: how many times at most (``None``: the default, 3).
    max_restarts: int | None = None
    #: Tags the new run gets besides mlexec's (``mlflow.parentRunId`` of the caller's active run ...).
    tags: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    #: Options only the Python API has (``docker_auth``), handed to plugins as ``plan.options``.
    extras: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    #: Build the environment from this recorded lock, not from the project's spec (``mlexec rerun``):
    #: an :class:`~mlexec_core.plugin.interfaces.EnvironmentLock`.
    environment_lock: Any = None

    def evolve(self, **changes: Any) -> "RunOptions":
        return attrs.evolve(self, **changes)
