"""What a project asks of its Python environment: read from python_env.yaml, conda.yaml, uv.lock.

Everything that decides the environment's contents ends up in a
:class:`PythonEnvSpec`: the Python version asked for, the build dependencies,
the requirement lines with ``-r`` files expanded (so editing a requirements
file gives a new environment), the constraint files' contents and the
``uv.lock`` digest.  No packages are installed here.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Any

from attrs import frozen

from mlexec_core.errors import EnvironmentBuildError, ProjectError
from mlexec_core.project.model import EnvKind, Project
from mlexec_core.yamlfile import exists, is_file, load_yaml, read_text, shorten, text_problem

PYTHON_ENV_KEYS = ("python", "build_dependencies", "dependencies")
UV_LOCK = "uv.lock"
#: conda packages that are really pip's build tools: kept (as build dependencies) in a conda.yaml.
_CONDA_BUILD_TOOLS = ("pip", "setuptools", "wheel")
#: ``name``, optional ``op`` and ``version`` of a conda match spec such as ``python=3.11`` or ``numpy>=1.2``.
_CONDA_DEP = re.compile(r"^\s*(?P<package>[A-Za-z0-9_.\-]+)\s*(?:(?P<op><=|>=|==|=|<|>|!=)\s*(?P<version>\S+))?\s*$")
_REQUIREMENT_OPT = re.compile(r"^(?P<opt>-r|--requirement|-c|--constraint)(?:\s*=\s*|\s+|(?=[^\s-]))(?P<path>.+)$")


@frozen
class PythonEnvSpec:
    """The environment a project needs, as far as its files say."""

    #: The file it came from (python_env.yaml or conda.yaml), if any.
    source: Path | None
    #: ``python:`` as written (``"3.11"``, ``"3.11.7"``); ``None``: the Python mlexec runs on.
    python: str | None
    #: The file wrote the version as a YAML number (``python: 3.10`` reads as 3.1).
    python_was_number: bool = False
    build_dependencies: tuple[str, ...] = ()
    #: Requirement lines, ``-r`` files expanded, ``-c`` paths made absolute.
    dependencies: tuple[str, ...] = ()
    #: Absolute constraint file path -> sha256 of its content.
    constraints: tuple[tuple[str, str], ...] = ()
    #: The project's uv.lock, if it has one, and its sha256.
    lock: Path | None = None
    lock_digest: str | None = None
    #: conda packages a conda.yaml names that a virtualenv cannot install (dropped, with a warning).
    dropped: tuple[str, ...] = ()


def _sha256(path: Path, error: type = ProjectError) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError) as exc:
        raise error(f"cannot read it: {getattr(exc, 'strerror', None) or exc}", context=shorten(str(path), 300)) \
            from None


def read_spec(project: Project) -> PythonEnvSpec:
    """The :class:`PythonEnvSpec` of ``project`` (python, conda or no environment)."""
    env = project.environment
    lock = project.directory / UV_LOCK
    lock_args: dict[str, Any] = {}
    if is_file(lock):
        lock_args = {"lock": lock, "lock_digest": _sha256(lock)}
    if env.kind is EnvKind.PYTHON and env.file is not None:
        return _read_python_env(env.file, project.directory, lock_args)
    if env.kind is EnvKind.CONDA and env.file is not None:
        return _read_conda_env(env.file, project.directory, lock_args)
    return PythonEnvSpec(source=None, python=None, **lock_args)


def _load_yaml(path: Path) -> Any:
    return load_yaml(path, error=ProjectError, what="environment file")


def _string_list(value: Any, path: Path, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                              for v in value):
        raise ProjectError(f"{key}: expected a list of requirement strings", context=str(path),
                           hint=f"write {key} as a YAML list, for example:\n    {key}:\n      - six==1.16.0")
    return [str(v) for v in value]


def _python_version(value: Any, path: Path, key: str) -> tuple[str | None, bool]:
    if value is None:
        return None, False
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ProjectError(f"{key}: expected a version such as \"3.11\"", context=str(path))
    text = str(value).strip()
    if not text or len(text) > 64 or any(c.isspace() for c in text):
        raise ProjectError(f"{key}: {shorten(text, 80)!r} is not a Python version such as \"3.11\"", context=str(path))
    return text, isinstance(value, float)


def _read_python_env(path: Path, project_dir: Path, lock_args: dict[str, Any]) -> PythonEnvSpec:
    data = _load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProjectError("expected a mapping with python, build_dependencies and dependencies", context=str(path))
    for key in data:
        if key not in PYTHON_ENV_KEYS:
            close = difflib.get_close_matches(str(key), PYTHON_ENV_KEYS, n=1)
            raise ProjectError(
                f"unknown key {shorten(str(key), 80)!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                context=str(path), hint=f"python_env.yaml takes {', '.join(PYTHON_ENV_KEYS)}",
            )
    python, was_number = _python_version(data.get("python"), path, "python")
    build = _string_list(data.get("build_dependencies"), path, "build_dependencies")
    deps = _string_list(data.get("dependencies"), path, "dependencies")
    lines, constraints = expand_requirements(deps, project_dir, f"{path}: dependencies")
    return PythonEnvSpec(source=path, python=python, python_was_number=was_number,
                         build_dependencies=tuple(build), dependencies=tuple(lines),
                         constraints=tuple(constraints), **lock_args)


def _read_conda_env(path: Path, project_dir: Path, lock_args: dict[str, Any]) -> PythonEnvSpec:
    """conda.yaml as a virtualenv sees it: ``python=``, pip's build tools and the ``pip:`` list."""
    data = _load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ProjectError("expected a conda environment mapping (name, channels, dependencies)", context=str(path))
    items = data.get("dependencies") or []
    if not isinstance(items, list):
        raise ProjectError("dependencies: expected a list", context=str(path))
    python: str | None = None
    build: list[str] = []
    pip_lines: list[str] = []
    dropped: list[str] = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and list(item) == ["pip"]:
            pip_lines.extend(_string_list(item["pip"], path, f"dependencies[{index}].pip"))
            continue
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raise ProjectError(f"dependencies[{index}]: expected a package string or a {{pip: [...]}} mapping",
                               context=str(path))
        match = _CONDA_DEP.match(item)
        name = match.group("package").lower() if match else None
        if name == "python" and python is None:
            op, version = match.group("op"), match.group("version")
            if op in ("<", ">", "!="):
                raise ProjectError(f"dependencies[{index}]: {item!r}: a virtualenv needs one Python version",
                                   context=str(path), hint="pin it, for example python=3.11")
            python = version.rstrip("*").rstrip(".") if version else None
        elif name in _CONDA_BUILD_TOOLS:
            op, version = match.group("op"), match.group("version")
            if op == "=":
                # conda's "pip=23" means 23.*; pip needs "==23.*"
                op, version = "==", version if "*" in version or version.count(".") >= 2 else f"{version}.*"
            build.append(name + (op or "") + (version or ""))
        else:
            dropped.append(item.strip())
    lines, constraints = expand_requirements(pip_lines, project_dir, f"{path}: pip")
    return PythonEnvSpec(source=path, python=python, build_dependencies=tuple(build), dependencies=tuple(lines),
                         constraints=tuple(constraints), dropped=tuple(dropped), **lock_args)


def _logical_lines(text: str) -> list[str]:
    """Requirement-file lines: comments stripped, backslash continuations joined."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw if not pending else pending + raw.lstrip()
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        if line.lstrip().startswith("#"):
            continue
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            out.append(line)
    if pending.strip():
        out.append(pending.strip())
    return out


def expand_requirements(lines: list[str], base: Path, origin: str,
                        _stack: tuple[Path, ...] = ()) -> tuple[list[str], list[tuple[str, str]]]:
    """``lines`` with every ``-r FILE`` replaced by that file's lines (recursively, relative to
    ``base``, the project directory, or the including file's folder as pip does); ``-c FILE`` kept with an absolute path and its digest returned."""
    out: list[str] = []
    constraints: list[tuple[str, str]] = []
    for logical in _logical_lines("\n".join(lines)):
        match = _REQUIREMENT_OPT.match(logical)
        if not match:
            out.append(logical)
            continue
        opt, rel = match.group("opt"), match.group("path").strip().strip("'\"")
        problem = text_problem(rel)
        if problem:
            raise EnvironmentBuildError(f"{shorten(logical)!r}: the path {problem}", context=origin)
        target = Path(rel) if Path(rel).is_absolute() else base / rel
        try:
            target = target.resolve()
        except (OSError, RuntimeError):
            pass
        if not is_file(target):
            what = "is not a file" if exists(target) else "no such file"
            raise EnvironmentBuildError(
                f"{shorten(logical)!r}: {what} {shorten(str(target), 300)}", context=origin,
                hint=f"{'-r' if opt in ('-r', '--requirement') else '-c'} paths are relative to the project "
                     f"directory ({base})" if not _stack else f"paths are relative to {base}",
            )
        if opt in ("-c", "--constraint"):
            out.append(f"-c {target}")
            constraints.append((str(target), _sha256(target, EnvironmentBuildError)))
            continue
        if target in _stack:
            raise EnvironmentBuildError(f"{shorten(logical)!r}: requirement files include each other", context=origin)
        if len(_stack) >= 32:
            raise EnvironmentBuildError(f"{shorten(logical)!r}: requirement files nested more than 32 deep",
                                        context=origin)
        text = read_text(target, error=EnvironmentBuildError, what="requirements file")
        problem = text_problem(text)
        if problem:
            raise EnvironmentBuildError(f"the requirements file {problem}", context=str(target))
        nested, nested_constraints = expand_requirements(
            text.splitlines(), target.parent, str(target), (*_stack, target))
        out.extend(nested)
        constraints.extend(nested_constraints)
    return out, constraints
