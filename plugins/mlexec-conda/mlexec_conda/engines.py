"""The two ways to build a conda prefix: a conda-compatible executable, or rattler in-process.

:func:`find_engine` picks one, in this order:

1. ``MLEXEC_CONDA_EXE``: an executable name or path (``conda``, ``mamba``,
   ``micromamba``, ``/opt/conda/bin/conda``), or ``rattler`` for the built-in engine;
2. ``MLFLOW_CONDA_CREATE_ENV_CMD`` (MLflow's: the executable that creates
   environments, e.g. ``mamba``), looked up in ``$MLFLOW_CONDA_HOME/bin``, then
   beside ``$CONDA_EXE``, then on ``PATH`` (as MLflow looks it up);
3. ``$MLFLOW_CONDA_HOME/bin/conda`` (MLflow's);
4. ``$CONDA_EXE``: the conda of the activated shell (every ``conda activate``d
   shell sets it; MLflow uses it too), before anything on ``PATH``;
5. ``conda``, ``mamba`` or ``micromamba`` on ``PATH``;
6. the built-in rattler engine (no conda installation needed).

Both engines raise :class:`~mlexec_core.errors.EnvironmentBuildError` with a
message that names the package or channel at fault.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping

from mlexec_core.installer import run_installer
from mlexec_core.errors import EnvironmentBuildError

from mlexec_conda.spec import CondaSpec

EXE_VAR = "MLEXEC_CONDA_EXE"
TIMEOUT_VAR = "MLEXEC_CONDA_TIMEOUT"
MLFLOW_HOME_VAR = "MLFLOW_CONDA_HOME"
MLFLOW_CREATE_VAR = "MLFLOW_CONDA_CREATE_ENV_CMD"
#: Set by conda itself in every shell where conda is initialised (``conda activate``).
CONDA_EXE_VAR = "CONDA_EXE"
RATTLER = "rattler"
#: Executables looked for on PATH, in order (conda first, as MLflow).
PATH_CANDIDATES = ("conda", "mamba", "micromamba")
#: The channel used when conda.yaml names none (what micromamba and pixi default to).
DEFAULT_CHANNEL = "conda-forge"


def network_timeout(environ: Mapping[str, str] | None = None) -> int:
    """Seconds a channel may take to answer one request (``MLEXEC_CONDA_TIMEOUT``, default 30)."""
    raw = (environ if environ is not None else os.environ).get(TIMEOUT_VAR, "30")
    try:
        return max(1, int(float(raw)))
    except ValueError:
        return 30


class Engine:
    """Builds a prefix for a :class:`CondaSpec`."""

    #: Part of the cache key: prefixes built by different engines are not shared.
    name: str
    description: str

    def validate(self, spec: CondaSpec) -> None:
        """Fast checks of ``spec`` for this engine, before anything is built."""

    def build(self, spec: CondaSpec, prefix: Path, reporter) -> None:
        raise NotImplementedError


def find_engine(environ: Mapping[str, str] | None = None) -> Engine:
    environ = os.environ if environ is None else environ
    path = environ.get("PATH")
    explicit = environ.get(EXE_VAR, "").strip()
    if explicit:
        if explicit.lower() == RATTLER:
            return RattlerEngine()
        found = shutil.which(explicit, path=path)
        if not found:
            raise EnvironmentBuildError(
                f"{EXE_VAR}={explicit}: no such executable",
                hint=f"set {EXE_VAR} to a conda, mamba or micromamba executable, or to 'rattler' for the "
                     "built-in engine",
            )
        return ExecutableEngine(found)
    home = environ.get(MLFLOW_HOME_VAR, "").strip()
    create = environ.get(MLFLOW_CREATE_VAR, "").strip()
    conda_exe = environ.get(CONDA_EXE_VAR, "").strip()
    if create:
        places = [os.path.join(home, "bin")] if home else []
        if conda_exe:
            places.append(os.path.dirname(conda_exe))
        found = next((f for f in (shutil.which(create, path=p) for p in places) if f), None) \
            or shutil.which(create, path=path)
        if not found:
            where = " or ".join([*(f"{p}" for p in places), "PATH"])
            raise EnvironmentBuildError(f"{MLFLOW_CREATE_VAR}={create}: no such executable in {where}",
                                        hint=f"unset {MLFLOW_CREATE_VAR} or install {create}")
        return ExecutableEngine(found)
    if home:
        exe = Path(home, "bin", "conda")
        if not os.access(exe, os.X_OK):
            raise EnvironmentBuildError(f"{MLFLOW_HOME_VAR}={home}: there is no executable {exe}",
                                        hint=f"point {MLFLOW_HOME_VAR} at a conda installation, or unset it to "
                                             "use conda from PATH or the built-in rattler engine")
        return ExecutableEngine(str(exe))
    if conda_exe:
        if not (os.path.isfile(conda_exe) and os.access(conda_exe, os.X_OK)):
            raise EnvironmentBuildError(f"{CONDA_EXE_VAR}={conda_exe}: there is no such executable",
                                        hint=f"the shell's conda moved or was removed: unset {CONDA_EXE_VAR} (or "
                                             f"set {EXE_VAR}) to use conda from PATH or the built-in engine")
        return ExecutableEngine(conda_exe)
    for candidate in PATH_CANDIDATES:
        found = shutil.which(candidate, path=path)
        if found:
            return ExecutableEngine(found)
    return RattlerEngine()


def tail_lines(text: str, lines: int = 15) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


# -- a conda-compatible executable --------------------------------------------------------


class ExecutableEngine(Engine):
    """``conda env create`` / ``mamba env create`` / ``micromamba create`` into a prefix."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.flavour = re.sub(r"(\.exe|\.bat)$", "", Path(executable).name.lower())
        self.name = self.flavour if self.flavour in PATH_CANDIDATES else "conda"
        self.description = f"{self.flavour} ({executable})"

    def command(self, prefix: Path, file: Path) -> list[str]:
        if self.flavour == "micromamba":
            return [self.executable, "create", "--yes", "--prefix", str(prefix), "--file", str(file)]
        return [self.executable, "env", "create", "--prefix", str(prefix), "--file", str(file)]

    def build(self, spec: CondaSpec, prefix: Path, reporter) -> None:
        import yaml

        # The prefix must not exist yet: conda refuses (or asks) for an existing directory.
        if prefix.is_dir() and not any(prefix.iterdir()):
            prefix.rmdir()
        env = {**os.environ, "CONDA_ALWAYS_YES": "true", "MAMBA_ALWAYS_YES": "true"}
        with tempfile.TemporaryDirectory(prefix="mlexec-conda-") as tmp:
            # The pip: part is left to uv; name is left out since the prefix is ours.
            file = Path(tmp, "environment.yml")
            data = {"channels": list(spec.channels), "dependencies": list(spec.dependencies)}
            file.write_text(yaml.safe_dump(data, sort_keys=False))
            cmd = self.command(prefix, file)
            try:
                proc = run_installer(cmd, cwd=spec.file.parent, env=env, separate_stderr=True)
            except OSError as exc:
                raise EnvironmentBuildError(f"cannot run {self.executable}: {exc.strerror}",
                                            hint=f"check the executable, or set {EXE_VAR}=rattler") from None
        if proc.returncode != 0:
            raise EnvironmentBuildError(
                f"{self.flavour} could not create the environment (exit status {proc.returncode}):\n"
                + tail_lines(proc.stderr + "\n" + proc.stdout),
                context=str(spec.file),
                hint="fix the package specs or channels in the file; the lines above are "
                     f"{self.flavour}'s own output",
            )
        if not (prefix / "conda-meta").is_dir():
            raise EnvironmentBuildError(f"{self.flavour} exited successfully but created no environment at {prefix}",
                                        context=str(spec.file))


# -- the built-in rattler engine -----------------------------------------------------------


def channel_urls(channels: tuple[str, ...]) -> dict[str, str]:
    """conda.yaml channels (as written) to the URLs rattler reads, in priority order.

    Names (``conda-forge``, ``bioconda``) go through rattler's default channel
    alias, as conda maps them; URLs and paths are used as given.
    """
    from rattler import Channel

    out: dict[str, str] = {}
    for channel in channels or (DEFAULT_CHANNEL,):
        if channel == "nodefaults":
            continue
        if "://" in channel:
            out[channel] = channel.rstrip("/")
        elif channel.startswith(("/", "./", "../", "~")):
            out[channel] = Path(channel).expanduser().resolve().as_uri()
        else:
            out[channel] = Channel(channel.strip("/")).base_url.rstrip("/")
    return out


def _unreachable_channel(message: str, urls: dict[str, str]) -> str | None:
    for written, url in urls.items():
        if url in message or url.replace("file://", "") in message:
            return written if written == url else f"{written} ({url})"
    return None


_NO_CANDIDATES = re.compile(r"No candidates were found for ([^\n]+?)\.?\s*$", re.M)
_NO_CANDIDATES_REQ = re.compile(r"[└├─│ ]*([^\n,]+?), for which no candidates were found")


def describe_solver_error(message: str, requested: tuple[str, ...] = ()) -> str:
    """rattler's explanation, headed by the requirements that cannot be met (named with their package)."""
    direct = [m.strip().rstrip(".") for m in _NO_CANDIDATES.findall(message)]
    indirect = [m.strip() for m in _NO_CANDIDATES_REQ.findall(message)]
    parts = list(dict.fromkeys(direct))
    for item in dict.fromkeys(indirect):  # required by another package: say what in the file clashes with it
        name = re.split(r"[\s=<>!~]", item, maxsplit=1)[0]
        asked = [r for r in requested if re.split(r"[\s=<>!~]", r, maxsplit=1)[0] == name]
        parts.append(f"{item} (conflicts with {', '.join(asked)} in the file)" if asked else item)
    head = f"nothing satisfies {'; '.join(parts)}" if parts else "the requirements conflict"
    body = re.sub(r"^Cannot solve the request because of:\s*", "", message.strip())
    return f"cannot solve the environment: {head}\n{body}"


def describe_gateway_error(message: str) -> str:
    """The first line of rattler's error and its root cause, without the chain in between."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    causes = [line[len("Caused by:"):].strip() for line in lines if line.startswith("Caused by:")]
    return f"{causes[-1]} ({lines[0]})" if causes else lines[0] if lines else "no answer"


class RattlerEngine(Engine):
    """Solves with rattler (the library behind pixi) and links the packages into the prefix itself."""

    name = RATTLER
    description = "built-in rattler engine"

    def validate(self, spec: CondaSpec) -> None:
        if "defaults" in spec.channels:
            raise EnvironmentBuildError(
                "channels: 'defaults' (Anaconda's own repository) is not available to the built-in rattler engine",
                context=str(spec.file),
                hint="name those channels by their URLs, use conda-forge instead, or use a conda installation "
                     f"({EXE_VAR}=conda)",
            )

    def build(self, spec: CondaSpec, prefix: Path, reporter) -> None:
        import asyncio

        asyncio.run(self._build(spec, prefix, reporter))

    async def _build(self, spec: CondaSpec, prefix: Path, reporter) -> None:
        import rattler
        from rattler import Client, Gateway, MatchSpec, Platform, VirtualPackage
        from rattler.exceptions import GatewayError, SolverError

        context = str(spec.file)
        self.validate(spec)
        urls = channel_urls(spec.channels)
        if not spec.channels:
            reporter.info(f"conda: {spec.file.name} names no channels; using {DEFAULT_CHANNEL}")
        if not urls:
            raise EnvironmentBuildError("channels: no channel left after 'nodefaults'", context=context,
                                        hint="list at least one channel, e.g. conda-forge")
        for dep in spec.dependencies:
            try:
                MatchSpec(dep)
            except Exception as exc:
                raise EnvironmentBuildError(f"dependencies: {dep!r} is not a valid conda package spec: "
                                            f"{tail_lines(str(exc), 3)}", context=context,
                                            hint="write name, name=1.2, 'name >=1.2,<2' or name=1.2=build") from None
        client = Client(timeout=network_timeout())
        gateway = Gateway(client=client)
        platform = Platform.current()
        try:
            virtual = VirtualPackage.detect()
        except Exception:  # detection is best effort (e.g. no glibc found)
            virtual = []
        with reporter.status(f"conda: solving {len(spec.dependencies)} package spec(s) from "
                             f"{', '.join(spec.channels) or DEFAULT_CHANNEL}"):
            try:
                records = await rattler.solve(
                    list(urls.values()), list(spec.dependencies), gateway=gateway,
                    platforms=[platform, Platform("noarch")], virtual_packages=virtual,
                )
            except GatewayError as exc:
                message = str(exc)
                url = _unreachable_channel(message, urls)
                raise EnvironmentBuildError(
                    f"channel {url or ', '.join(urls)} is unreachable: {describe_gateway_error(message)}",
                    context=context,
                    hint="check the channel name or URL and the network; without access to public channels, use a "
                         f"local or mirrored channel (file:// or https:// URL), or a conda installation ({EXE_VAR})",
                ) from None
            except SolverError as exc:
                raise EnvironmentBuildError(
                    describe_solver_error(str(exc), spec.dependencies), context=context,
                    hint="fix the versions in dependencies (or add the channel that has the package)",
                ) from None
            except Exception as exc:  # rattler's other errors (an invalid match spec ...)
                raise EnvironmentBuildError(f"cannot solve the environment: {tail_lines(str(exc), 10)}",
                                            context=context, hint="check the package specs in dependencies") from None
        if spec.pip and not any(r.name.normalized == "python" for r in records):
            raise EnvironmentBuildError("dependencies: the pip: list needs python in the environment",
                                        context=context, hint="add python (and pip) to dependencies")
        with reporter.status(f"conda: installing {len(records)} package(s) into {prefix.name}"):
            try:
                await rattler.install(records, target_prefix=prefix, show_progress=False, client=client)
            except Exception as exc:
                raise EnvironmentBuildError(f"installing the packages failed: {tail_lines(str(exc), 10)}",
                                            context=context) from None


# -- the pip: part, with uv ----------------------------------------------------------------


def install_pip(spec: CondaSpec, prefix: Path, reporter) -> None:
    """``uv pip install --python <prefix>/bin/python`` the ``pip:`` list, from the conda.yaml folder."""
    python = prefix / "bin" / "python"
    if not python.exists():
        raise EnvironmentBuildError("dependencies: the pip: list needs python in the environment",
                                    context=str(spec.file), hint="add python (and pip) to dependencies")
    from uv import find_uv_bin

    cmd = [find_uv_bin(), "pip", "install", "--python", str(python), *spec.pip]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    with reporter.status(f"conda: installing {len(spec.pip)} pip requirement(s) with uv"):
        proc = run_installer(cmd, cwd=spec.file.parent, env=env, separate_stderr=True)
    if proc.returncode != 0:
        raise EnvironmentBuildError(
            f"dependencies.pip: uv could not install the pip requirements:\n{tail_lines(proc.stderr + proc.stdout)}",
            context=str(spec.file), hint="fix the pip: list (uv's own message is above)",
        )


# -- bytecode ---------------------------------------------------------------------------------

#: Run by the environment's own Python: compile its site-packages; a file that does not compile
#: (test data in Python 2 syntax, a template) is skipped, as pip and uv skip it.
_COMPILE = """\
import compileall, os, sys, sysconfig
paths = sysconfig.get_paths()
for folder in sorted({paths["purelib"], paths["platlib"]}):
    if os.path.isdir(folder):
        try:
            compileall.compile_dir(folder, maxlevels=1000, quiet=2, workers=0)
        except TypeError:  # an old Python without workers
            compileall.compile_dir(folder, maxlevels=1000, quiet=1)
"""


def compile_bytecode(prefix: Path, reporter, context: str) -> None:
    """Compile the ``.pyc`` files of everything in the prefix's site-packages, with the prefix's Python.

    conda packages usually ship compiled (conda compiles noarch ones itself), the built-in rattler
    engine and uv do not: so the whole site-packages is compiled once here, inside the cached build,
    and imports stay fast where ``PYTHONDONTWRITEBYTECODE=1`` stops Python from writing ``.pyc``
    files itself.  Files already compiled are only checked.  A prefix without Python is left as it is.
    """
    python = prefix / "bin" / "python"
    if not python.exists():
        return
    with reporter.status("conda: compiling the bytecode of site-packages"):
        try:
            proc = run_installer([str(python), "-I", "-c", _COMPILE], cwd=prefix, env=dict(os.environ),
                                 separate_stderr=True)
        except OSError as exc:
            raise EnvironmentBuildError(f"cannot run the environment's Python ({python}): {exc.strerror}",
                                        context=context) from None
    if proc.returncode != 0:
        raise EnvironmentBuildError(
            f"compiling the environment's bytecode failed (exit status {proc.returncode}):\n"
            + tail_lines(proc.stderr + "\n" + proc.stdout),
            context=context, hint="the environment's Python does not work; no environment was kept",
        )
