"""Creating one environment with uv, into the folder the cache hands us.

uv comes from the ``uv`` PyPI package (a dependency of this plugin), or from
``$MLEXEC_UV`` when set.  Its own Python downloads are off
(``UV_PYTHON_DOWNLOADS=never``) unless the user set that variable: the
interpreter is always one found on this machine and passed by path.  The
virtualenv is made ``--relocatable``, so it still works after the cache
renames it from its temporary folder into place (scripts in ``bin/`` find
their Python relative to themselves).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mlexec_core.errors import EnvironmentBuildError
from mlexec_core.installer import run_installer
from mlexec_core.plugin.interfaces import Reporter
from mlexec_core.project.model import Project
from mlexec_virtualenv.interpreters import Interpreter
from mlexec_virtualenv.spec import PythonEnvSpec

UV_VAR = "MLEXEC_UV"
#: Lines of uv's output kept in an error message.
ERROR_LINES = 30


def uv_binary() -> str:
    if os.environ.get(UV_VAR):
        return os.environ[UV_VAR]
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv")
    if found:
        return found
    raise EnvironmentBuildError("uv is not installed", hint="pip install uv (mlexec-virtualenv depends on it)")


def _uv_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")
    for name in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONHOME"):  # never install into the caller's environment
        env.pop(name, None)
    env["NO_COLOR"] = "1"
    return env


def _run_uv(args: list[str], cwd: Path, what: str, context: str, hint: str) -> str:
    try:
        # its own process group, stopped as a whole if mlexec is interrupted (uv's build-backend children too)
        proc = run_installer(args, cwd=cwd, env=_uv_env())
    except OSError as exc:
        raise EnvironmentBuildError(f"cannot run uv ({args[0]}): {exc.strerror}",
                                    hint=f"pip install uv, or point {UV_VAR} at a uv executable") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stdout.rstrip().splitlines() if line.strip()]
        if len(lines) > ERROR_LINES:
            lines = ["...", *lines[-ERROR_LINES:]]
        output = "\n".join(f"    {line}" for line in lines) or "    (no output)"
        raise EnvironmentBuildError(f"{what} failed (uv exit {proc.returncode}); uv says:\n{output}",
                                    context=context, hint=hint)
    return proc.stdout


def build_environment(target: Path, project: Project, spec: PythonEnvSpec, interpreter: Interpreter,
                      reporter: Reporter) -> None:
    """Make the virtualenv in ``target`` (an empty folder) and install what ``spec`` asks for."""
    uv = uv_binary()
    context = str(spec.source or project.directory)
    source_name = spec.source.name if spec.source else "the project"
    with reporter.status(f"creating a virtualenv with Python {interpreter.version}"):
        _run_uv([uv, "venv", str(target), "--relocatable", "--no-project", "--python", interpreter.path],
                project.directory, f"creating a virtualenv with {interpreter.path}", context,
                hint="check that this Python works, or pick another version with python:")
    python = str(target / "bin" / "python")
    install = [uv, "pip", "install", "--python", python]
    if spec.build_dependencies:
        deps = list(spec.build_dependencies)
        with reporter.status(f"installing build dependencies: {', '.join(deps)}"):
            _run_uv([*install, *deps], project.directory, "installing build_dependencies", context,
                    hint=f"fix build_dependencies in {source_name}")
    requirements = list(spec.dependencies)
    if spec.lock is not None:
        with reporter.status("reading uv.lock"):
            exported = _run_uv(
                [uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--no-header",
                 "--format", "requirements-txt", "--project", str(project.directory)],
                project.directory, "reading uv.lock", str(spec.lock),
                hint="the project needs a pyproject.toml that matches its uv.lock (run `uv lock`)",
            )
        if requirements:
            reporter.warning(f"the project has a uv.lock: installing from it, not the dependencies in {source_name}")
        requirements = [line for line in exported.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if requirements:
        file = target / ".mlexec-requirements.txt"
        file.write_text("\n".join(requirements) + "\n", encoding="utf-8")
        count = sum(1 for line in requirements if not line.startswith("-"))
        label = f"{count} requirement{'s' if count != 1 else ''}" + (" from uv.lock" if spec.lock else "")
        with reporter.status(f"installing {label}"):
            _run_uv([*install, "-r", str(file)], project.directory, f"installing the requirements of {source_name}",
                    context, hint=f"fix the requirement uv names above in {source_name}; no environment was created "
                                  "and no run was started")
