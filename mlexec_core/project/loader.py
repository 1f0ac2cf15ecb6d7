"""Finding and reading an MLproject into :class:`~mlexec_core.project.model.Project`.

The YAML is structured by one private cattrs converter into "raw" classes that
mirror the file, with unknown keys forbidden below the top level (a misspelt
``defualt:`` is an error, not a silently required parameter); then the raw
form is checked and turned into the model.  Every problem comes out as one
:class:`~mlexec_core.errors.ProjectError` naming the file and the key path,
such as ``entry_points.main.parameters.alpha.type``.
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from typing import Any, Union

import attrs
import cattrs
import yaml
from attrs import frozen

from mlexec_core.errors import ProjectError
from mlexec_core.project.model import (
    PARAM_TYPE_ALIASES,
    DockerEnv,
    EntryPoint,
    EnvironmentSpec,
    EnvKind,
    EnvVar,
    Parameter,
    ParamType,
    Project,
)
from mlexec_core.project.params import check_value

PYTHON_ENV_FILE = "python_env.yaml"
CONDA_ENV_FILE = "conda.yaml"
KNOWN_TOP_LEVEL = ("name", "entry_points", "conda_env", "python_env", "docker_env", "databricks_spark_job")
_ENV_KEYS = ("conda_env", "python_env", "docker_env")


class ProjectWarning(UserWarning):
    """Something in the MLproject that mlexec ignores, with where it is."""


# -- the file as written --------------------------------------------------------------


@frozen
class _RawParameter:
    type: str = "string"
    default: Any = None
    description: Union[str, None] = None


@frozen
class _RawEntryPoint:
    command: str
    parameters: dict[str, _RawParameter] = attrs.field(factory=dict)
    description: Union[str, None] = None


@frozen
class _RawDockerEnv:
    image: Union[str, None] = None
    dockerfile: Union[str, None] = None
    context: Union[str, None] = None
    args: dict[str, str] = attrs.field(factory=dict)
    volumes: list[str] = attrs.field(factory=list)
    environment: list[EnvVar] = attrs.field(factory=list)


@frozen
class _RawProject:
    name: Union[str, None] = None
    entry_points: dict[str, _RawEntryPoint] = attrs.field(factory=dict)
    conda_env: Union[str, None] = None
    python_env: Union[str, None] = None
    docker_env: Union[_RawDockerEnv, None] = None
    databricks_spark_job: Any = None


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def scalar_str(value: Any, _type: Any) -> str:
        if isinstance(value, (dict, list)) or value is None:
            raise ValueError(f"expected a string, got {_yaml_type(value)}")
        return str(value)

    conv.register_structure_hook(str, scalar_str)

    def parameter(value: Any, _type: Any) -> _RawParameter:
        if isinstance(value, str):  # short form `alpha: float`: required
            return _RawParameter(type=value)
        if value is None:
            return _RawParameter()
        if not isinstance(value, dict):
            raise ValueError(f"expected a type name or a mapping with type/default, got {_yaml_type(value)}")
        return base_parameter(value, _type)

    base_parameter = conv.gen_structure_attrs_fromdict(_RawParameter)
    conv.register_structure_hook(_RawParameter, parameter)

    def env_var(value: Any, _type: Any) -> EnvVar:
        if isinstance(value, str):
            return EnvVar(value)
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (str, int, float)) for v in value):
            return EnvVar(str(value[0]), str(value[1]))
        raise ValueError('expected "NAME" (copied from the host) or ["NAME", "value"]')

    conv.register_structure_hook(EnvVar, env_var)

    def mapping_only(cls):
        base = conv.gen_structure_attrs_fromdict(cls)

        def hook(value: Any, _type: Any):
            if not isinstance(value, dict):
                raise ValueError(f"expected a mapping, got {_yaml_type(value)}")
            return base(value, _type)

        conv.register_structure_hook(cls, hook)

    mapping_only(_RawEntryPoint)
    mapping_only(_RawDockerEnv)
    return conv


def _yaml_type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), type(value).__name__)


_converter = _make_converter()


# -- finding ------------------------------------------------------------------------------


def find_mlproject(directory: Path) -> Path | None:
    """The file in ``directory`` whose name is ``MLproject`` in any letter case."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return None
    for name in names:
        if name.lower() == "mlproject" and (directory / name).is_file():
            return directory / name
    return None


def load_project(directory: str | os.PathLike[str]) -> Project:
    """Read the project in ``directory``; raise :class:`ProjectError` for anything malformed."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise ProjectError(f"no such project directory: {directory}")
    mlproject = find_mlproject(directory)
    if mlproject is None:
        return Project(
            directory=directory,
            mlproject=None,
            name=None,
            entry_points={},
            environment=_conventional_environment(directory),
        )
    return _load_file(directory, mlproject)


def _load_file(directory: Path, path: Path) -> Project:
    where = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProjectError(f"cannot read the file: {exc}", context=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProjectError(f"invalid YAML: {problem}", context=f"{path}{pos}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProjectError(f"expected a mapping at the top level, got {_yaml_type(data)}", context=str(path))

    for key in list(data):
        if key not in KNOWN_TOP_LEVEL:
            close = difflib.get_close_matches(str(key), KNOWN_TOP_LEVEL, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            warnings.warn(f"{where}: unknown key {key!r} is ignored{hint}", ProjectWarning, stacklevel=2)
            del data[key]

    present = [k for k in _ENV_KEYS if data.get(k) is not None]
    if len(present) > 1:
        raise ProjectError(
            f"a project declares one environment, but this one has {', '.join(present)}",
            context=str(path),
            hint="keep exactly one of conda_env, python_env and docker_env",
        )

    try:
        raw = _converter.structure(data, _RawProject)
    except Exception as exc:  # cattrs' ClassValidationError / BaseValidationError
        raise ProjectError(_first_error(exc), context=str(path)) from None

    if raw.databricks_spark_job is not None:
        warnings.warn(f"{where}: databricks_spark_job is Databricks-only and is ignored", ProjectWarning, stacklevel=2)

    entry_points = {
        name: _entry_point(path, name, ep) for name, ep in raw.entry_points.items()
    }
    return Project(
        directory=directory,
        mlproject=path,
        name=raw.name,
        entry_points=entry_points,
        environment=_environment(directory, path, raw),
    )


def _first_error(exc: Exception) -> str:
    """One readable line for a cattrs failure: ``key.path: what is wrong``."""
    messages = cattrs.transform_error(exc, path="$", format_exception=_format_exception)
    first = messages[0] if messages else str(exc)
    text, _, at = first.rpartition(" @ ")
    key = at.removeprefix("$").lstrip(".")
    key = key.replace("['", ".").replace("']", "").lstrip(".")
    return f"{key}: {text}" if key else text


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required key is missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        extra = sorted(exc.extra_fields)
        text = f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}"
        known = [f.name for f in attrs.fields(exc.cl)]
        close = difflib.get_close_matches(extra[0], known, n=1)
        return text + (f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})")
    if isinstance(exc, ValueError):
        return str(exc)
    if isinstance(exc, TypeError) and type_ is not None:
        return f"expected {getattr(type_, '__name__', type_)}"
    return cattrs.v.format_exception(exc, type_)


def _entry_point(path: Path, name: str, raw: _RawEntryPoint) -> EntryPoint:
    parameters = {}
    for pname, rp in raw.parameters.items():
        key = f"entry_points.{name}.parameters.{pname}"
        type_name = rp.type.strip().lower()
        try:
            ptype = PARAM_TYPE_ALIASES.get(type_name) or ParamType(type_name)
        except ValueError:
            choices = ", ".join(t.value for t in ParamType)
            raise ProjectError(
                f"{key}.type: unknown type {rp.type!r}", context=str(path), hint=f"use one of {choices}"
            ) from None
        default = rp.default
        if default is not None and ptype is not ParamType.PATH:
            try:
                default = check_value(ptype, default)
            except ValueError as exc:
                raise ProjectError(f"{key}.default: {exc}", context=str(path)) from None
        elif default is not None:
            default = check_value(ParamType.STRING, default)
        parameters[pname] = Parameter(name=pname, type=ptype, default=default, description=rp.description)
    return EntryPoint(name=name, command=raw.command, parameters=parameters, description=raw.description)


def _environment(directory: Path, path: Path, raw: _RawProject) -> EnvironmentSpec:
    for key, kind in (("python_env", EnvKind.PYTHON), ("conda_env", EnvKind.CONDA)):
        value = getattr(raw, key)
        if value is None:
            continue
        file = (directory / value).resolve()
        if not file.is_file():
            raise ProjectError(
                f"{key}: the file {value!r} does not exist in {directory}",
                context=str(path),
                hint=f"create {value} or remove the {key} key",
            )
        return EnvironmentSpec(kind=kind, file=file, origin="MLproject")
    if raw.docker_env is not None:
        d = raw.docker_env
        if not d.image and not d.dockerfile:
            raise ProjectError(
                "docker_env: needs an image (or, with mlexec, a dockerfile)",
                context=str(path),
                hint="add `image: <name>` or `dockerfile: Dockerfile` under docker_env",
            )
        if (d.context or d.args) and not d.dockerfile:
            raise ProjectError("docker_env: context and args apply only with dockerfile", context=str(path))
        if d.dockerfile and not (directory / d.dockerfile).is_file():
            raise ProjectError(
                f"docker_env.dockerfile: the file {d.dockerfile!r} does not exist in {directory}", context=str(path)
            )
        docker = DockerEnv(
            image=d.image,
            dockerfile=d.dockerfile,
            context=d.context,
            args=dict(d.args),
            volumes=tuple(d.volumes),
            environment=tuple(d.environment),
        )
        return EnvironmentSpec(kind=EnvKind.DOCKER, docker=docker, origin="MLproject")
    return _conventional_environment(directory)


def _conventional_environment(directory: Path) -> EnvironmentSpec:
    for name, kind in ((PYTHON_ENV_FILE, EnvKind.PYTHON), (CONDA_ENV_FILE, EnvKind.CONDA)):
        if (directory / name).is_file():
            return EnvironmentSpec(kind=kind, file=directory / name, origin="convention")
    return EnvironmentSpec()
