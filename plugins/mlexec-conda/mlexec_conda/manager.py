"""The ``conda`` environment manager: conda.yaml into a cached, content-addressed prefix."""

from __future__ import annotations

import glob
import os
import shlex
from pathlib import Path
from typing import Iterable

import attrs

from mlexec_core.envcache import EnvironmentCache, spec_key
from mlexec_core.errors import EnvironmentBuildError
from mlexec_core.plugin.interfaces import (
    CommandSpec,
    EnvironmentInfo,
    EnvironmentManager,
    Execution,
    PreparedEnvironment,
    ProcessLauncher,
    RunPlan,
)
from mlexec_core.project.model import Project
from mlexec_core.yamlfile import quiet_file_warnings

from mlexec_conda.engines import Engine, compile_bytecode, find_engine, install_pip
from mlexec_conda.lock import read_lock, write_lock
from mlexec_conda.spec import CondaSpec, parse_conda_yaml

ACTIVATE_D = Path("etc", "conda", "activate.d")
#: Part of the cache key: environments are built with their site-packages compiled (older ones were not).
BYTECODE = "compiled"


def conda_platform() -> str:
    """The conda subdir of this machine (``linux-64``, ``osx-arm64`` ...), without importing rattler."""
    import platform
    import sys

    machine = platform.machine().lower()
    arch = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64", "ppc64le": "ppc64le",
            "s390x": "s390x", "i686": "32", "i386": "32"}.get(machine, machine)
    osname = {"linux": "linux", "darwin": "osx", "win32": "win"}.get(sys.platform, sys.platform)
    if osname == "linux" and arch == "arm64":
        arch = "aarch64"
    if osname == "osx" and arch == "aarch64":
        arch = "arm64"
    return f"{osname}-{arch}"


class ActivatingLauncher(ProcessLauncher):
    """Sources the prefix's ``etc/conda/activate.d/*.sh`` scripts before the command, as ``conda activate`` does."""

    def __init__(self, scripts: tuple[str, ...]) -> None:
        self.scripts = scripts

    def start(self, spec: CommandSpec) -> Execution:
        sources = "".join(f". {shlex.quote(s)} && " for s in self.scripts)
        return super().start(attrs.evolve(spec, command=sources + spec.command))


class CondaEnvironment(EnvironmentManager):
    """conda.yaml environments (registered, with what it handles, in :mod:`mlexec_conda.plugin`)."""

    def _spec(self, project: Project, quiet: bool = False) -> CondaSpec:
        file = project.environment.file
        if file is None:  # the core only hands CONDA projects here, and those have a file
            raise EnvironmentBuildError("the project declares no conda environment file",
                                        hint="add a conda.yaml, or declare conda_env: <file> in the MLproject")
        if quiet:  # read again after check(): a duplicate key was already said
            with quiet_file_warnings():
                return parse_conda_yaml(file)
        return parse_conda_yaml(file)

    def cache(self) -> EnvironmentCache:
        return EnvironmentCache(self.name)

    def key(self, spec: CondaSpec, engine: Engine) -> str:
        return spec_key({**spec.key_data(), "platform": conda_platform(), "engine": engine.name,
                         "bytecode": BYTECODE})

    def check(self, project: Project, requested_as: str) -> None:
        find_engine().validate(self._spec(project))

    def describe(self, project: Project) -> str:
        try:
            spec = self._spec(project, quiet=True)
            engine = find_engine()
        except EnvironmentBuildError as exc:
            return f"conda: {exc.message}"
        cache, key = self.cache(), self.key(spec, engine)
        state = "cached" if cache.is_ready(key) else "to be built"
        path = cache.path_for(key)
        return f"conda environment from {spec.file.name} with {engine.description}: {path} ({state})"

    def prepare(self, plan: RunPlan) -> PreparedEnvironment:
        reporter = self.context.reporter
        spec = self._spec(plan.project, quiet=True)
        if plan.environment_lock is not None:
            return self._prepare_from_lock(spec, plan.environment_lock)
        for key in spec.unknown_keys:
            reporter.warning(f"{spec.file.name}: unknown key {key!r} is ignored")
        engine = find_engine()
        engine.validate(spec)
        cache = self.cache()
        key = self.key(spec, engine)

        def build(prefix: Path) -> None:
            reporter.info(f"conda: creating environment {prefix.name} from {spec.file.name} with "
                          f"{engine.description}")
            engine.build(spec, prefix, reporter)
            if spec.pip:
                install_pip(spec, prefix, reporter)
            compile_bytecode(prefix, reporter, str(spec.file))
            write_lock(prefix)  # what it contains, pinned, once

        prefix, built = cache.ensure(
            key, build, summary=spec.summary(), spec={**spec.key_data(), "engine": engine.name,
                                                      "file": str(spec.file)},
            relocatable=False,
            on_wait=lambda: reporter.info("conda: another mlexec is creating the same environment; waiting"),
        )
        if not built:
            reporter.info(f"conda: reusing environment {prefix.name}")
        prepared = self.prepared(spec, prefix)
        lock = read_lock(prefix) or write_lock(prefix)  # a prefix built before mlexec recorded locks
        return attrs.evolve(prepared, lock=lock)

    def lock_key(self, lock) -> tuple[str, dict]:
        """The cache key of the environment built from ``lock``: named by the lock's contents."""
        import hashlib

        data = {"manager": "conda", "lock": hashlib.sha256(lock.text.encode()).hexdigest(),
                "platform": conda_platform(), "bytecode": BYTECODE}
        return spec_key(data), data

    def dry_run(self, plan: RunPlan) -> dict:
        lock = plan.environment_lock
        if lock is None:
            return {}
        from mlexec_conda.lock import KIND, entries, pip_requirements

        if lock.kind != KIND:
            return {"from_lock": f"a {lock.kind} lock cannot be used by the conda manager"}
        try:
            count = len(entries(lock.text))
        except ValueError:
            count = 0
        key, _ = self.lock_key(lock)
        cache = self.cache()
        state = "cached" if cache.is_ready(key) else "to be built: each package file fetched from its recorded URL"
        pip = len(pip_requirements(lock.text))
        return {"from_lock": f"{lock.kind} lock of {count} conda packages" + (f" and {pip} pip packages" if pip else "")
                             + f": {cache.path_for(key).name} ({state})"}

    def _prepare_from_lock(self, spec: CondaSpec, lock) -> PreparedEnvironment:
        """The prefix a recorded run had, built again from its explicit list (``mlexec rerun``): a
        content-addressed environment named by the lock, reused by every rerun of it."""
        from mlexec_conda.lock import KIND, entries
        from mlexec_conda.rebuild import build_from_lock, check_lock

        if lock.kind != KIND:
            raise EnvironmentBuildError(f"the recorded environment is a {lock.kind} lock; the conda manager builds "
                                        f"from {KIND} locks", hint="rerun with the manager the run used")
        reporter = self.context.reporter
        check_lock(lock.text)  # unreadable, or another platform's: before any build
        key, data = self.lock_key(lock)
        cache = self.cache()
        summary = f"recorded: {len(entries(lock.text))} conda packages"

        def build(prefix: Path) -> None:
            reporter.info(f"conda: creating environment {prefix.name} from the recorded lock ({summary})")
            build_from_lock(lock.text, prefix, reporter)
            write_lock(prefix)

        prefix, built = cache.ensure(
            key, build, summary=summary, spec=data, relocatable=False,
            on_wait=lambda: reporter.info("conda: another mlexec is creating the same environment; waiting"))
        if not built:
            reporter.info(f"conda: reusing environment {prefix.name} (the recorded one, built again)")
        return attrs.evolve(self.prepared(spec, prefix), lock=read_lock(prefix) or write_lock(prefix) or lock)

    def prepared(self, spec: CondaSpec, prefix: Path) -> PreparedEnvironment:
        env = {
            "CONDA_PREFIX": str(prefix),
            "CONDA_DEFAULT_ENV": str(prefix),
            "CONDA_SHLVL": "1",
            "CONDA_PROMPT_MODIFIER": f"({prefix.name}) ",
            **spec.variables,
        }
        scripts = tuple(sorted(glob.glob(os.path.join(prefix, ACTIVATE_D, "*.sh"))))
        return PreparedEnvironment(
            name="conda",
            env=env,
            path_prepend=(str(prefix / "bin"),),
            unset=("VIRTUAL_ENV", "PYTHONHOME"),  # an activated venv must not leak into the prefix
            launcher=ActivatingLauncher(scripts) if scripts else None,
            location=str(prefix),
        )

    def list_environments(self) -> Iterable[EnvironmentInfo]:
        return self.cache().list()

    def remove_environment(self, info: EnvironmentInfo) -> bool:
        return self.cache().remove(info)
