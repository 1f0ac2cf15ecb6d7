"""The abstract classes plugins implement, and the small records they exchange.

A plugin registers classes (by :class:`~mlexec_core.plugin.Registration`
record, imported when selected) through the registration hooks in
:mod:`mlexec_core.plugin.hookspecs`; mlexec instantiates them with a
:class:`Context` when a run needs them.  Every knob a plugin needs is on these
classes or on the frozen :class:`~mlexec_core.pipeline.plan.RunPlan`, so no
plugin has to reach into mlexec's internals.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import attrs
from attrs import frozen

from mlexec_core.pipeline.plan import RunPlan, RunRecord, RunStatus
from mlexec_core.project.model import Project
from mlexec_core.resources import Allocation, Resources  # noqa: F401  (public here for plugins)

if TYPE_CHECKING:
    from mlexec_core.pipeline.output import RunOutput
    from mlexec_core.plugin.manager import Plugins
    from mlexec_core.plugin.registration import Registration

#: Public names that live in :mod:`mlexec_core.plugin.process` (imported when first used).
_PROCESS_NAMES = frozenset({"ProcessLauncher", "ProcessExecution", "ExecutionJob", "stop_timeout", "shell",
                            "group_members"})


#: Helpers that live elsewhere in the core, public here (imported when first used).
_HELPERS = {"redact": ("mlexec_core.sources.urls", "redact"),
            "RunOutput": ("mlexec_core.pipeline.output", "RunOutput"),
            "echo_to_terminal": ("mlexec_core.pipeline.output", "echo_to_terminal"),
            "tracking_uri": ("mlexec_core.builtins.mlflow.store", "tracking_uri")}


def __getattr__(name: str) -> Any:
    if name in _PROCESS_NAMES:
        from mlexec_core.plugin import process

        return getattr(process, name)
    if name in _HELPERS:
        import importlib

        module, attr = _HELPERS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Reporter(Protocol):
    """How plugins talk to the user; rich on a terminal, plain lines when piped."""

    def info(self, message: str) -> None: ...
    def warning(self, message: str) -> None: ...
    def success(self, message: str) -> None: ...
    def status(self, message: str) -> contextlib.AbstractContextManager[Any]:
        """A spinner (terminal) or one line (piped) while a slow step runs."""
        ...


class SilentReporter:
    """A :class:`Reporter` that says nothing (the Python API's default)."""

    def info(self, message: str) -> None:
        pass

    warning = success = info

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        yield


class PluginRegistry:
    """What a plugin object sees of the loaded plugins (``self.context.plugins``): the
    classes every plugin registered, to find, load and create them by name (another
    plugin's image builder, environment manager ...).

    Not the plugin manager: a plugin cannot call hooks or register plugins through it.
    Each method is the same-named method of :class:`~mlexec_core.plugin.manager.Plugins`.
    """

    def __init__(self, plugins: Plugins) -> None:
        self._plugins = plugins

    def registered(self, kind: str) -> dict[str, Registration]:
        """Every name (and alias) of ``kind`` to its record; imports no class."""
        return self._plugins.registered(kind)

    def record(self, kind: str, name: str) -> Registration:
        """The record of ``name``; an unknown name is a ``PluginError`` (did you mean ...)."""
        return self._plugins.record(kind, name)

    def load(self, kind: str, name: str) -> type:
        """The class registered as ``name``, imported now."""
        return self._plugins.load(kind, name)

    def create(self, kind: str, name: str) -> Any:
        """A new instance of the class registered as ``name``, knowing its record."""
        return self._plugins.create(kind, name)

    def environment_managers(self) -> dict[str, type[EnvironmentManager]]:
        return self._plugins.environment_managers()

    def backends(self) -> dict[str, type[Backend]]:
        return self._plugins.backends()

    def image_builders(self) -> dict[str, type[ImageBuilder]]:
        return self._plugins.image_builders()

    def search_strategies(self) -> dict[str, type]:
        return self._plugins.search_strategies()

    def environment_manager(self, name: str) -> EnvironmentManager:
        return self._plugins.environment_manager(name)

    def backend(self, name: str) -> Backend:
        return self._plugins.backend(name)

    def image_builder(self, name: str | None = None) -> ImageBuilder:
        return self._plugins.image_builder(name)

    def search_strategy(self, name: str) -> Any:
        return self._plugins.search_strategy(name)

    def __repr__(self) -> str:
        return f"<PluginRegistry of {self._plugins!r}>"


@frozen
class Context:
    """What mlexec hands every plugin object it instantiates."""

    reporter: Reporter = attrs.field(factory=SilentReporter)
    #: The classes the loaded plugins registered, to find another plugin's environment
    #: managers or image builders (not the plugin manager itself).
    plugins: PluginRegistry | None = None
    #: The record of the class this object was created from (``None`` for an object made by hand).
    registration: Registration | None = None


class Registered:
    """What every class a plugin registers shares: mlexec creates it with ``cls(context)``,
    and it knows its :class:`~mlexec_core.plugin.Registration` record, the only place its
    name, description and capabilities are written."""

    def __init__(self, context: Context) -> None:
        self.context = context

    @property
    def registration(self) -> Registration:
        """The record this object was registered with (its name, capabilities ...)."""
        record = getattr(self.context, "registration", None)
        if record is None:
            raise AttributeError(f"this {type(self).__name__} was created without its Registration "
                                 "(mlexec creates it with one: Plugins.backend(name), environment_manager(name) ...)")
        return record

    @property
    def name(self) -> str:
        """The name it is registered (and selected) under: ``self.registration.name``."""
        return self.registration.name


# -- environments -------------------------------------------------------------------------


@frozen
class CommandSpec:
    """A process to start: a shell command, where, with what environment, and where its output goes."""

    command: str
    cwd: Path
    #: The complete environment of the process (not an overlay).
    env: Mapping[str, str]
    #: Only what the prepared environment and the run set on top of the inherited
    #: environment (``MLFLOW_RUN_ID`` ..., ``VIRTUAL_ENV``): what a container needs.
    added: Mapping[str, str] = attrs.field(factory=dict)
    #: The run's output (:class:`~mlexec_core.pipeline.output.RunOutput`): a launcher writes
    #: everything the command prints to it (``output.write(data, "stdout"|"stderr")``, or
    #: ``output.pump(pipe, stream)`` for a pipe).  ``None``: the command inherits mlexec's
    #: own stdout and stderr, and nothing is kept.
    output: RunOutput | None = attrs.field(default=None, eq=False, repr=False)
    #: The GPUs and cores this machine gave the job (the local backend's pool), for a
    #: launcher that must pass them on (a container's device requests); ``None``: nothing allocated.
    allocation: Allocation | None = None


class Execution(abc.ABC):
    """A started process (or container) that a backend supervises."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """Block until it ends (or ``timeout`` passes: ``None``); return the exit code."""

    @abc.abstractmethod
    def stop(self, signum: int, grace: float) -> None:
        """Deliver ``signum`` to all of it, and kill it if it is still there after ``grace`` s."""

    def cleanup(self) -> None:
        """Release what the execution holds (a stopped container...). Always called once."""

    def failure_reason(self, code: int) -> str | None:
        """Why it failed with ``code``, when it knows better than the code says (``rank 2 exited
        with status 3``); ``None``: the code says it all."""
        return None


class Launcher(abc.ABC):
    """Starts a :class:`CommandSpec` inside a prepared environment."""

    @abc.abstractmethod
    def start(self, spec: CommandSpec) -> Execution: ...

    def ranked(self, per_node: int) -> Launcher | None:
        """A launcher that starts a command as ``per_node`` processes of one node by itself (the
        docker manager's: all of them in one container), for ``processes-per-node``; ``None`` (the
        default): the backend starts this launcher once per rank (:mod:`mlexec_core.distributed`)."""
        return None


@frozen
class EnvironmentLock:
    """What an environment really contained, exactly enough to build it again: computed once
    per cached environment (when it is built) and copied into every run's record.

    ``kind`` says how to read ``text``:

    * ``"requirements"``: a requirements file ``uv pip sync`` accepts, every distribution
      pinned (``name==version``, or ``name @ URL`` for a file or a VCS checkout), the index
      options it was installed with first (``--index-url``, ``--find-links``);
    * ``"conda-explicit"``: conda's ``@EXPLICIT`` list, one package URL per line with its hash;
    * ``"docker-image"``: the image ID, and its repo digest when it came from a registry;
    * ``"python"``: the interpreter and its installed distributions, as ``requirements``
      (recorded, not enforced: the local environment manager installs nothing).
    """

    kind: str
    text: str
    #: Distribution or package name -> version, for ``mlexec diff``.
    packages: Mapping[str, str] = attrs.field(factory=dict)
    #: Anything else worth comparing: ``python`` (version), ``image_id``, ``repo_digest``, ``platform``.
    details: Mapping[str, str] = attrs.field(factory=dict)


@frozen
class PreparedEnvironment:
    """A ready environment, as returned by :meth:`EnvironmentManager.prepare`."""

    #: The value of the ``mlflow.project.env`` tag: "local", "virtualenv", "uv", "conda", "docker" ...
    name: str
    #: Variables to set for the command (for example ``VIRTUAL_ENV``).
    env: Mapping[str, str] = attrs.field(factory=dict)
    #: Directories put first on ``PATH`` (for example the environment's ``bin``).
    path_prepend: tuple[str, ...] = ()
    #: Variables removed from the inherited environment (for example ``VIRTUAL_ENV`` for a conda prefix).
    unset: tuple[str, ...] = ()
    #: Tags to set on the run (for example ``mlflow.docker.image.id``).
    tags: Mapping[str, str] = attrs.field(factory=dict)
    #: How to start the command; ``None`` means a plain process on this machine.
    launcher: Launcher | None = None
    #: Where the environment lives, for display.
    location: str | None = None
    #: What it contains, pinned (kept in every run's record; ``mlexec rerun`` builds from it).
    lock: EnvironmentLock | None = None


@frozen
class EnvironmentInfo:
    """One cached environment, for ``mlexec env list``."""

    manager: str
    name: str
    path: Path
    summary: str = ""
    size_bytes: int | None = None
    last_used: float | None = None
    in_use: bool = False


class EnvironmentManager(Registered, abc.ABC):
    """Prepares the environment a project's command runs in.

    Subclasses implement :meth:`prepare`; its name, aliases, the kinds it handles
    and is the default for are written in its :class:`~mlexec_core.plugin.Registration`.
    """

    def check(self, project: Project, requested_as: str) -> None:
        """Fast checks before any run exists (an interpreter found, a daemon up).

        Raise :class:`~mlexec_core.errors.MlexecError` to stop the run.
        """

    @abc.abstractmethod
    def prepare(self, plan: RunPlan) -> PreparedEnvironment:
        """Create (or reuse) the environment for ``plan`` and describe how to use it.

        Runs before the tracking run is created, so a failure here leaves no
        run behind.  Raise :class:`~mlexec_core.errors.EnvironmentBuildError`
        with the installer's own message.
        """

    def describe(self, project: Project) -> str:
        """One line on what :meth:`prepare` would do, for ``--dry-run``."""
        return self.name

    def dry_run(self, plan: RunPlan) -> Mapping[str, Any]:
        """What :meth:`prepare` would make of ``plan``, contacting nothing, for ``--dry-run``
        (a container's ``docker run`` options); warn through ``self.context.reporter`` as
        :meth:`prepare` would.  The default: nothing more than :meth:`describe`."""
        return {}

    def list_environments(self) -> Iterable[EnvironmentInfo]:
        """The environments this manager has cached (``mlexec env list``)."""
        return ()

    def remove_environment(self, info: EnvironmentInfo) -> bool:
        """Delete one cached environment (``mlexec env prune``); ``False`` if it is in use.

        :class:`mlexec_core.envcache.EnvironmentCache` implements both this and
        :meth:`list_environments` for managers that use it.
        """
        raise NotImplementedError


# -- images -------------------------------------------------------------------------------


@frozen
class ImageRef:
    """A built (and possibly pushed) image."""

    uri: str
    image_id: str | None = None
    #: ``sha256:...`` registry digest, once pushed.
    digest: str | None = None


class ImageBuilder(Registered, abc.ABC):
    """Builds an image holding the project and its environment."""

    @abc.abstractmethod
    def build(self, plan: RunPlan, *, repository: str | None = None, push: bool = False) -> ImageRef:
        """Build the image for ``plan`` (reusing an identical one), tag it in
        ``repository`` when given, and push it there when ``push`` is true."""


# -- backends -----------------------------------------------------------------------------


class SubmittedJob(abc.ABC):
    """A job a backend has started; mlexec waits on it and may cancel it."""

    @abc.abstractmethod
    def wait(self) -> RunStatus:
        """Block until the job ends; return FINISHED, FAILED or KILLED."""

    @abc.abstractmethod
    def get_status(self) -> RunStatus:
        """The current status, without blocking."""

    @abc.abstractmethod
    def cancel(self, signum: int | None = None) -> None:
        """Stop the job and everything it started. Safe to call more than once."""

    @property
    def tags(self) -> Mapping[str, str]:
        """Tags to set on the run once the job has started (image digest, job name ...).

        Each job's own: an empty dict, made on first use (so a subclass need not call
        ``super().__init__``), until the job assigns its own."""
        try:
            return self.__dict__["tags"]
        except KeyError:
            return self.__dict__.setdefault("tags", {})

    @tags.setter
    def tags(self, value: Mapping[str, str]) -> None:
        self.__dict__["tags"] = value

    #: Why the job failed, in one line, when it did (exit code, OOMKilled ...).
    failure_reason: str | None = None
    #: The exit code of the job's command, when there is one.
    exit_code: int | None = None
    #: Why the job should be started again into the same run, when it ended FAILED for a reason
    #: that is not its own (``"was preempted"``, ``"lost its node"``); ``None``: it should not.
    #: mlexec restarts it up to ``--max-restarts`` times.
    restart_reason: str | None = None
    #: While :meth:`get_status` is SCHEDULED (a batch scheduler has queued the job),
    #: the scheduler's reason in its own words (``Priority``, ``Resources`` ...).
    pending_reason: str | None = None
    #: Set by mlexec once the job is submitted; call :meth:`report_status`, not this.
    status_listener: Callable[[RunStatus], None] | None = None
    #: Set by mlexec once the job is submitted; call :meth:`report_restart`, not this.
    restart_listener: Callable[[str], bool] | None = None

    def report_restart(self, reason: str) -> bool:
        """Tell mlexec that the backend's scheduler started the job again by itself, into
        the same run: Slurm requeued it after a preemption, a Kubernetes Job made a new pod
        after a disruption.  ``reason`` in one line: ``"was preempted"``, ``"was requeued"``,
        ``"lost its node"``.

        mlexec counts the attempt as it counts the ones it starts itself: the output says
        so, :func:`~mlexec_core.plugin.hookspecs.mlexec_run_restarted` is called (trackers
        put the run back to SCHEDULED and tag ``mlexec.attempt``), and a later
        :meth:`report_status` (RUNNING) says the new attempt runs.  The job's own
        ``MLEXEC_ATTEMPT`` is the backend's to set (the attempt it was submitted as, in
        ``run.env``, plus the scheduler's restart count).

        Returns ``True`` when the restart may go on; ``False`` when it may not:
        ``--max-restarts`` is used up, the run is being stopped, or the run was not asked
        to restart at all (no listener: a job nobody follows).  Then the backend stops the
        job (scancel, delete) and its :meth:`wait` returns FAILED with ``reason`` as its
        :attr:`failure_reason`; mlexec adds why it did not restart (``was preempted;
        --max-restarts 3 used up``).  Safe from any thread.
        """
        listener = self.restart_listener
        return listener(reason) if listener is not None else False

    def report_status(self, status: RunStatus) -> None:
        """Tell mlexec the job is now SCHEDULED (queued) or RUNNING (started), so that
        trackers show a queued job as queued (:func:`mlexec_run_status`).  Terminal
        statuses are what :meth:`wait` returns, not reported here."""
        listener = self.status_listener
        if listener is not None and status in (RunStatus.SCHEDULED, RunStatus.RUNNING):
            listener(status)

    #: Creates each job's settle lock once (a subclass need not call ``super().__init__``).
    _settle_locks_guard = threading.Lock()
    #: The final status once :meth:`settle` has set it (read it as :attr:`settled`).
    _settled_status: RunStatus | None = None

    def settle(self, status: RunStatus, reason: str | None = None, exit_code: int | None = None) -> bool:
        """Record how the job ended, once: the first call wins, later calls change nothing.

        ``status`` is FINISHED, FAILED or KILLED.  Under a lock of this job, and only if
        no earlier call settled it: :attr:`settled` becomes ``status``, ``exit_code``
        (when given) becomes :attr:`exit_code`, ``reason`` becomes :attr:`failure_reason`
        unless the job FINISHED, and :attr:`pending_reason` is cleared.  Returns whether
        this call settled the job, so that the caller does what goes with the end
        (wake a waiting thread, tag the reason) only once.  Safe from any thread; works
        whether or not the subclass calls ``super().__init__``.
        """
        if not status.terminal:
            raise ValueError(f"settle() takes FINISHED, FAILED or KILLED, not {status.value}")
        with self._settle_lock():
            if self._settled_status is not None:
                return False
            if exit_code is not None:
                self.exit_code = exit_code
            if status is not RunStatus.FINISHED:
                self.failure_reason = reason
            self.pending_reason = None
            self._settled_status = status
        return True

    @property
    def settled(self) -> RunStatus | None:
        """The final status :meth:`settle` recorded, or ``None`` while the job has not ended."""
        return self._settled_status

    def _settle_lock(self) -> threading.Lock:
        lock = self.__dict__.get("_settle_lock_")
        if lock is None:
            with SubmittedJob._settle_locks_guard:
                lock = self.__dict__.setdefault("_settle_lock_", threading.Lock())
        return lock


class Backend(Registered, abc.ABC):
    """Where a run executes: this machine, a container host, a cluster.

    What it can do beyond :meth:`submit` is declared in its record's ``capabilities``:
    ``"detachable"`` (its jobs live on without mlexec: ``mlexec run --detach``, and
    :meth:`attach` picks a job up again for ``mlexec attach``, ``cancel``, ``logs``),
    ``"fan-out"`` (:meth:`submit_many`), ``"command-in-script"`` (the command is written
    into a script, not handed to a shell as one argument, so a command longer than the
    system lets one argument be is not refused).
    """

    def attach(self, run: RunRecord, tags: Mapping[str, str]) -> SubmittedJob:
        """The job of a run this backend submitted earlier, from the run's tags (those
        its :class:`SubmittedJob` set: a Job name, a namespace ...), without waiting.

        Only called when the record's ``capabilities`` hold ``"detachable"``.  ``run.output`` receives the job's
        output once :meth:`SubmittedJob.wait` follows it.  Raise
        :class:`~mlexec_core.errors.BackendError` when the job cannot be found or reached.
        """
        from mlexec_core.errors import BackendError

        raise BackendError(f"backend {self.name!r} cannot attach to a run it started earlier")

    def parse_config(self, config: Mapping[str, Any], base_dir: Path) -> Any:
        """Validate ``--backend-config`` (already parsed from JSON/YAML) and
        return what the backend wants in ``plan.backend_config``.

        Raise :class:`~mlexec_core.errors.UsageError` naming the key.  ``base_dir``
        is where relative paths in the config resolve from.
        """
        if config:
            from mlexec_core.errors import UsageError

            raise UsageError(
                f"backend {self.name!r} takes no configuration, but got keys {', '.join(map(repr, config))}",
                hint="remove --backend-config",
            )
        return {}

    def check(self, plan: RunPlan) -> None:
        """Fast checks before anything is prepared or any run exists (a client on
        PATH, a controller that answers, options the cluster accepts).

        Called by :func:`mlexec_core.pipeline.execute.prepare` before the
        environment is built; not called for ``--dry-run``.  Raise
        :class:`~mlexec_core.errors.MlexecError` to stop the run.
        """

    def environment_root(self, plan: RunPlan) -> Path | None:
        """Where environment managers must build the environment, when the machines
        that run the job need to see it (a cluster's shared filesystem).

        ``None`` (the default): the usual cache (``$MLEXEC_ENV_ROOT``).  Managers
        built on :class:`mlexec_core.envcache.EnvironmentCache` follow it.
        """
        return None

    def checkpoint_dir(self, plan: RunPlan, run: RunRecord) -> str:
        """The folder a run's attempts share (``MLEXEC_CHECKPOINT_DIR``), as the job sees it, when the
        run may be started again (``--restart-on-exit``, ``--max-restarts``): it belongs to the run and
        survives its attempts.  The default, for jobs of this machine: under mlexec's state folder
        (``$XDG_STATE_HOME/mlexec/runs/<run id>/checkpoints``), made here.  A cluster backend returns a
        folder every node sees (the shared folder)."""
        from mlexec_core.xdg import state_home

        folder = state_home() / "runs" / run.run_id / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    def uses_local_environment(self, plan: RunPlan) -> bool:
        """Whether mlexec should prepare the environment with the selected
        environment manager before :meth:`prepare` (true for the local backend)."""
        return True

    def prepare(self, plan: RunPlan, environment: PreparedEnvironment | None) -> Any:
        """Work done before the tracking run exists (build and push an image ...).

        Whatever it returns is passed to :meth:`submit`.
        """
        return environment

    @abc.abstractmethod
    def submit(self, plan: RunPlan, run: RunRecord, prepared: Any) -> SubmittedJob:
        """Start the job for ``plan`` attached to ``run``; return without waiting."""

    def submit_many(self, plan: RunPlan, children: Sequence[tuple[RunPlan, RunRecord]], prepared: Any,
                    max_parallel: int) -> Sequence[SubmittedJob]:
        """Start many children of one sweep at once, as one native submission; return
        without waiting, one :class:`SubmittedJob` per child, in the order given.

        Only called when the record's ``capabilities`` hold ``"fan-out"`` (a native
        fan-out: a Slurm job array ...; without it a sweep starts each child with
        :meth:`submit`), for the fixed children of a sweep
        (grid, random).  ``plan`` is the sweep's base plan (project, backend config);
        each child brings its own plan (its command) and its run, which already exists.
        ``prepared`` is what :meth:`prepare` returned, once for the whole sweep.  The
        backend must run at most ``max_parallel`` children at a time.  Each job is
        then a child like any other: its own ``wait()``, status (SCHEDULED through
        :meth:`SubmittedJob.report_status` until its task starts), output (to
        ``run.output``), tags and ``cancel()``, which stops that child only (a task
        that has not started yet is removed from the queue).  If it raises, nothing
        it submitted may be left queued or running.
        """
        raise NotImplementedError(f"backend {self.name!r} has no native fan-out")

    def dry_run_many(self, plan: RunPlan, children: Sequence[RunPlan], max_parallel: int) -> Mapping[str, Any]:
        """What :meth:`submit_many` would do for these children, for ``mlexec sweep --dry-run``
        (no side effects); a ``"text"`` entry is printed as it is.  Only called when the
        record's ``capabilities`` hold ``"fan-out"``."""
        return {}

    def dry_run(self, plan: RunPlan) -> Mapping[str, Any]:
        """What :meth:`submit` would do, for ``--dry-run`` (no side effects).

        A ``"text"`` entry (a manifest as YAML, say) is printed as it is after the
        plan; everything is in ``--dry-run --json``.
        """
        return {}


def command_env(base: Mapping[str, str], environment: PreparedEnvironment | None, run: RunRecord) -> dict[str, str]:
    """The complete environment for a job: ``base`` + the environment's variables + the run's."""
    import os

    env = dict(base)
    if environment is not None:
        for name in environment.unset:
            env.pop(name, None)
        env.update(environment.env)
        if environment.path_prepend:
            env["PATH"] = os.pathsep.join([*environment.path_prepend, env.get("PATH", "")])
    env.update(run.env)
    return env
