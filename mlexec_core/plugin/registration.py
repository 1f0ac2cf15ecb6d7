"""What a registration hook returns: a small record naming a class, not the class.

The record is the one place a plugin writes what mlexec knows about a class
(name, kind, aliases, what it handles, its capabilities, where it lives);
mlexec reads it to list, choose and check plugins, and imports the class only
when a run selects it.
So an installed plugin costs a run that does not use it nothing but the import
of its ``plugin`` module, which holds the hooks and these records.

This module imports only attrs: ``plugin.py`` modules import it at start-up.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable

import attrs
from attrs import frozen

#: The kinds of class a plugin can register, as ``mlexec plugins`` labels them,
#: with the registration hook that registers each.
KINDS: dict[str, str] = {
    "backend": "mlexec_backends",
    "env-manager": "mlexec_environment_managers",
    "image-builder": "mlexec_image_builders",
    "search-strategy": "mlexec_search_strategies",
}

#: What a record of each kind may declare in ``capabilities``, and what mlexec does with it.
CAPABILITIES: dict[str, dict[str, str]] = {
    "backend": {
        "detachable": "its jobs live on without mlexec (a cluster Job): `mlexec run --detach` is allowed, a "
                      "run whose mlexec died is not failed while its job lives, and Backend.attach picks the "
                      "job up again",
        "fan-out": "it implements Backend.submit_many (a native fan-out, a Slurm job array): a sweep's fixed "
                   "children are submitted at once",
        "command-in-script": "the command is written into a script (Slurm's batch script), not handed to a "
                             "shell as one argument, so the system's limit on one argument does not apply",
        "restartable": "Backend.submit may be called again for a run whose job ended, to start its next "
                       "attempt into the same run (--restart-on-exit, --max-restarts)",
        "requeues": "its scheduler starts a job again by itself (a preempted Slurm job requeued, a Kubernetes "
                    "Job's new pod after a disruption) and the job says so with SubmittedJob.report_restart: "
                    "every run gets MLEXEC_ATTEMPT and MLEXEC_CHECKPOINT_DIR, restarts asked for or not",
    },
    "env-manager": {
        "rebuilds-from-lock": "EnvironmentManager.prepare builds the environment from plan.environment_lock (an "
                              "EnvironmentLock of a kind it made) when it is set, not from the project's spec: "
                              "`mlexec rerun` runs a recorded run's environment again",
    },
    "image-builder": {},
    "search-strategy": {
        "adaptive": "it learns from results: `mlexec sweep` requires --metric",
        "finite": "it knows all its children (a grid): --trials is not required",
    },
}


def _kinds(values: Iterable[Any]) -> frozenset[str]:
    if isinstance(values, str):
        values = (values,)
    return frozenset(str(getattr(v, "value", v)) for v in values)


def _names(values: Iterable[str]) -> tuple[str, ...]:
    return (values,) if isinstance(values, str) else tuple(values)


@frozen
class Registration:
    """One environment manager, backend, image builder or search strategy, described
    without importing it: the only place a plugin writes what mlexec knows about it.

    Return these from the registration hooks
    (:func:`~mlexec_core.plugin.hookspecs.mlexec_environment_managers`,
    :func:`~mlexec_core.plugin.hookspecs.mlexec_backends`,
    :func:`~mlexec_core.plugin.hookspecs.mlexec_image_builders`,
    :func:`~mlexec_core.plugin.hookspecs.mlexec_search_strategies`)::

        Registration(kind="env-manager", name="conda", path="mlexec_conda.manager:CondaEnvironment",
                     handles={"conda"}, default_for={"conda"}, description="...")
        Registration(kind="backend", name="slurm", path="mlexec_slurm.backend:SlurmBackend",
                     capabilities={"fan-out", "command-in-script"}, description="...")

    The class at ``path`` is imported when it is first needed and must be a
    subclass of the interface for ``kind``.  It carries behaviour only; an
    instance reads its record as ``self.registration`` (and ``self.name``).
    """

    #: "env-manager", "backend", "image-builder" or "search-strategy".
    kind: str
    #: The ``--env-manager`` / ``--backend`` / image builder / ``--strategy`` name.
    name: str
    #: Where the class lives: ``"package.module:ClassName"`` (``"package.module.ClassName"`` works too),
    #: or the class itself when it is defined beside the hooks (it is imported with them anyway).
    path: str | type
    #: More names that select it (environment managers only: ``("uv",)``).
    aliases: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: Environment managers: the project kinds it can prepare ("python", "conda", "docker", "none" or EnvKind).
    handles: frozenset[str] = attrs.field(default=frozenset(), converter=_kinds)
    #: Environment managers: the kinds for which it is chosen when the user names no manager.
    default_for: frozenset[str] = attrs.field(default=frozenset(), converter=_kinds)
    #: Environment managers: among several defaults for one kind, the highest wins (built-ins use 0).
    priority: int = 100
    #: One line for humans (``mlexec plugins``, errors listing what is installed).
    description: str = ""
    #: What it can do, from :data:`CAPABILITIES` for its kind (``{"detachable"}``, ``{"adaptive"}``).
    capabilities: frozenset[str] = attrs.field(default=frozenset(), converter=_kinds)
    #: The resources (keys of :data:`mlexec_core.resources.KEYS`: ``{"cpus", "memory", "time"}``) it honours.
    #: Backends: a plan asking for any other is refused before anything exists (a backend that
    #: declares nothing honours nothing).  Environment managers that start the command themselves
    #: (a container): the keys they honour, so that a plan needs both the backend and the manager
    #: to honour a key; ``None`` (the default) for one that leaves starting it to the backend.
    resources: frozenset[str] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_kinds))  # type: ignore[misc]

    @property
    def module(self) -> str:
        return self._split()[0]

    def _split(self) -> tuple[str, str]:
        if isinstance(self.path, type):
            return self.path.__module__, self.path.__qualname__
        if ":" in self.path:
            module, _, attr = self.path.partition(":")
        else:
            module, _, attr = self.path.rpartition(".")
        return module, attr

    def problem(self) -> str | None:
        """What is wrong with the record itself, or ``None``."""
        if self.kind not in KINDS:
            return f"kind {self.kind!r} is not one of {', '.join(KINDS)}"
        if not isinstance(self.name, str) or not self.name:
            return "it has no name"
        if not isinstance(self.path, (str, type)):
            return f"path {self.path!r} is not 'package.module:ClassName' or a class"
        module, attr = self._split()
        if not module or not attr:
            return f"path {self.path!r} is not 'package.module:ClassName'"
        unknown = sorted(self.capabilities - set(CAPABILITIES[self.kind]))
        if unknown:
            known = ", ".join(CAPABILITIES[self.kind]) or "none"
            return f"capability {unknown[0]!r} is not one a {self.kind} has (known: {known})"
        if self.resources is not None:
            from mlexec_core.resources import KEYS

            if self.kind not in ("backend", "env-manager"):
                return f"resources are declared by backends and environment managers, not by a {self.kind}"
            unknown = sorted(self.resources - set(KEYS))
            if unknown:
                return f"resource {unknown[0]!r} is not one mlexec knows (known: {', '.join(KEYS)})"
        return None

    def load(self) -> type:
        """Import the class (raises what the import raises)."""
        if isinstance(self.path, type):
            return self.path
        module, attr = self._split()
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
