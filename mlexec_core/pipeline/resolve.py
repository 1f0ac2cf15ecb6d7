"""From what the user typed to a :class:`RunPlan`, checking everything first.

Nothing here runs the project or touches the tracking store: every mistake
(an unknown entry point, a float that is not a float, a missing path, an
unknown backend) is reported before any run exists.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import shlex
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import unquote, urlparse

from mlexec_core.errors import MlexecError, ParameterError, PluginError, UsageError
from mlexec_core.pipeline.options import RunOptions
from mlexec_core.pipeline.plan import ResolvedParameter, Restarts, RunPlan, TrackingOptions
from mlexec_core.pipeline.source import fetch
from mlexec_core.plugin.manager import Plugins
from mlexec_core.project.loader import load_project
from mlexec_core.project.model import EntryPoint, EnvKind, ParamType, Project
from mlexec_core.project.params import check_value, mlflow_str, placeholders, render_command
from mlexec_core.resources import KEYS, TRIVIAL, Resources, canonical_key, parse_resources, unknown_key_message
from mlexec_core.yamlfile import FileWarning, exists, is_file, parse_json, parse_yaml, read_text, shorten, text_problem

#: MLflow's limits and rules for param names and values.
MAX_PARAM_VALUE = 6000
MAX_PARAM_KEY = 250
_PARAM_KEY = re.compile(r"^[/\w.\- :]+$")

_SCRIPT_RUNNERS = {".py": "python", ".sh": None, ".r": "Rscript"}


def parse_pairs(items: Iterable[str], option: str) -> dict[str, str]:
    """``-P k=v`` items into a dict; a missing ``=`` or a repeated name is an error."""
    result: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"{option} {shorten(item)!r} must be NAME=VALUE", hint=f"for example {option} alpha=0.5")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UsageError(f"{option} {shorten(item)!r} has no name before '='")
        check_text(f"{option} {key}", key, "name")
        check_text(f"{option} {key}", value)
        if key in result:
            raise UsageError(f"{option} {shorten(key)} is given twice ({shorten(result[key])!r} and {shorten(value)!r})")
        result[key] = value
    return result


def check_text(where: str, text: str, what: str = "value") -> None:
    """A :class:`UsageError` when ``text`` (an option's value) holds NUL or is not valid text (a lone surrogate)."""
    problem = text_problem(text)
    if problem:
        raise UsageError(f"{shorten(where)}: the {what} {problem}",
                         hint="give text that can go on a command line (a terminal's bytes that are not UTF-8 "
                              "arrive as lone surrogates)")


def parse_docker_args(items: Iterable[str]) -> tuple[tuple[str, str | None], ...]:
    """``-A name=value`` / ``-A flag`` items, as MLflow reads them."""
    out = []
    for item in items:
        check_text(f"-A {item}", item)
        name, sep, value = item.partition("=")
        if not name:
            raise UsageError(f"-A {shorten(item)!r} needs a name, as in -A memory=2g or -A privileged")
        out.append((name, value if sep else None))
    return tuple(out)


def load_backend_config(value: str | Mapping[str, Any] | None, cwd: Path) -> tuple[dict[str, Any], Path]:
    """``--backend-config``: a JSON or YAML file, or inline JSON; returns it and the folder paths resolve from."""
    if value is None:
        return {}, cwd
    if isinstance(value, Mapping):
        return dict(value), cwd
    check_text("--backend-config", value)
    path = cwd / value
    shown = f"--backend-config {shorten(value, 300)}"
    if len(value) < 4096 and exists(path) and not value.lstrip().startswith(("{", "[")):
        text = read_text(path, error=UsageError, what="backend config file")
        if path.suffix.lower() == ".json":
            data = parse_json(text, shown, error=UsageError)
        else:
            data = parse_yaml(text, shown, error=UsageError, duplicates="error")
        base = path.resolve().parent
    else:
        if not value.lstrip().startswith(("{", "[")) and path.suffix.lower() in (".json", ".yaml", ".yml"):
            raise UsageError(f"{shown}: no such file ({shorten(str(path), 300)})",
                             hint="pass an existing .json/.yaml file or a JSON object such as '{\"key\": \"value\"}'")
        if not value.lstrip().startswith(("{", "[")):
            raise UsageError(f"--backend-config {shorten(value)!r} is neither a file nor inline JSON",
                             hint="pass a .json/.yaml file or a JSON object such as '{\"key\": \"value\"}'")
        data = parse_json(value, "--backend-config (inline JSON)", error=UsageError)
        base = cwd
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"--backend-config {shorten(value)}: expected a mapping of keys to values")
    return data, base


def entry_point_for(project: Project, name: str) -> EntryPoint:
    """The declared entry point ``name``, or a script in the project run as one."""
    if name in project.entry_points:
        return project.entry_points[name]
    if name in project.invalid_entry_points:
        raise project.invalid_entry_points[name]
    check_text("-e", name, "entry point name")
    suffix = Path(name).suffix.lower()
    if suffix in _SCRIPT_RUNNERS:
        script = (project.directory / name)
        if not is_file(script):
            raise UsageError(f"entry point {shorten(name)!r}: no such script in {project.directory}")
        quoted = shlex.quote(name)
        if suffix == ".py":
            command = f"python {quoted}"
        elif suffix == ".sh":
            command = f"{shlex.quote(os.environ.get('SHELL') or 'bash')} {quoted}"
        else:
            command = f"Rscript -e \"mlflow::mlflow_source('{name}')\" --args"
        return EntryPoint(name=name, command=command, resources=project.resources)
    known = ", ".join(sorted(project.entry_points)) or "none declared"
    where = f" in {project.mlproject}" if project.mlproject else f" (no MLproject in {project.directory})"
    raise UsageError(
        f"unknown entry point {shorten(name)!r}{where}",
        hint=f"entry points: {known}; a .py, .sh or .R file in the project also runs as one",
    )


def resolve_parameters(
    entry_point: EntryPoint, given: Mapping[str, str], project_dir: Path, cwd: Path
) -> tuple[dict[str, ResolvedParameter], dict[str, str]]:
    """Typed, checked values for the declared parameters, and the undeclared extras."""
    declared = entry_point.parameters
    missing = [n for n, p in declared.items() if n not in given and p.required]
    if missing:
        names = ", ".join(missing)
        raise ParameterError(
            f"entry point {entry_point.name!r} needs a value for {names}",
            hint=" ".join(f"-P {n}=..." for n in missing),
        )
    resolved: dict[str, ResolvedParameter] = {}
    for name, param in declared.items():
        from_user = name in given
        raw = given[name] if from_user else param.default
        try:
            if from_user:  # a default was checked (and warned about) when the MLproject was read
                value = check_value(param.type, raw)
            else:
                value = mlflow_str(raw)
            if param.type is ParamType.PATH:
                value = _resolve_path(value, cwd if from_user else project_dir)
        except ValueError as exc:
            where = f"-P {name}" if from_user else f"the default of {name}"
            raise ParameterError(f"{where}: {exc}", hint=f"{name} is declared as {param.type.value}") from None
        _check_length(name, value)
        resolved[name] = ResolvedParameter(name, param.type, value, "user" if from_user else "default")
    extra = {}
    for key, value in given.items():
        if key in declared:
            continue
        if not _PARAM_KEY.match(key) or len(key) > MAX_PARAM_KEY:
            raise ParameterError(
                f"-P {key!r}: parameter names may hold letters, digits, _ - . / : and spaces only "
                f"(at most {MAX_PARAM_KEY})"
            )
        if "/" in key and (posixpath.normpath(key) != key or key.startswith("/")):
            raise ParameterError(f"-P {key!r}: MLflow refuses names that change as a path "
                                 f"(it would read {posixpath.normpath(key)!r})", hint="drop '..', '//' and a leading '/'")
        _check_length(key, value)
        extra[key] = value
    return resolved, extra


def _check_length(name: str, value: str) -> None:
    if len(value) > MAX_PARAM_VALUE:
        raise ParameterError(f"-P {name}: the value has {len(value)} characters; MLflow keeps at most "
                             f"{MAX_PARAM_VALUE}", hint="pass a path to a file holding it instead")


#: Linux's limit on one argument of a program (``MAX_ARG_STRLEN``: 32 pages, with its closing NUL).
MAX_ARG_STRLEN = 32 * 4096


def check_command_size(command: str, entry_point: str, values: Mapping[str, str], *,
                       as_argument: bool = True) -> None:
    """Refuse a rendered command the system would not start (``Argument list too long``).

    ``as_argument``: the backend hands the command to a shell as one argument (``sh -c
    COMMAND``), so on Linux it must fit ``MAX_ARG_STRLEN``; with mlexec's environment (what a
    local job inherits) it must also fit ``ARG_MAX``.  A backend that writes the command into
    a script (Slurm) has neither limit on the command as a whole.
    """
    if not as_argument:
        return
    size = len(command.encode("utf-8", "surrogateescape"))
    limits = []
    if os.uname().sysname == "Linux":
        limits.append((MAX_ARG_STRLEN - 1, "the most one argument may hold on this system (MAX_ARG_STRLEN), "
                                           "and the command goes to the shell as one argument"))
    with contextlib.suppress(ValueError, OSError, AttributeError):
        arg_max = os.sysconf("SC_ARG_MAX")
        environ = sum(len(k) + len(v) + 2 + 8 for k, v in os.environ.items())
        if arg_max > 0:
            limits.append((arg_max - environ - 4096, f"what this system's ARG_MAX ({arg_max:,} bytes) leaves "
                                                     f"beside mlexec's environment ({environ:,} bytes)"))
    for limit, what in limits:
        if size > limit:
            largest = sorted(values.items(), key=lambda kv: -len(kv[1]))[:3]
            named = ", ".join(f"{name} ({len(value):,} characters)" for name, value in largest if value)
            raise ParameterError(
                f"the command of entry point {entry_point!r} is {size:,} bytes once its parameters are "
                f"substituted; {limit:,} bytes is {what}" + (f". Largest values: {named}" if named else ""),
                hint="pass large data through a file: write it to a file and give its name "
                     "(a `path` parameter), or have the job read it from where it is stored")


def _resolve_path(value: str, base: Path) -> str:
    parsed = urlparse(value)
    if parsed.scheme == "file" and not parsed.netloc:
        value = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(f"{value!r} is a remote location; mlexec reads path parameters from this machine only "
                         "(declare the parameter as uri to pass it through)")
    problem = text_problem(value)
    if problem:
        raise ValueError(f"the path {problem}")
    try:
        path = (base / os.path.expanduser(value)).resolve()
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"cannot use {shorten(value)!r} as a path: {getattr(exc, 'strerror', None) or exc}") from None
    if not exists(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise ValueError(f"{shorten(value)!r}: the name is too long for the file system") from None
        except ValueError:
            pass
        raise ValueError(f"no such file or directory: {shorten(str(path), 300)}")
    return str(path)


@contextlib.contextmanager
def reporting_file_warnings(reporter):
    """Say every :class:`~mlexec_core.yamlfile.FileWarning` raised inside (by the core's or a plugin's
    loader: a duplicate key, a file found elsewhere ...) through ``reporter``, in order."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FileWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, FileWarning):
                    reporter.warning(str(w.message))
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def load_project_reporting(directory: Path, reporter, entry_point: str | None = None) -> Project:
    """:func:`load_project`, with its warnings (ignored keys ...) said through ``reporter``.

    With ``entry_point``, only that entry point is checked (see :func:`load_project`).
    """
    with reporting_file_warnings(reporter):
        return load_project(directory, entry_point)


def choose_environment_manager(plugins: Plugins, project: Project, requested: str | None,
                               warn) -> tuple[str, str]:
    """The canonical manager name for ``project`` and the name the user used."""
    managers = plugins.registered("env-manager")  # records: nothing is imported to choose
    kind = project.environment.kind
    described = _describe_env(project)
    if requested:
        cls = plugins.record("env-manager", requested)
        if kind is EnvKind.DOCKER and kind not in cls.handles:
            warn(f"--env-manager {requested} is ignored: the project runs in its docker_env")
            requested = None
        elif kind not in cls.handles:
            raise UsageError(
                f"--env-manager {requested} cannot prepare {described}",
                hint=f"managers for {kind.value} projects: "
                + (", ".join(sorted(n for n, c in managers.items() if kind in c.handles)) or "none installed"),
            )
        else:
            return cls.name, requested
    candidates = sorted({c for c in managers.values() if kind in c.default_for}, key=lambda c: (-c.priority, c.name))
    if not candidates:
        package = {EnvKind.PYTHON: "mlexec-virtualenv", EnvKind.CONDA: "mlexec-conda",
                   EnvKind.DOCKER: "mlexec-docker"}.get(kind)
        hint = f"install one (pip install {package})" if package else "install an environment plugin"
        if kind is not EnvKind.DOCKER and "local" in managers and kind in managers["local"].handles:
            hint += ", or pass --env-manager local to run in the current environment"
        raise PluginError(f"no environment manager for {described} is installed", hint=hint)
    return candidates[0].name, candidates[0].name


def _describe_env(project: Project) -> str:
    env = project.environment
    if env.kind is EnvKind.DOCKER:
        return "a docker_env project"
    if env.file is not None:
        return f"a {env.kind.value} environment ({env.file.name})"
    return "a project without an environment"


def resolve_plan(plugins: Plugins, options: RunOptions, *, cwd: Path | None = None) -> RunPlan:
    """Check everything in ``options`` against the project and the plugins; the plan, or the first
    problem as a :class:`MlexecError`.  Creates nothing (a git or archive source is fetched into the cache)."""
    cwd = Path(cwd or os.getcwd())
    reporter = plugins.context.reporter
    if options.uri is None:
        raise UsageError("give the project URI", hint="mlexec run . -e main")
    uri, version = options.uri, options.version
    entry_point = options.entry_point or "main"
    backend = options.backend or "local"
    experiment_name, experiment_id = options.experiment_name, options.experiment_id
    run_id, run_name, storage_dir = options.run_id, options.run_name, options.storage_dir
    env_manager, backend_config = options.env_manager, options.backend_config
    if experiment_name is not None and experiment_id is not None:
        raise UsageError("give --experiment-name or --experiment-id, not both")
    for option, text in (("--experiment-name", experiment_name), ("--experiment-id", experiment_id),
                         ("--run-id", run_id), ("--run-name", run_name), ("--env-manager", env_manager),
                         ("-b", backend), ("--storage-dir", None if storage_dir is None else os.fspath(storage_dir))):
        if isinstance(text, str):
            check_text(option, text)
    parameters, docker_args = options.parameters, options.docker_args
    if isinstance(parameters, Mapping):
        given = {str(k): _param_str(v) for k, v in parameters.items()}
        for key, text in given.items():
            check_text(f"parameter {key}", key, "name")
            check_text(f"parameter {key}", text)
    else:
        given = parse_pairs(parameters or (), "-P")
    if isinstance(docker_args, Mapping):
        dargs = tuple((str(k), None if v is None or v is True else str(v)) for k, v in docker_args.items())
    else:
        dargs = parse_docker_args(docker_args or ())

    asked, cleared = parse_resource_options(options.resources)
    fetched = fetch(uri, version, cwd, reporter=reporter)
    project = load_project_reporting(fetched.directory, reporter, entry_point)

    ep = entry_point_for(project, entry_point)
    values, extra = resolve_parameters(ep, given, project.directory, cwd)
    for name in placeholders(ep.command):
        if name in extra:
            reporter.warning(
                f"{{{name}}} in entry point {ep.name!r} is not a declared parameter: -P {name} is appended as "
                f"--{name} and {{{name}}} stays as written (declare {name} under parameters to substitute it)"
            )

    backend_obj = plugins.backend(backend)
    env_error: MlexecError | None = None
    try:
        manager, requested = choose_environment_manager(plugins, project, env_manager, reporter.warning)
    except MlexecError as exc:  # only an error if the backend runs the command in a local environment
        manager, requested, env_error = "", env_manager or "", exc
    with reporting_file_warnings(reporter):
        config, config_base = load_backend_config(backend_config, cwd)
        try:
            parsed_config = backend_obj.parse_config(config, config_base)
        except MlexecError as exc:
            from_file = isinstance(backend_config, str) and not backend_config.lstrip().startswith(("{", "["))
            if exc.context is None and from_file:  # the message names the key; name the file too
                exc.context = shorten(backend_config, 300)
            raise
    command = render_command(ep.command, {n: p.value for n, p in values.items()}, extra)
    check_command_size(command, ep.name, {**{n: p.value for n, p in values.items()}, **extra},
                       as_argument="command-in-script" not in backend_obj.registration.capabilities)
    plan = RunPlan(
        project=project,
        source=fetched.source,
        entry_point=ep,
        parameters=values,
        extra_parameters=extra,
        command=command,
        env_manager=manager,
        env_manager_requested=requested,
        backend=backend_obj.name,
        backend_config=parsed_config,
        backend_config_values=config,
        environment_lock=options.environment_lock,
        docker_args=dargs,
        build_image=bool(options.build_image),
        storage_dir=Path(storage_dir).resolve() if storage_dir else None,
        tracking=TrackingOptions(experiment_name=experiment_name, experiment_id=experiment_id,
                                 run_name=run_name, run_id=run_id, tags=dict(options.tags)),
        options=dict(options.extras),
        resources=ep.resources.merged(asked).without(cleared),
        restarts=parse_restarts(options.restart_on_exit, options.max_restarts),
    )
    if plan.restarts.asked and "restartable" not in backend_obj.registration.capabilities:
        can = sorted(n for n, r in plugins.registered("backend").items()
                     if n == r.name and "restartable" in r.capabilities)
        raise UsageError(f"-b {backend_obj.name} cannot start a job again into the same run "
                         "(--restart-on-exit, --max-restarts)",
                         hint=f"backends that can: {', '.join('-b ' + n for n in can) or 'none installed'}; "
                              "or leave the restart options out")
    local_env = backend_obj.uses_local_environment(plan)
    check_resources(plugins, plan, asked, local_env,
                    label="resources" if isinstance(options.resources, Mapping) else "-R")
    if local_env:
        if env_error is not None:
            raise env_error
        with reporting_file_warnings(reporter):
            plugins.environment_manager(manager).check(project, requested)
        _check_lock(plugins, plan)
    elif plan.environment_lock is not None:
        reporter.warning(f"-b {plan.backend} prepares the environment itself, from the project's files: the "
                         f"recorded environment ({plan.environment_lock.kind}) is not used")
    return plan


def _check_lock(plugins: Plugins, plan: RunPlan) -> None:
    """A recorded environment to build again needs a manager that builds from locks of its kind."""
    lock = plan.environment_lock
    if lock is None or lock.kind == "python":  # the local manager's: recorded, never enforced
        return
    record = plugins.registered("env-manager").get(plan.env_manager)
    if record is None or "rebuilds-from-lock" not in record.capabilities:
        raise UsageError(f"--env-manager {plan.env_manager_requested or plan.env_manager} cannot build an "
                         f"environment from a recorded {lock.kind} lock",
                         hint="leave --env-manager out to use the manager the run used")


def parse_resource_options(given: Mapping[str, Any] | Sequence[str] | None,
                           option: str = "-R") -> tuple[Resources, frozenset[str]]:
    """``-R NAME=VALUE`` items (or the API's ``resources={...}``) as a :class:`Resources`, and the
    keys cleared with the value ``none`` (``-R time=none``: no limit, whatever the MLproject says)."""
    if not given:
        return Resources(), frozenset()
    if isinstance(given, Mapping):
        pairs: dict[Any, Any] = dict(given)
        label = "resources"
    else:
        pairs = dict(parse_pairs(given, option))
        label = option
    cleared = set()
    for key, value in list(pairs.items()):
        if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
            name = canonical_key(key)
            if name is None:
                message, hint = unknown_key_message(key)
                raise UsageError(f"{label} {str(key)[:80]}: {message}", hint=hint)
            cleared.add(name)
            del pairs[key]
    fail = lambda message, hint: UsageError(message, hint=hint)  # noqa: E731
    return parse_resources(pairs, fail, prefix=f"{label} "), frozenset(cleared)


def parse_restarts(codes: str | Sequence[int] | None, most: int | None) -> Restarts:
    """``--restart-on-exit 75,143`` and ``--max-restarts K`` as a :class:`Restarts`."""
    if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 0):
        raise UsageError(f"--max-restarts {most!r}: expected a whole number, 0 or more")
    found: set[int] = set()
    items = codes.split(",") if isinstance(codes, str) else list(codes or ())
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if not text.isdigit() or not 1 <= int(text) <= 255:
            raise UsageError(f"--restart-on-exit {shorten(str(codes))}: {text!r} is not an exit status (1 to 255)",
                             hint="for example --restart-on-exit 75,143")
        found.add(int(text))
    return Restarts(exit_codes=frozenset(found), max_restarts=3 if most is None else most,
                    asked=bool(found) or most is not None)


def honoured_resources(plugins: Plugins, plan: RunPlan, local_env: bool) -> tuple[frozenset[str], str]:
    """The resource keys ``plan`` can ask for, and who decides.

    The backend's declaration; but when the plan's environment manager starts the command
    itself (it declares ``resources``: the docker manager's container), the manager's: it
    applies them to what it starts (``--cpus``, device requests), with what the backend that
    runs its launcher does for every job (the local backend's time limit and devices)."""
    backend = plugins.record("backend", plan.backend)
    honoured = frozenset(backend.resources or ())
    who = f"-b {plan.backend}"
    if local_env and plan.env_manager:
        manager = plugins.record("env-manager", plan.env_manager)
        if manager.resources is not None:
            honoured = manager.resources
            who = f"-b {plan.backend} with the {plan.env_manager} environment"
    return honoured, who


def check_resources(plugins: Plugins, plan: RunPlan, asked: Resources, local_env: bool,
                    label: str = "-R") -> None:
    """Refuse a plan that asks for a resource its backend (or environment manager) does not honour,
    naming where the resource was asked for and which installed backends honour it."""
    needed = [k for k in plan.resources.asked() if TRIVIAL.get(k, -1) != plan.resources.get(k)]
    if not needed:
        return
    honoured, who = honoured_resources(plugins, plan, local_env)
    missing = [k for k in needed if k not in honoured]
    if not missing:
        return
    key = missing[0]
    value = plan.resources.shown()[key]
    file = plan.project.mlproject.name if plan.project.mlproject else "MLproject"
    if key in asked.asked():
        where, drop = f"{label} {key}={value}", f"leave out {label} {key}"
    elif plan.project.resources.get(key) == plan.resources.get(key):
        where, drop = f"{key}: {value} (resources in {file})", f"pass -R {key}=none"
    else:
        where = f"{key}: {value} (entry_points.{plan.entry_point.name}.resources in {file})"
        drop = f"pass -R {key}=none"
    can = sorted(name for name, record in plugins.registered("backend").items()
                 if name == record.name and key in (record.resources or ()))
    others = f"backends that honour {key}: {', '.join('-b ' + n for n in can)}" if can \
        else f"no installed backend honours {key}"
    also = f" (nor {', '.join(missing[1:])})" if len(missing) > 1 else ""
    honours = ", ".join(k for k in KEYS if k in honoured) or "no resources"
    raise UsageError(f"{who} cannot honour the resource {where}{also}: it honours {honours}",
                     hint=f"{others}; or {drop} to run without it")


def _param_str(value: Any) -> str:
    """A Python API parameter value as ``mlflow.projects.run`` passes it: ``str(value)`` (``True``, ``0.1``)."""
    return mlflow_str(value)


