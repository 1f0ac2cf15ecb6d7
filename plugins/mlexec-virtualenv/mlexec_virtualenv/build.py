"""Creating one environment with uv, into the folder the cache hands us.

uv comes from the ``uv`` PyPI package (a dependency of this plugin), or from
``$MLEXEC_UV`` when set.  Its own Python downloads are off
(``UV_PYTHON_DOWNLOADS=never``) unless the user set that variable: the
interpreter is always one found on this machine and passed by path.  The
virtualenv is made ``--relocatable``, so it still works after the cache
renames it from its temporary folder into place (scripts in ``bin/`` find
their Python relative to themselves).

Two things follow MLflow's ``python -m venv`` rather than uv's defaults:

* **seeding** (``--env-manager virtualenv`` only): the environment gets what
  ``venv`` puts in one, the pip wheel bundled with that interpreter's
  ``ensurepip`` (and its setuptools wheel, for Python < 3.12, where ensurepip
  still bundles one), at exactly those versions, installed offline from the
  interpreter's own wheel files;
* **bytecode**: every install step compiles what it installs
  (``uv pip install --compile-bytecode``), as pip does by default, so the
  environment is compiled once, inside the cached build, and imports stay fast
  where ``PYTHONDONTWRITEBYTECODE=1`` stops Python from writing ``.pyc`` files
  itself.  uv skips a file that does not compile (test data with Python 2
  syntax, templates) and the build goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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


#: Run by the chosen interpreter: the wheels its ``python -m venv`` would seed (``ensurepip``'s).
_SEED_PROBE = """\
import glob, json, os, sys, sysconfig
try:
    import ensurepip
except ImportError as exc:
    print(json.dumps({"error": "no ensurepip (%s)" % exc})); sys.exit()
names = ["pip"] + (["setuptools"] if sys.version_info < (3, 12) else [])
dirs = [os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")]
if sysconfig.get_config_var("WHEEL_PKG_DIR"):  # Debian, Fedora: ensurepip takes its wheels from there
    dirs.insert(0, sysconfig.get_config_var("WHEEL_PKG_DIR"))
found = {}
for name in names:
    for folder in dirs:
        hits = sorted(glob.glob(os.path.join(folder, name + "-*.whl")))
        if hits:
            found[name] = hits[-1]
            break
print(json.dumps({"wheels": found, "missing": [n for n in names if n not in found]}))
"""


def seed_wheels(interpreter: Interpreter) -> list[str]:
    """The wheel files ``python -m venv`` would install with ``interpreter`` (pip; setuptools before 3.12)."""
    hint = (f"install Python {interpreter.version}'s venv support (Debian: apt-get install "
            f"python{'.'.join(interpreter.version.split('.')[:2])}-venv), or use --env-manager uv, "
            "which seeds nothing")
    try:
        proc = subprocess.run([interpreter.path, "-I", "-c", _SEED_PROBE], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        raise EnvironmentBuildError(f"cannot ask {interpreter.path} which pip its venv module seeds",
                                    hint="check that this Python works, or pick another version with python:") \
            from None
    if answer.get("error") or answer.get("missing"):
        what = answer.get("error") or f"no bundled {' or '.join(answer['missing'])} wheel"
        raise EnvironmentBuildError(
            f"Python {interpreter.version} ({interpreter.path}) cannot seed a virtualenv as `python -m venv` does: "
            f"{what}", hint=hint)
    return list(answer["wheels"].values())


def build_environment(target: Path, project: Project, spec: PythonEnvSpec, interpreter: Interpreter,
                      reporter: Reporter, *, seed: bool = False) -> None:
    """Make the virtualenv in ``target`` (an empty folder) and install what ``spec`` asks for.

    ``seed``: first install what ``python -m venv`` seeds (``--env-manager virtualenv``, as MLflow).
    Every install step compiles the bytecode of what it installs.
    """
    uv = uv_binary()
    context = str(spec.source or project.directory)
    source_name = spec.source.name if spec.source else "the project"
    with reporter.status(f"creating a virtualenv with Python {interpreter.version}"):
        _run_uv([uv, "venv", str(target), "--relocatable", "--no-project", "--python", interpreter.path],
                project.directory, f"creating a virtualenv with {interpreter.path}", context,
                hint="check that this Python works, or pick another version with python:")
    python = str(target / "bin" / "python")
    install = [uv, "pip", "install", "--python", python]
    # (status, uv arguments, what failed, where, hint)
    steps: list[tuple[str, list[str], str, str, str]] = []
    if seed:
        wheels = seed_wheels(interpreter)
        names = ", ".join(Path(w).name.split("-")[0] + "==" + Path(w).name.split("-")[1] for w in wheels)
        steps.append((f"seeding as venv does: {names}", ["--no-index", "--no-deps", *wheels],
                      f"installing {names} (what `python -m venv` seeds)", context,
                      "the wheels come from the interpreter's ensurepip; use --env-manager uv to seed nothing"))
    if spec.build_dependencies:
        deps = list(spec.build_dependencies)
        steps.append((f"installing build dependencies: {', '.join(deps)}", deps, "installing build_dependencies",
                      context, f"fix build_dependencies in {source_name}"))
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
        steps.append((f"installing {label}", ["-r", str(file)], f"installing the requirements of {source_name}",
                      context, f"fix the requirement uv names above in {source_name}; no environment was created "
                               "and no run was started"))
    for status, args, what, where, hint in steps:
        # uv compiles what this call installs (not the rest of site-packages): every step compiles
        with reporter.status(status):
            _run_uv([*install, "--compile-bytecode", *args], project.directory, what, where, hint=hint)


def build_from_lock(target: Path, project: Project, lock_text: str, interpreter: Interpreter,
                    reporter: Reporter, *, seed: bool = False) -> None:
    """Make the virtualenv in ``target`` again from a run's recorded lock (``mlexec rerun``):
    the same interpreter version, then ``uv pip sync`` of the pinned list (with the index
    options it was installed with), so it holds exactly what the recorded one held."""
    uv = uv_binary()
    with reporter.status(f"creating a virtualenv with Python {interpreter.version}"):
        _run_uv([uv, "venv", str(target), "--relocatable", "--no-project", "--python", interpreter.path],
                project.directory, f"creating a virtualenv with {interpreter.path}", str(project.directory),
                hint="check that this Python works")
    python = str(target / "bin" / "python")
    if seed:  # what `python -m venv` seeds comes from the interpreter, not from an index
        wheels = seed_wheels(interpreter)
        with reporter.status("seeding as venv does"):
            _run_uv([uv, "pip", "install", "--python", python, "--no-index", "--no-deps", "--compile-bytecode",
                     *wheels], project.directory, "seeding the virtualenv as venv does", str(project.directory),
                    hint="use --env-manager uv to seed nothing")
    file = target / ".mlexec-recorded.txt"
    file.write_text(lock_text, encoding="utf-8")
    count = sum(1 for line in lock_text.splitlines() if line.strip() and not line.lstrip().startswith(("#", "-")))
    with reporter.status(f"installing the {count} recorded distributions"):
        _run_uv([uv, "pip", "sync", "--python", python, "--compile-bytecode", str(file)], project.directory,
                "installing the recorded environment again", "the run's mlexec/environment.lock",
                hint="a distribution the run had is no longer where it came from (the index, a file, a "
                     "VCS URL): make it available again, or run the project afresh with `mlexec run`")
