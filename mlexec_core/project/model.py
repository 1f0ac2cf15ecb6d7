"""The MLproject as written: frozen data, no I/O.

These classes describe a project exactly as its MLproject (or the file
conventions that stand in for one) declares it.  What a particular run makes
of it (typed values, absolute paths, the rendered command) lives in
:mod:`mlexec_core.pipeline.plan`.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Mapping

import attrs
from attrs import frozen

from mlexec_core.resources import Resources


class ParamType(str, enum.Enum):
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    PATH = "path"
    URI = "uri"


#: Spellings accepted for ``type:`` besides the canonical names.
PARAM_TYPE_ALIASES: Mapping[str, ParamType] = {
    "str": ParamType.STRING,
    "integer": ParamType.INT,
    "number": ParamType.FLOAT,
    "double": ParamType.FLOAT,
    "boolean": ParamType.BOOL,
}


class EnvKind(str, enum.Enum):
    """What kind of environment a project declares."""

    PYTHON = "python"  #: ``python_env`` key or a ``python_env.yaml`` file
    CONDA = "conda"  #: ``conda_env`` key or a ``conda.yaml`` file
    DOCKER = "docker"  #: ``docker_env`` key
    NONE = "none"  #: nothing declared: the project runs on what is there


@frozen
class Parameter:
    name: str
    type: ParamType = ParamType.STRING
    #: As MLflow passes it: Python's ``str()`` of the YAML value (``True``, ``0.1``).
    #: ``None`` means required: the run fails before it starts without a value.
    default: str | None = None
    description: str | None = None
    #: The ``type:`` as written when mlexec does not know it (``list[int]``): the parameter is a
    #: string, as in MLflow, and ``describe`` reports the declared name, as MLflow keeps it.
    declared_type: str | None = None

    @property
    def type_name(self) -> str:
        """The type as ``describe`` and ``--dry-run`` report it."""
        return self.declared_type or self.type.value

    @property
    def required(self) -> bool:
        return self.default is None


@frozen
class EntryPoint:
    name: str
    command: str
    parameters: Mapping[str, Parameter] = attrs.field(factory=dict)
    description: str | None = None
    #: What it needs (``resources:``): the top level's keys, then its own, key by key.
    resources: Resources = Resources()


@frozen
class EnvVar:
    """One ``docker_env.environment`` item: ``"NAME"`` (copied from the host) or ``["NAME", "value"]``."""

    name: str
    value: str | None = None  #: ``None``: copy from the host environment


@frozen
class DockerEnv:
    image: str | None = None
    #: mlexec extension: build the environment image from this Dockerfile (relative to the project).
    dockerfile: str | None = None
    #: mlexec extension: the build context for ``dockerfile`` (relative to the project, default ``.``).
    context: str | None = None
    #: mlexec extension: ``--build-arg`` values for ``dockerfile``.
    args: Mapping[str, str] = attrs.field(factory=dict)
    volumes: tuple[str, ...] = ()
    environment: tuple[EnvVar, ...] = ()


@frozen
class EnvironmentSpec:
    kind: EnvKind = EnvKind.NONE
    #: The python_env.yaml or conda.yaml the project uses (absolute), if any.
    file: Path | None = None
    docker: DockerEnv | None = None
    #: How it was found: "MLproject" (declared there) or "convention" (a file beside it) or "none".
    origin: str = "none"


@frozen
class Project:
    directory: Path
    #: The MLproject file (absolute), or ``None`` for a project without one.
    mlproject: Path | None
    name: str | None
    entry_points: Mapping[str, EntryPoint]
    environment: EnvironmentSpec
    #: Entry points that cannot run, with why; only filled when one other entry point was loaded
    #: (``load_project(..., entry_point=...)``): a problem there never stops that run.
    invalid_entry_points: Mapping[str, Exception] = attrs.field(factory=dict)
    #: The top level's ``resources:`` (every entry point's default; a script run as an entry point gets it).
    resources: Resources = Resources()

    @property
    def display_name(self) -> str:
        return self.name or self.directory.name
