"""Finding and reading an MLproject into :class:`~mlexec_core.project.model.Project`.

The file is read with :mod:`mlexec_core.yamlfile` (any content gives one
:class:`~mlexec_core.errors.ProjectError` naming the file and the place, never a
traceback) and then checked key by key, as leniently as MLflow loads it:

* an unknown key at any level (top level, entry point, parameter spec,
  ``docker_env``) is a :class:`ProjectWarning` naming the key path, with a
  did-you-mean, and is ignored, as MLflow ignores it;
* a parameter with no ``type``, or a type mlexec does not know (``list[str]``,
  ``dict``), is a string, as in MLflow (an unknown type is warned about);
* a default that is not a valid value of its type is warned about and passed
  as MLflow passes it: Python's ``str()`` of the YAML value.  Defaults are
  always that ``str()`` (``True``, ``0.1``, ``1e-05``); checking never changes them;
* only the entry point being run is checked: :func:`load_project` with
  ``entry_point=`` keeps any other entry point's problems in
  :attr:`~mlexec_core.project.model.Project.invalid_entry_points` and says nothing about them.

What would make a run wrong or cannot be run at all (an entry point without a
command, a declared environment file that is missing, two environments) is
still an error.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable

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
from mlexec_core.project.params import check_value, mlflow_str
from mlexec_core.resources import Resources, parse_resources
from mlexec_core.yamlfile import FileWarning, exists, is_file, load_yaml, shorten

PYTHON_ENV_FILE = "python_env.yaml"
CONDA_ENV_FILE = "conda.yaml"
KNOWN_TOP_LEVEL = ("name", "entry_points", "conda_env", "python_env", "docker_env", "databricks_spark_job",
                   "resources")
#: ``resources`` is mlexec's (MLflow ignores it): strict, as a backend config is.
ENTRY_POINT_KEYS = ("command", "parameters", "description", "resources")
PARAMETER_KEYS = ("type", "default", "description")
#: ``image``, ``volumes`` and ``environment`` are MLflow's; the rest are mlexec's.
DOCKER_ENV_KEYS = ("image", "volumes", "environment", "dockerfile", "context", "args")
_ENV_KEYS = ("conda_env", "python_env", "docker_env")


class ProjectWarning(FileWarning):
    """Something in the MLproject that mlexec tolerates as MLflow does, with where it is."""


Warn = Callable[[str], None]


def _yaml_type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing", bool: "a boolean"}.get(
        type(value), type(value).__name__)


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) or value is None or type(value).__module__ == "datetime"


def _unknown_keys(data: dict, known: tuple[str, ...], where: str, warn: Warn, what: str = "") -> dict:
    """``data`` without the keys not in ``known``, each one warned about with a did-you-mean."""
    kept = {}
    for key, value in data.items():
        if isinstance(key, str) and key in known:
            kept[key] = value
            continue
        text = str(key)
        hint = ""
        now = ", as MLflow ignores it"
        if known is PARAMETER_KEYS and text.replace(":", " ").split()[:1] == ["type"] and text != "type":
            rest = text[4:].lstrip(": ").strip()
            hint = f" (did you mean 'type: {shorten(rest, 40)}'? YAML needs a space after the colon)"
            if "type" not in data:
                now = ": the parameter has no type, so it is a string, as in MLflow"
        else:
            import difflib

            close = difflib.get_close_matches(text, known, n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
        at = f"{where}: " if where else ""
        warn(f"{at}unknown key {shorten(text, 80)!r} is ignored{hint}{now}{what}")
    return kept


# -- finding ------------------------------------------------------------------------------


def find_mlproject(directory: Path) -> Path | None:
    """The file in ``directory`` whose name is ``MLproject`` in any letter case."""
    try:
        names = sorted(os.listdir(directory))
    except (OSError, ValueError):
        return None
    for name in names:
        if name.lower() == "mlproject" and exists(directory / name):
            return directory / name  # a directory or FIFO of that name is reported when read
    return None


def load_project(directory: str | os.PathLike[str], entry_point: str | None = None) -> Project:
    """Read the project in ``directory``; raise :class:`ProjectError` for anything that cannot run.

    :param entry_point: the entry point about to run.  Given, only it is checked
        and warned about; another entry point that cannot run is kept in
        :attr:`Project.invalid_entry_points` (with its error) instead of
        stopping the load.  ``None``: every entry point is checked.
    """
    try:
        directory = Path(directory).resolve()
        is_dir = directory.is_dir()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ProjectError(f"cannot use the project directory {shorten(os.fspath(directory), 300)}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
    if not is_dir:
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
    return _load_file(directory, mlproject, entry_point)


def _warner(where: str) -> Warn:
    def warn(message: str) -> None:
        warnings.warn(f"{where}: {message}", ProjectWarning, stacklevel=4)

    return warn


def _load_file(directory: Path, path: Path, selected: str | None) -> Project:
    where = path.name
    warn = _warner(where)
    data = load_yaml(path, error=ProjectError, what="MLproject file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProjectError(f"expected a mapping at the top level, got {_yaml_type(data)}", context=str(path))
    data = _unknown_keys(data, KNOWN_TOP_LEVEL, "", warn)

    present = [k for k in _ENV_KEYS if data.get(k) is not None]
    if len(present) > 1:
        raise ProjectError(
            f"a project declares one environment, but this one has {', '.join(present)}",
            context=str(path),
            hint="keep exactly one of conda_env, python_env and docker_env",
        )
    name = data.get("name")
    if name is not None:
        if not _scalar(name) or isinstance(name, bool):
            raise ProjectError(f"name: expected a string, got {_yaml_type(name)}", context=str(path))
        name = str(name)
    if data.get("databricks_spark_job") is not None:
        warn("databricks_spark_job is Databricks-only and is ignored")

    defaults = _resources(path, "resources", data.get("resources"))
    raw_eps = data.get("entry_points")
    if raw_eps is None:
        raw_eps = {}
    if not isinstance(raw_eps, dict):
        raise ProjectError(f"entry_points: expected a mapping of entry point names to a command and parameters, "
                           f"got {_yaml_type(raw_eps)}", context=str(path),
                           hint="entry_points:\n    main:\n      command: python train.py")
    entry_points: dict[str, EntryPoint] = {}
    invalid: dict[str, ProjectError] = {}
    quiet: Warn = lambda message: None  # noqa: E731  (another entry point's warnings are not shown)
    for raw_name, raw_ep in raw_eps.items():
        ep_name = str(raw_name)
        checked = selected is None or ep_name == selected
        try:
            entry_points[ep_name] = _entry_point(path, ep_name, raw_ep, warn if checked else quiet, defaults)
        except ProjectError as exc:
            if checked:
                raise
            invalid[ep_name] = exc

    return Project(
        directory=directory,
        mlproject=path,
        name=name,
        entry_points=entry_points,
        environment=_environment(directory, path, data, warn),
        invalid_entry_points=invalid,
        resources=defaults,
    )


def _resources(path: Path, key: str, raw: Any) -> Resources:
    """A ``resources:`` mapping (mlexec's own key: every problem is an error naming the key)."""
    if raw is None:
        return Resources()
    if not isinstance(raw, dict):
        raise ProjectError(f"{key}: expected a mapping of resources to values, got {_yaml_type(raw)}",
                           context=str(path), hint=f"{key}: {{cpus: 4, memory: 16G, gpus: 1, time: 2h}}")
    return parse_resources(raw, lambda message, hint: ProjectError(message, context=str(path), hint=hint),
                           prefix=f"{key}.")


def _entry_point(path: Path, name: str, raw: Any, warn: Warn, defaults: Resources = Resources()) -> EntryPoint:
    key = f"entry_points.{name}"

    def fail(message: str, hint: str | None = None) -> ProjectError:
        return ProjectError(message, context=str(path), hint=hint)

    if not isinstance(raw, dict):
        raise fail(f"{key}: expected a mapping with command and parameters, got {_yaml_type(raw)}",
                   hint=f"{name}:\n      command: python train.py")
    raw = _unknown_keys(raw, ENTRY_POINT_KEYS, key, warn)
    command = raw.get("command")
    if command is None:
        raise fail(f"{key}.command: required key is missing", hint="every entry point needs a command to run")
    if not _scalar(command) or isinstance(command, bool):
        raise fail(f"{key}.command: expected a string, got {_yaml_type(command)}")
    raw_params = raw.get("parameters")
    if raw_params is None:
        raw_params = {}
    if not isinstance(raw_params, dict):
        raise fail(f"{key}.parameters: expected a mapping of parameter names to types, got {_yaml_type(raw_params)}",
                   hint="parameters:\n        alpha: {type: float, default: 0.5}")
    parameters = {}
    for raw_pname, spec in raw_params.items():
        pname = str(raw_pname)
        parameters[pname] = _parameter(path, f"{key}.parameters.{pname}", pname, spec, warn)
    own = _resources(path, f"{key}.resources", raw.get("resources"))
    return EntryPoint(name=name, command=str(command), parameters=parameters,
                      description=_description(raw.get("description"), f"{key}.description", warn),
                      resources=defaults.merged(own))


def _description(value: Any, key: str, warn: Warn) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if _scalar(value):
        return str(value)
    warn(f"{key}: expected a string, got {_yaml_type(value)}; it is ignored")
    return None


def _parameter(path: Path, key: str, name: str, spec: Any, warn: Warn) -> Parameter:
    if spec is None:
        spec = {}
    elif isinstance(spec, str):  # short form `alpha: float`: required
        spec = {"type": spec}
    elif not isinstance(spec, dict):
        raise ProjectError(f"{key}: expected a type name or a mapping with type and default, got "
                           f"{_yaml_type(spec)}", context=str(path),
                           hint=f"{name}: float  or  {name}: {{type: float, default: 0.5}}")
    spec = _unknown_keys(spec, PARAMETER_KEYS, key, warn)
    ptype, unknown = _parameter_type(key, spec.get("type"), warn)
    default = spec.get("default")
    if default is not None:
        if not _scalar(default) and not isinstance(default, bool):
            warn(f"{key}.default: {_yaml_type(default)}, not a single value: it is passed as MLflow passes it, "
                 f"{shorten(mlflow_str(default), 80)!r}")
        default = mlflow_str(default)
        if ptype is not ParamType.PATH:
            try:
                check_value(ptype, default)
            except ValueError as exc:
                warn(f"{key}.default: {exc}; it is passed as written ({shorten(default, 80)!r}), as MLflow "
                     f"passes it (a value given with -P {name}=... is checked)")
    return Parameter(name=name, type=ptype, default=default,
                     description=_description(spec.get("description"), f"{key}.description", warn),
                     declared_type=spec["type"] if unknown else None)


def _parameter_type(key: str, value: Any, warn: Warn) -> tuple[ParamType, bool]:
    """The type, and whether it was a type name mlexec does not know (then a string)."""
    if value is None:
        return ParamType.STRING, False
    if not isinstance(value, str):
        warn(f"{key}.type: expected a type name, got {_yaml_type(value)}; the parameter is a string, as in MLflow")
        return ParamType.STRING, False
    type_name = value.strip().lower()
    known = PARAM_TYPE_ALIASES.get(type_name)
    if known is not None:
        return known, False
    try:
        return ParamType(type_name), False
    except ValueError:
        pass
    names = [t.value for t in ParamType]
    spaced = re.fullmatch(r"type\s*:?\s*(\S+)", type_name)
    import difflib

    close = difflib.get_close_matches(type_name, names + list(PARAM_TYPE_ALIASES), n=1)
    if spaced:  # `alpha:\n  type:float` is the short form with the type "type:float"
        hint = f"did you mean 'type: {shorten(spaced.group(1), 40)}' under {key.rsplit('.', 1)[-1]}:? "
    else:
        hint = f"did you mean {close[0]!r}? " if close else ""
    warn(f"{key}.type: unknown type {shorten(value, 60)!r}: the parameter is a string, as in MLflow "
         f"({hint}mlexec checks {', '.join(names)})")
    return ParamType.STRING, True


def _environment(directory: Path, path: Path, data: dict, warn: Warn) -> EnvironmentSpec:
    for key, kind in (("python_env", EnvKind.PYTHON), ("conda_env", EnvKind.CONDA)):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ProjectError(f"{key}: expected the name of a file in the project, got {_yaml_type(value)}",
                               context=str(path), hint=f"{key}: {PYTHON_ENV_FILE if kind is EnvKind.PYTHON else CONDA_ENV_FILE}")
        file = directory / value
        if not is_file(file):
            what = "is not a file" if exists(file) else "does not exist"
            raise ProjectError(
                f"{key}: the file {shorten(value, 120)!r} {what} in {directory}",
                context=str(path),
                hint=f"create {shorten(value, 120)} or remove the {key} key",
            )
        return EnvironmentSpec(kind=kind, file=file.resolve(), origin="MLproject")
    if data.get("docker_env") is not None:
        return EnvironmentSpec(kind=EnvKind.DOCKER, docker=_docker_env(directory, path, data["docker_env"], warn),
                               origin="MLproject")
    return _conventional_environment(directory)


def _docker_env(directory: Path, path: Path, raw: Any, warn: Warn) -> DockerEnv:
    def fail(message: str, hint: str | None = None) -> ProjectError:
        return ProjectError(message, context=str(path), hint=hint)

    if not isinstance(raw, dict):
        raise fail(f"docker_env: expected a mapping with image (and volumes, environment), got {_yaml_type(raw)}",
                   hint="docker_env:\n    image: python:3.11")
    d = _unknown_keys(raw, DOCKER_ENV_KEYS, "docker_env", warn)

    def text(key: str) -> str | None:
        value = d.get(key)
        if value is None:
            return None
        if not _scalar(value) or isinstance(value, bool) or not str(value).strip():
            raise fail(f"docker_env.{key}: expected a string, got {_yaml_type(value)}")
        return str(value)

    image, dockerfile, context = text("image"), text("dockerfile"), text("context")
    volumes = d.get("volumes") or []
    if not isinstance(volumes, list) or not all(isinstance(v, str) for v in volumes):
        raise fail("docker_env.volumes: expected a list of strings such as \"/host/data:/data\"")
    raw_environment = d.get("environment") or []
    if not isinstance(raw_environment, list):
        raise fail('docker_env.environment: expected a list of "NAME" or ["NAME", "value"] items')
    environment = []
    for index, item in enumerate(raw_environment):
        if isinstance(item, str):
            environment.append(EnvVar(item))
        elif isinstance(item, list) and len(item) == 2 and all(
                isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in item):
            environment.append(EnvVar(str(item[0]), str(item[1])))
        else:
            raise fail(f'docker_env.environment[{index}]: expected "NAME" (copied from the host) or ["NAME", "value"]')
    args = d.get("args") or {}
    if not isinstance(args, dict) or not all(_scalar(v) and v is not None for v in args.values()):
        raise fail("docker_env.args: expected a mapping of build argument names to values")
    if not image and not dockerfile:
        raise fail("docker_env: needs an image (or, with mlexec, a dockerfile)",
                   hint="add `image: <name>` or `dockerfile: Dockerfile` under docker_env")
    if (context or args) and not dockerfile:
        raise fail("docker_env: context and args apply only with dockerfile")
    if dockerfile and not is_file(directory / dockerfile):
        raise fail(f"docker_env.dockerfile: the file {shorten(dockerfile, 120)!r} does not exist in {directory}")
    return DockerEnv(image=image, dockerfile=dockerfile, context=context,
                     args={str(k): mlflow_str(v) for k, v in args.items()},
                     volumes=tuple(volumes), environment=tuple(environment))


def _conventional_environment(directory: Path) -> EnvironmentSpec:
    for name, kind in ((PYTHON_ENV_FILE, EnvKind.PYTHON), (CONDA_ENV_FILE, EnvKind.CONDA)):
        if is_file(directory / name):
            return EnvironmentSpec(kind=kind, file=directory / name, origin="convention")
    return EnvironmentSpec()
