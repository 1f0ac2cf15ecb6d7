"""The ``virtualenv`` environment manager (alias ``uv``): cached uv virtualenvs.

The environment for a run is named by a hash of what decides its contents
(the interpreter's full version, build dependencies, requirement lines with
``-r`` files expanded, constraint files, the uv.lock, the manager, whether it
is seeded as ``python -m venv`` seeds, which ``--env-manager virtualenv`` asks
for and ``uv`` does not, and that its bytecode is compiled), and lives
in the shared :class:`~mlexec_core.envcache.EnvironmentCache`.  A hit costs a
few ``stat`` calls and no uv call at all; a miss builds a relocatable
virtualenv in a temporary folder under a file lock and renames it into place,
so concurrent runs build it once and a crash or Ctrl-C leaves nothing that
looks ready.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

from attrs import frozen

from mlexec_core.envcache import EnvironmentCache, env_root, spec_key
from mlexec_core.errors import EnvironmentBuildError
from mlexec_core.plugin.interfaces import EnvironmentInfo, EnvironmentManager, PreparedEnvironment, RunPlan
from mlexec_core.project.model import Project
from mlexec_virtualenv import interpreters as interp_mod
from mlexec_virtualenv.spec import PythonEnvSpec, read_spec

MANAGER = "virtualenv"
INTERPRETER_CACHE = ".interpreters.json"
#: The --env-manager name that asks for a lean environment: nothing seeded (as MLflow's uv manager).
LEAN = "uv"
#: What a seeded environment holds besides its requirements (``python -m venv``: ensurepip's wheels).
SEED = "venv (ensurepip's pip; setuptools before Python 3.12)"


def seeded(requested_as: str | None) -> bool:
    """``--env-manager virtualenv`` (or no manager named: MLflow's default is virtualenv) seeds; ``uv`` does not."""
    return requested_as != LEAN


@frozen
class Resolved:
    """A project's spec with its interpreter chosen and its cache key computed."""

    spec: PythonEnvSpec
    interpreter: interp_mod.Interpreter
    key: str
    summary: str
    #: What the key is a hash of (stored with the environment, for `mlexec env list --json`).
    key_spec: dict
    #: Seeded as ``python -m venv`` seeds (``--env-manager virtualenv``).
    seed: bool = False


#: check() and prepare() run on different manager objects of one process; resolve once per project.
_resolved: dict[tuple[int, bool], tuple[Project, Resolved]] = {}
#: The name check() was called with, per project: describe() (for --dry-run) is not told it.
_requested: dict[int, tuple[Project, str]] = {}


def _summary(spec: PythonEnvSpec, interp: interp_mod.Interpreter, seed: bool) -> str:
    parts = [f"python {interp.version}" + (" with venv's pip" if seed else "")]
    if spec.lock is not None:
        parts.append("uv.lock")
    reqs = [line for line in spec.dependencies if not line.startswith("-")]
    if reqs:
        text = ", ".join(reqs)
        parts.append(text if len(text) <= 60 else text[:57] + "...")
    elif spec.lock is None:
        parts.append("no requirements")
    return "; ".join(parts)


def resolve(project: Project, requested_as: str | None = MANAGER) -> Resolved:
    """Read the project's environment files and pick the interpreter (no installs).

    ``requested_as``: the ``--env-manager`` name used (``virtualenv`` seeds the environment, ``uv`` does not).
    """
    seed = seeded(requested_as)
    memo = _resolved.get((id(project), seed))
    if memo is not None and memo[0] is project:
        return memo[1]
    spec = read_spec(project)
    request = None
    where = str(spec.source) if spec.source else str(project.directory)
    if spec.python is not None:
        request = interp_mod.normalise_request(spec.python)
        if request is None:
            raise EnvironmentBuildError(f"python: {spec.python!r} is not a Python version", context=where,
                                        hint='write a version such as "3.11" or "3.11.7"')
    found = interp_mod.find_interpreters(cache_file=env_root() / INTERPRETER_CACHE)
    interp = interp_mod.choose(found, request)
    if interp is None:
        versions = ", ".join(sorted({i.version for i in found}, key=lambda v: tuple(map(int, v.split("."))))) \
            or "none"
        hint = f"install Python {request} (for example `pyenv install {request}`) or change python: in the file"
        if spec.python_was_number:
            hint += f"; YAML reads an unquoted {spec.python} as a number: quote it, as in python: \"3.10\""
        raise EnvironmentBuildError(
            f"no Python {request} on this machine (python: {spec.python}); found: {versions} "
            f"(on PATH and in pyenv's versions folder)",
            context=where, hint=hint,
        )
    key_spec = {
        "manager": MANAGER,
        "python": interp.version,
        "build_dependencies": list(spec.build_dependencies),
        "requirements": list(spec.dependencies),
        "constraints": [list(c) for c in spec.constraints],
        "uv.lock": spec.lock_digest,
        "seed": SEED if seed else None,
        "bytecode": "compiled",
    }
    resolved = Resolved(spec, interp, spec_key(key_spec), _summary(spec, interp, seed), key_spec, seed)
    if len(_resolved) > 32:  # a long-lived Python API process: keep the memo small
        _resolved.clear()
    _resolved[(id(project), seed)] = (project, resolved)
    return resolved


def _requested_for(project: Project) -> str:
    memo = _requested.get(id(project))
    return memo[1] if memo is not None and memo[0] is project else MANAGER


class VirtualenvManager(EnvironmentManager):
    """A cached uv virtualenv (registered, with its alias and what it handles, in :mod:`mlexec_virtualenv.plugin`)."""

    def cache(self) -> EnvironmentCache:
        return EnvironmentCache(MANAGER)

    def check(self, project: Project, requested_as: str) -> None:
        if len(_requested) > 32:
            _requested.clear()
        _requested[id(project)] = (project, requested_as)
        resolve(project, requested_as)

    def describe(self, project: Project) -> str:
        try:
            resolved = resolve(project, _requested_for(project))
        except Exception as exc:  # --dry-run shows the problem rather than failing on it
            return f"uv virtualenv ({exc})"
        cache = self.cache()
        state = "cached" if cache.is_ready(resolved.key) else "to be created"
        return f"uv virtualenv {cache.path_for(resolved.key).name} ({resolved.summary}; {state})"

    def prepare(self, plan: RunPlan) -> PreparedEnvironment:
        from mlexec_virtualenv.build import build_environment, uv_binary
        from mlexec_virtualenv.lock import read_lock, write_lock

        reporter = self.context.reporter
        if plan.environment_lock is not None:
            return self._prepare_from_lock(plan, plan.environment_lock)
        resolved = resolve(plan.project, plan.env_manager_requested)
        spec = resolved.spec
        if spec.dropped:
            reporter.warning(
                f"{spec.source.name}: a virtualenv installs only python= and the pip: list; "
                f"not installing the conda package{'s' if len(spec.dropped) > 1 else ''} {', '.join(spec.dropped)}"
            )
        cache = self.cache()
        key = resolved.key
        path = cache.path_for(key)
        if cache.is_ready(key) and not os.path.exists(path / "bin" / "python"):
            # the interpreter it was made from is gone (pyenv uninstall ...): make it again
            reporter.warning(f"environment {path.name} is broken (its Python is gone); creating it again")
            if not cache.remove(EnvironmentInfo(manager=MANAGER, name=path.name, path=path)):
                raise EnvironmentBuildError(f"environment {path.name} is broken and another run is using it",
                                            context=str(path), hint="try again when that run has ended")

        def build(target: Path) -> None:
            reporter.info(f"creating environment {path.name} ({resolved.summary})")
            started = time.monotonic()
            build_environment(target, plan.project, spec, resolved.interpreter, reporter, seed=resolved.seed)
            write_lock(uv_binary(), target, resolved.interpreter.version)  # what it contains, pinned, once
            reporter.info(f"created environment {path.name} in {time.monotonic() - started:.1f} s")

        def on_wait() -> None:
            reporter.info(f"waiting for another mlexec to finish building environment {path.name}")

        final, built = cache.ensure(key, build, summary=resolved.summary, spec=resolved.key_spec,
                                    relocatable=True, on_wait=on_wait)
        if not built:
            reporter.info(f"reusing environment {final.name}")
        lock = read_lock(final)
        if lock is None:  # built before mlexec recorded locks
            lock = write_lock(uv_binary(), final, resolved.interpreter.version)
        return PreparedEnvironment(
            lock=lock,
            name=plan.env_manager_requested,
            env={"VIRTUAL_ENV": str(final)},
            path_prepend=(str(final / "bin"),),
            location=str(final),
        )

    def dry_run(self, plan: RunPlan) -> dict:
        lock = plan.environment_lock
        if lock is None:
            return {}
        import hashlib

        from mlexec_virtualenv.lock import KIND

        key = spec_key({"manager": MANAGER, "python": lock.details.get("python"),
                        "seed": SEED if seeded(plan.env_manager_requested) else None,
                        "lock": hashlib.sha256(lock.text.encode()).hexdigest(), "bytecode": "compiled"})
        state = "cached" if self.cache().is_ready(key) else "to be built"
        return {"from_lock": f"{lock.kind} lock of {len(lock.packages)} distributions, python "
                             f"{lock.details.get('python')}: {self.cache().path_for(key).name} ({state})"
                             + ("" if lock.kind == KIND else f"; a {lock.kind} lock cannot be used here")}

    def _prepare_from_lock(self, plan: RunPlan, lock) -> PreparedEnvironment:
        """The environment a recorded run had, built again from its lock (``mlexec rerun``): a
        content-addressed environment named by the lock, reused by every rerun of it."""
        import hashlib

        from mlexec_virtualenv.build import build_from_lock, uv_binary
        from mlexec_virtualenv.lock import KIND, read_lock, write_lock

        if lock.kind != KIND:
            raise EnvironmentBuildError(f"the recorded environment is a {lock.kind} lock; the virtualenv manager "
                                        f"builds from {KIND} locks", hint="rerun with the manager the run used")
        reporter = self.context.reporter
        version = lock.details.get("python")
        found = interp_mod.find_interpreters(cache_file=env_root() / INTERPRETER_CACHE)
        interp = interp_mod.choose(found, version) if version else None
        if interp is None:
            raise EnvironmentBuildError(
                f"the run's environment had Python {version or '(not recorded)'}, and this machine has none: "
                f"found {', '.join(sorted({i.version for i in found})) or 'none'}",
                hint=f"install Python {version} (for example `pyenv install {version}`)")
        seed = seeded(plan.env_manager_requested)
        key_spec = {"manager": MANAGER, "python": interp.version, "seed": SEED if seed else None,
                    "lock": hashlib.sha256(lock.text.encode()).hexdigest(), "bytecode": "compiled"}
        key = spec_key(key_spec)
        summary = f"python {interp.version}; recorded: {len(lock.packages)} distributions"
        cache = self.cache()
        path = cache.path_for(key)

        def build(target: Path) -> None:
            reporter.info(f"creating environment {path.name} from the recorded lock ({summary})")
            build_from_lock(target, plan.project, lock.text, interp, reporter, seed=seed)
            write_lock(uv_binary(), target, interp.version)

        final, built = cache.ensure(key, build, summary=summary, spec=key_spec, relocatable=True,
                                    on_wait=lambda: reporter.info(f"waiting for another mlexec to finish "
                                                                  f"building environment {path.name}"))
        if not built:
            reporter.info(f"reusing environment {final.name} (the recorded one, built again)")
        return PreparedEnvironment(name=plan.env_manager_requested, env={"VIRTUAL_ENV": str(final)},
                                   path_prepend=(str(final / "bin"),), location=str(final),
                                   lock=read_lock(final) or lock)

    def list_environments(self) -> Iterable[EnvironmentInfo]:
        return self.cache().list()

    def remove_environment(self, info: EnvironmentInfo) -> bool:
        return self.cache().remove(info)
