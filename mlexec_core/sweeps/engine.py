"""Running a sweep: one prepared environment, a parent run, children within a bound.

:func:`plan_sweep` does everything that can go wrong with the input (the
project, the values against the declared types, the backend config, the
strategy) before anything exists.  :class:`Sweep` then prepares the
environment (or image) once, creates the parent run, and starts children in
this process through :func:`mlexec_core.pipeline.execute.start`, never more
than ``max_parallel`` at once, each with its own plan and its own run
(``mlflow.parentRunId`` set).  Every child run and the parent end FINISHED,
FAILED or KILLED, whatever happens.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs
from attrs import frozen

from mlexec_core.errors import MlexecError, ParameterError, UsageError
from mlexec_core.pipeline.options import RunOptions
from mlexec_core.pipeline.plan import RunPlan, RunRecord, RunStatus, TrackingOptions
from mlexec_core.sweeps import tracking as T
from mlexec_core.sweeps.spec import SweepSpec, check_domain
from mlexec_core.sweeps.strategy import SearchStrategy, TrialResult, draw

#: Backends whose jobs run on this machine: their default bound is the number of cores.
_LOCAL_BACKENDS = ("local", "docker")
#: The default bound for any other backend (a cluster queues what it cannot run).
REMOTE_DEFAULT_PARALLEL = 4
#: Lines of a failed child's output shown when it fails.
FAILURE_TAIL = 10


def default_parallelism(backend: Any) -> int:
    """``--max-parallel`` when not given: a backend's ``sweep_max_parallel`` if it sets one,
    else the number of cores for backends that run on this machine, else 4."""
    value = getattr(backend, "sweep_max_parallel", None)
    if isinstance(value, int) and value > 0:
        return value
    if getattr(backend, "name", "") in _LOCAL_BACKENDS:
        return max(1, os.cpu_count() or 1)
    return REMOTE_DEFAULT_PARALLEL


def machine_capacity(plan: RunPlan) -> int | None:
    """How many children of ``plan``'s resources this machine runs at once, for the local backend
    (``None``: no bound from resources).  Children beyond it would only wait for their share."""
    if plan.backend != "local" or not (plan.resources.gpus or plan.resources.cpus or plan.resources.memory):
        return None
    from mlexec_core.allocation import capacity

    fits = capacity(plan.resources)
    return None if fits is None else max(1, fits)


def entry_point_fingerprint(plan: RunPlan) -> dict[str, Any]:
    ep = plan.entry_point
    return {"name": ep.name, "command": ep.command,
            "parameters": {n: {"type": p.type.value, "default": None if p.default is None else str(p.default)}
                           for n, p in ep.parameters.items()}}


# -- planning ------------------------------------------------------------------------------


@frozen
class SweepPlan:
    """A sweep checked and ready to run: nothing exists yet."""

    spec: SweepSpec
    strategy_name: str
    #: The plan of a child with representative values: project, backend, environment.
    base: RunPlan
    max_parallel: int
    #: The children, when the strategy knows them in advance (grid, random): (params, plan).
    children: tuple[tuple[Mapping[str, str], RunPlan], ...] | None
    options: Mapping[str, Any]
    cwd: Path
    #: ``--resume``: what the earlier attempt left.
    earlier: T.EarlierSweep | None = None


def child_plan(base: RunPlan, params: Mapping[str, str], cwd: Path, backend, *,
               tags: Mapping[str, str] | None = None, run_name: str | None = None) -> RunPlan:
    """``base`` with ``params``: resolved, rendered and checked as ``mlexec run`` would, reusing the
    loaded project (``backend``: the plan's :class:`~mlexec_core.plugin.interfaces.Backend`)."""
    from mlexec_core.pipeline.resolve import check_command_size, resolve_parameters
    from mlexec_core.project.params import render_command

    given = {n: v for n, v in params.items()}
    values, extra = resolve_parameters(base.entry_point, given, base.project.directory, cwd)
    command = render_command(base.entry_point.command, {n: p.value for n, p in values.items()}, extra)
    check_command_size(command, base.entry_point.name, {**{n: p.value for n, p in values.items()}, **extra},
                       as_argument="command-in-script" not in backend.registration.capabilities)
    tracking = attrs.evolve(base.tracking, run_name=run_name, run_id=None,
                            tags={**base.tracking.tags, **(tags or {})})
    return attrs.evolve(base, parameters=values, extra_parameters=extra, command=command, tracking=tracking)


def plan_sweep(plugins, options: RunOptions, spec: SweepSpec, *, strategy: str | None = None,
               resume: str | None = None, cwd: Path | None = None) -> SweepPlan:
    """Check everything; raise :class:`MlexecError` on the first problem.  Creates nothing.

    ``options`` are every child's (its ``parameters`` and ``entry_point`` are the spec's);
    with ``resume``, what they leave out is taken from the earlier sweep."""
    from mlexec_core.builtins.mlflow.store import tracking_uri
    from mlexec_core.pipeline.resolve import resolve_plan

    cwd = Path(cwd or os.getcwd())
    earlier = None
    uri = options.uri
    if resume:
        earlier = T.read_sweep(tracking_uri(), resume)
        stored = SweepSpec.from_json(earlier.spec_json)
        _compare_specs(stored, spec)
        spec = attrs.evolve(stored, max_parallel=spec.max_parallel or stored.max_parallel,
                            max_failures=spec.max_failures if spec.max_failures is not None else stored.max_failures,
                            fail_fast=spec.fail_fast or stored.fail_fast, retries=spec.retries or stored.retries,
                            resources={**stored.resources, **spec.resources})
        opts = earlier.options
        if uri is not None and opts.get("uri") and uri != opts["uri"] \
                and os.path.abspath(os.path.join(cwd, uri)) != opts["uri"]:
            raise UsageError(f"--resume {resume}: the sweep ran {opts['uri']}, not {uri}",
                             hint="leave out the URI to resume the same project")
        options = options.evolve(
            uri=opts.get("uri") if uri is None else uri,
            version=options.version or opts.get("version"),
            backend=options.backend or opts.get("backend"),
            backend_config=options.backend_config if options.backend_config is not None
            else opts.get("backend_config"),
            env_manager=options.env_manager or opts.get("env_manager"),
            docker_args=options.docker_args or opts.get("docker_args") or (),
            resources=options.resources or opts.get("resources") or (),
            build_image=options.build_image or bool(opts.get("build_image")),
            restart_on_exit=options.restart_on_exit or opts.get("restart_on_exit"),
            max_restarts=options.max_restarts if options.max_restarts is not None else opts.get("max_restarts"),
            experiment_id=earlier.experiment_id, experiment_name=None)
        uri = options.uri
    if uri is None:
        raise UsageError("mlexec sweep needs the project URI", hint="mlexec sweep . -P lr=0.1,0.2")
    options = options.evolve(backend=options.backend or "local", entry_point=spec.entry_point, run_id=None,
                             resources=_resource_options(spec.resources, options.resources))

    name = strategy or spec.strategy or ("random" if spec.sampled else "grid")
    strat = plugins.search_strategy(name)  # an unknown name: a PluginError listing what is installed
    record = strat.registration
    spec = attrs.evolve(spec, strategy=record.name)
    if spec.seed is None:  # recorded, so that --resume draws the same children
        spec = attrs.evolve(spec, seed=random.SystemRandom().randrange(2**31))
    adaptive = "adaptive" in record.capabilities
    if adaptive and not spec.metric:
        raise UsageError(f"the {record.name} strategy learns from results: it needs --metric NAME",
                         hint="the metric each child logs with mlflow.log_metric, and --goal minimize|maximize")
    if "finite" not in record.capabilities and spec.trials is None:
        raise UsageError(f"the {record.name} strategy needs --trials N (how many children to run)")
    strat.check(spec)

    # Representative values, so the project, the backend and its config are checked once.
    rng = random.Random(0)
    base_values = {n: draw(d, rng) for n, d in spec.parameters.items()}
    experiment_name = options.experiment_name or (
        None if options.experiment_id else os.environ.get("MLFLOW_EXPERIMENT_NAME") or None)
    experiment_id = options.experiment_id or (
        None if experiment_name else os.environ.get("MLFLOW_EXPERIMENT_ID") or None)
    options = options.evolve(experiment_name=experiment_name, experiment_id=experiment_id)
    try:
        base = resolve_plan(plugins, options.evolve(parameters=base_values, run_name=None), cwd=cwd)
    except ParameterError:
        # say it about the values the user gave, not about the representative one
        from mlexec_core.pipeline.resolve import entry_point_for, load_project_reporting
        from mlexec_core.pipeline.source import fetch

        project = load_project_reporting(
            fetch(uri, options.version, cwd, reporter=plugins.context.reporter).directory, plugins.context.reporter)
        ep = entry_point_for(project, spec.entry_point)
        for pname, domain in spec.parameters.items():
            check_domain(pname, domain, ep)
        raise
    for pname, domain in spec.parameters.items():
        check_domain(pname, domain, base.entry_point)
    if earlier is not None:
        before, now = earlier.entry_point, entry_point_fingerprint(base)
        if before and before != now:
            raise UsageError(f"--resume {resume}: entry point {now['name']!r} changed since the sweep started: "
                             f"{_difference(before, now)}", hint="start a new sweep for the changed project")

    children = None
    if not adaptive:
        strat.start(spec, ())
        children = []
        backend_obj = plugins.backend(base.backend)
        while (params := strat.ask()) is not None:
            children.append((dict(params), child_plan(base, params, cwd, backend_obj)))
    parallel = spec.max_parallel or default_parallelism(plugins.backend(base.backend))
    fits = machine_capacity(base)
    if fits is not None and fits < parallel:
        if spec.max_parallel:
            plugins.context.reporter.info(
                f"at most {fits} children at once: this machine has room for {fits} with "
                f"{base.resources} each (--max-parallel {spec.max_parallel})")
        parallel = fits
    local = os.path.join(cwd, uri)
    backend_config = options.backend_config
    if isinstance(backend_config, str) and os.path.isfile(os.path.join(cwd, backend_config)):
        recorded_config: Any = os.path.abspath(os.path.join(cwd, backend_config))  # --resume from anywhere
    elif backend_config is None or isinstance(backend_config, str):
        recorded_config = backend_config
    else:
        recorded_config = dict(backend_config)
    docker_args = options.docker_args
    recorded = {"uri": os.path.abspath(local) if os.path.isdir(local) else uri,
                "version": options.version, "backend": base.backend, "backend_config": recorded_config,
                "env_manager": options.env_manager,
                "docker_args": dict(docker_args) if isinstance(docker_args, Mapping) else list(docker_args),
                "resources": dict(options.resources) if isinstance(options.resources, Mapping)
                else list(options.resources), "build_image": bool(options.build_image),
                "run_name": options.run_name, "max_restarts": options.max_restarts,
                "restart_on_exit": ",".join(map(str, sorted(base.restarts.exit_codes))) or None}
    return SweepPlan(spec, record.name, base, parallel, tuple(children) if children is not None else None,
                     recorded, cwd, earlier)


def _resource_options(from_file: Mapping[str, Any],
                      given: Mapping[str, Any] | Sequence[str]) -> Mapping[str, Any] | Sequence[str]:
    """The sweep file's ``resources:``, then ``-R`` (or the API's mapping) over it, key by key."""
    from mlexec_core.pipeline.resolve import parse_pairs
    from mlexec_core.resources import canonical_key

    if not from_file:  # as given, so that a mistake is reported as the user wrote it (-R ...)
        return given
    merged = {canonical_key(k) or k: v for k, v in from_file.items()}
    extra = given if isinstance(given, Mapping) else parse_pairs(given, "-R")
    merged.update({canonical_key(k) or k: v for k, v in extra.items()})
    return merged


def _compare_specs(stored: SweepSpec, given: SweepSpec) -> None:
    """On ``--resume``, what the user gave again must be what the sweep was; what was left out is taken."""
    a, b = stored.search_key(), given.search_key()
    for key in a:
        not_given = b[key] in (None, {}) or (key, b[key]) in (("goal", "minimize"), ("entry_point", "main"))
        if a[key] != b[key] and not not_given:
            if key == "parameters":
                both = sorted(set(a[key]) & set(b[key]))
                for name in both + sorted((set(a[key]) | set(b[key])) - set(both)):
                    if a[key].get(name) != b[key].get(name):
                        was = stored.parameters[name].text if name in stored.parameters else "(not swept)"
                        now = given.parameters[name].text if name in given.parameters else "(not swept)"
                        raise UsageError(f"the sweep spec changed: parameter {name} was {was}, is now {now}",
                                         hint="leave out -P and --sweep-file to resume the sweep as it was")
            raise UsageError(f"the sweep spec changed: {key} was {a[key]!r}, is now {b[key]!r}",
                             hint="leave it out to resume the sweep as it was")


def _difference(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    if before.get("command") != now.get("command"):
        return f"its command was {before.get('command')!r}, is now {now.get('command')!r}"
    bp, np_ = before.get("parameters", {}), now.get("parameters", {})
    for name in sorted(set(bp) | set(np_)):
        if bp.get(name) != np_.get(name):
            def show(p):
                return "not declared" if p is None else f"{p['type']}, default {p['default']}"
            return f"parameter {name} was {show(bp.get(name))}, is now {show(np_.get(name))}"
    return "its declaration differs"


# -- running -------------------------------------------------------------------------------


class Child:
    """One child run (one attempt of one trial)."""

    def __init__(self, number: int, attempt: int, params: Mapping[str, str], plan: RunPlan) -> None:
        self.number = number
        self.attempt = attempt
        self.params = dict(params)
        self.plan = plan
        self.run_id: str | None = None
        self.status: str = "QUEUED"
        self.value: float | None = None
        self.started: float | None = None
        self.ended: float | None = None
        self.exit_code: int | None = None
        self.reason: str | None = None
        self.tail: list[str] = []
        self.submitted = None
        self.output = None
        #: True for a child that finished in an earlier attempt at this sweep (``--resume``).
        self.earlier = False
        #: True for a child started through the backend's native fan-out (``Backend.submit_many``).
        self.fanned = False
        self.duration_earlier: float | None = None
        #: Its job is over (nothing of it runs); its end may still be being recorded.
        self.job_done = False

    @property
    def duration(self) -> float | None:
        if self.earlier:
            return self.duration_earlier
        if self.started is None:
            return None
        return (self.ended or time.monotonic()) - self.started

    @property
    def last_line(self) -> str:
        out = self.output
        return getattr(out, "last_line", "") or "" if out is not None else ""

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.number, "attempt": self.attempt, "run_id": self.run_id, "params": self.params,
                "status": self.status, "metric": self.value,
                "duration_s": None if self.duration is None else round(self.duration, 3),
                "exit_code": self.exit_code, "reason": self.reason, "resumed": self.earlier}


class Events:
    """What a sweep tells whoever shows it; the default says nothing."""

    def started(self, sweep: "Sweep") -> None: ...
    def child_started(self, sweep: "Sweep", child: Child) -> None: ...
    def child_ended(self, sweep: "Sweep", child: Child) -> None: ...
    def child_failed(self, sweep: "Sweep", child: Child, retrying: bool) -> None: ...
    def stopping(self, sweep: "Sweep", why: str) -> None: ...
    def tick(self, sweep: "Sweep") -> None: ...
    def ended(self, sweep: "Sweep") -> None: ...


def _new_output():
    """A child's output: kept with its run, shown only through the sweep's own view."""
    from mlexec_core.pipeline.output import RunOutput

    return RunOutput(echo=None)


class Sweep:
    """A running (or finished) sweep.  :meth:`run` blocks; :meth:`stop` may be called from anywhere."""

    def __init__(self, plugins, plan: SweepPlan, events: Events | None = None) -> None:
        self.plugins = plugins
        self.plan = plan
        self.spec = plan.spec
        self.events = events or Events()
        self.children: list[Child] = []  # every attempt, in start order (and earlier ones on resume)
        self.running: dict[int, Child] = {}
        self.parent: RunRecord | None = None
        self.parent_plan: RunPlan | None = None
        self.status: RunStatus | None = None
        self.reason: str | None = None
        self.stop_signal: int | None = None
        self.stop_reason: str | None = None
        self.no_more = False  # --max-failures reached: start nothing new
        self.failures = 0
        self.queued_total: int | None = None
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.prepared = None

    # -- counts for views --------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._lock:
            children = list(self.children)
        finals = self._finals(children)
        with self._lock:
            running = list(self.running.values())
        waiting = sum(1 for c in running if c.fanned and c.submitted is not None
                      and c.submitted.get_status() is RunStatus.SCHEDULED)
        out = {"running": len(running) - waiting,
               "finished": sum(1 for c in finals if c.status == "FINISHED"),
               "failed": sum(1 for c in finals if c.status == "FAILED"),
               "killed": sum(1 for c in finals if c.status == "KILLED")}
        total = self.queued_total
        started = len({c.number for c in children})
        out["queued"] = (max(0, total - started) if total is not None and not self.stopped else 0) + waiting
        return out

    @property
    def stopped(self) -> bool:
        return self.stop_signal is not None or self.stop_reason is not None

    @staticmethod
    def _finals(children: Sequence[Child]) -> list[Child]:
        last: dict[int, Child] = {}
        for c in children:
            if c.status in ("FINISHED", "FAILED", "KILLED"):
                if c.number not in last or c.attempt >= last[c.number].attempt:
                    last[c.number] = c
        return list(last.values())

    def results(self) -> list[Child]:
        """The last attempt of every trial that ended, best first when there is a metric."""
        finals = self._finals(self.children)
        sign = -1 if self.spec.goal == "maximize" else 1
        return sorted(finals, key=lambda c: (c.value is None, sign * c.value if c.value is not None else 0, c.number))

    def best(self) -> Child | None:
        if not self.spec.metric:
            return None
        for c in self.results():
            if c.status == "FINISHED" and c.value is not None:
                return c
        return None

    # -- control ---------------------------------------------------------------------------

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Start nothing more, stop every running child (they and the parent end KILLED).
        A second call kills the children at once."""
        again = self.stop_signal is not None
        self.stop_signal = signum
        with self._lock:
            running = [c for c in self.running.values() if c.submitted is not None]
        sig = signal.SIGKILL if again else (signal.SIGTERM if signum == signal.SIGHUP else signum)
        for child in running:
            threading.Thread(target=child.submitted.cancel, args=(sig,), daemon=True).start()
        self._events.put(None)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    # -- the run ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """The environment (or image) for every child, once.  Nothing is tracked yet."""
        from mlexec_core.pipeline.execute import prepare

        self.prepared = prepare(self.plugins, self.plan.base)

    def run(self) -> RunStatus:
        """Prepare (unless done), create the parent run, run the children, end the parent."""
        try:
            if self.prepared is None:
                self.prepare()
            self._create_parent()
            try:
                self._schedule()
            except BaseException as exc:
                self.stop(signal.SIGTERM)
                self._drain()
                self._end_parent(RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED,
                                 f"{type(exc).__name__}: {exc}".rstrip(": "))
                raise
            self._end_parent(*self._outcome())
            self.events.ended(self)
            return self.status
        finally:
            self._done.set()

    def _create_parent(self) -> None:
        spec_json = self.spec.to_json()
        if len(spec_json) > 7900:
            raise UsageError(f"the sweep spec is {len(spec_json)} characters; the parent run can record 7900",
                             hint="use ranges instead of long lists")
        earlier = self.plan.earlier
        base = self.plan.base
        tags = {T.PARENT_TAG: "parent", T.SPEC_TAG: spec_json,
                T.OPTIONS_TAG: json.dumps(self.plan.options, sort_keys=True)[:7900],
                T.ENTRY_POINT_TAG: json.dumps(entry_point_fingerprint(base), sort_keys=True)[:7900]}
        params = {f"sweep.{n}": d.text[:6000] for n, d in self.spec.parameters.items()}
        params["sweep.strategy"] = self.plan.strategy_name
        tracking = TrackingOptions(experiment_name=base.tracking.experiment_name,
                                   experiment_id=base.tracking.experiment_id,
                                   run_name=self.plan.options.get("run_name"),
                                   run_id=earlier.run_id if earlier else None, tags=tags)
        self.parent_plan = attrs.evolve(base, parameters={}, extra_parameters=params,
                                        command=f"mlexec sweep ({self.plan.strategy_name})", tracking=tracking)
        self.parent = self.plugins.run_create(self.parent_plan) \
            or RunRecord(run_id=os.urandom(16).hex())
        self.plugins.run_started(run=self.parent, plan=self.parent_plan)
        base_tags = {"mlflow.parentRunId": self.parent.run_id, T.PARENT_TAG: self.parent.run_id}
        self._child_tags = base_tags
        if self.parent.experiment_id:  # children go where the parent went
            self.plan = attrs.evolve(self.plan, base=attrs.evolve(base, tracking=attrs.evolve(
                base.tracking, experiment_id=self.parent.experiment_id, experiment_name=None)))

    def _end_parent(self, status: RunStatus, reason: str | None) -> None:
        if self.status is not None:
            return
        self.status, self.reason = status, reason
        if self.parent is None:
            return
        counts = self.counts()
        tags = {T.COUNTS_TAG: json.dumps({k: counts[k] for k in ("finished", "failed", "killed")})}
        best = self.best()
        if best is not None:
            tags[T.BEST_RUN_TAG] = best.run_id or ""
            tags[T.BEST_VALUE_TAG] = repr(best.value)
        self.plugins.run_tags(run=self.parent, tags=tags)
        self.plugins.run_finished(run=self.parent, plan=self.parent_plan, status=status, reason=reason)

    def _outcome(self) -> tuple[RunStatus, str | None]:
        counts = self.counts()
        if self.stop_signal is not None:
            return RunStatus.KILLED, f"stopped by {signal.Signals(self.stop_signal).name}"
        if self.stop_reason:
            return RunStatus.FAILED, self.stop_reason
        if counts["failed"] or counts["killed"]:
            return RunStatus.FAILED, f"{counts['failed'] + counts['killed']} of {len(self._finals(self.children))} " \
                                     "children did not finish"
        return RunStatus.FINISHED, None

    def _history(self) -> tuple[list[TrialResult], dict[int, int], int]:
        """From an earlier attempt (``--resume``): results, the last attempt per trial, the next trial number."""
        earlier = self.plan.earlier
        if earlier is None:
            return [], {}, 0
        history, attempts = [], {}
        metric = self.spec.metric
        for ec in earlier.children:
            attempts[ec.trial] = max(attempts.get(ec.trial, 0), ec.attempt)
        for ec in earlier.children:
            if ec.status == "FINISHED":
                child = Child(ec.trial, ec.attempt, {k: v for k, v in ec.params.items()}, self.plan.base)
                child.run_id, child.status, child.earlier = ec.run_id, "FINISHED", True
                child.value = ec.metrics.get(metric) if metric else None
                child.duration_earlier = ec.duration
                self.children.append(child)
                history.append(TrialResult(child.params, "FINISHED", child.value, ec.run_id))
            elif ec.status == "RUNNING":  # its mlexec died: the run must not stay RUNNING
                self._end_stale(ec.run_id)
        next_number = max((ec.trial for ec in earlier.children), default=-1) + 1
        return history, attempts, next_number

    def _end_stale(self, run_id: str) -> None:
        record = RunRecord(run_id=run_id, tracking_uri=self.parent.tracking_uri, tracker=self.parent.tracker)
        self.plugins.run_finished(run=record, plan=self.plan.base, status=RunStatus.FAILED,
                                  reason="its sweep stopped before it ended (mlexec exited); rerun by --resume")

    def _schedule(self) -> None:
        strategy = self.plugins.search_strategy(self.plan.strategy_name)
        history, attempts, next_number = self._history()
        done_numbers = {c.number for c in self.children if c.earlier}
        adaptive = self.plan.children is None
        strategy.start(self.spec, history)
        if adaptive:
            self.queued_total = max(0, (self.spec.trials or 0) - len(history)) + len(done_numbers)
            planned = None
        else:
            planned = iter(enumerate(self.plan.children))
            self.queued_total = len(self.plan.children)
        retry: list[Child] = []
        self.events.started(self)
        cwd = self.plan.cwd
        exhausted = False
        if planned is not None and self.fan_out():
            self._start_many([Child(number, attempts.get(number, 0) + 1, params, plan)
                              for number, (params, plan) in planned if number not in done_numbers], cwd)
            exhausted = True  # retries, if any, are started one by one below, within the bound
        while True:
            while (not self.stopped and not self.no_more and self._busy() < self.plan.max_parallel
                   and (retry or not exhausted)):
                if retry:
                    prev = retry.pop(0)
                    child = Child(prev.number, prev.attempt + 1, prev.params, prev.plan)
                elif planned is not None:
                    item = next(planned, None)
                    if item is None:
                        exhausted = True
                        break
                    number, (params, plan) = item
                    if number in done_numbers:
                        continue
                    child = Child(number, attempts.get(number, 0) + 1, params, plan)
                else:
                    params = strategy.ask()
                    if params is None:
                        exhausted = True
                        break
                    number, next_number = next_number, next_number + 1
                    child = Child(number, 1, params, None)  # planned below
                self._start_child(child, cwd)
            if not self.running and (self.stopped or self.no_more or (exhausted and not retry)):
                break
            try:
                item = self._events.get(timeout=0.25)
            except queue.Empty:
                self.events.tick(self)
                continue
            if item is None:
                continue
            self._ended(item, strategy, retry)

    def _busy(self) -> int:
        """Children whose job still runs (a child whose end is being recorded no longer counts)."""
        with self._lock:
            return sum(1 for c in self.running.values() if not c.job_done)

    def fan_out(self) -> bool:
        """Whether the fixed children go to the backend as one native submission
        (:meth:`~mlexec_core.plugin.interfaces.Backend.submit_many`)."""
        return "fan-out" in self.plugins.registered("backend")[self.plan.base.backend].capabilities

    def _plan_child(self, child: Child, cwd: Path) -> bool:
        """The child's own plan (tags, name); a value the entry point refuses fails it, nothing ran."""
        tags = {**self._child_tags, T.TRIAL_TAG: str(child.number), T.ATTEMPT_TAG: str(child.attempt)}
        parent_name = self.parent.run_name or "sweep"
        name = f"{parent_name}-{child.number}" + (f"-attempt{child.attempt}" if child.attempt > 1 else "")
        try:
            child.plan = child_plan(self.plan.base, child.params, cwd, self.plugins.backend(self.plan.base.backend),
                                    tags=tags, run_name=name)
        except MlexecError as exc:
            child.status, child.reason = "FAILED", str(exc).splitlines()[0]
            with self._lock:
                self.children.append(child)
            self._events.put(child)
            return False
        return True

    def _start_many(self, children: list[Child], cwd: Path) -> None:
        """Every fixed child at once, through the backend's fan-out; the backend keeps the bound."""
        from mlexec_core.pipeline.execute import start_many

        children = [c for c in children if self._plan_child(c, cwd)]
        if not children or self.stopped:
            return
        for child in children:
            child.output = _new_output()
            child.status = "RUNNING"
            child.fanned = True
        try:
            submitted = start_many(self.plugins, self.plan.base, [c.plan for c in children], self.prepared,
                                   outputs=[c.output for c in children], max_parallel=self.plan.max_parallel)
        except MlexecError as exc:  # the backend refused them (their runs ended FAILED)
            now = time.monotonic()
            with self._lock:
                self.children.extend(children)
            for child in children:
                child.started = child.ended = now
                child.status, child.reason = "FAILED", str(exc).splitlines()[0]
            self.stop_reason = f"the backend refused the sweep's children: {str(exc).splitlines()[0]}"
            self.events.stopping(self, self.stop_reason)
            return
        now = time.monotonic()
        with self._lock:
            for child, sub in zip(children, submitted):
                child.started, child.submitted, child.run_id = now, sub, sub.run_id
                self.children.append(child)
                self.running[id(child)] = child
        for child in children:
            if self.stop_signal is not None:  # a signal arrived while they were submitted
                threading.Thread(target=child.submitted.cancel, args=(self.stop_signal,), daemon=True).start()
            self.events.child_started(self, child)
            threading.Thread(target=self._watch, args=(child,), name=f"mlexec-sweep-{child.number}",
                             daemon=True).start()

    def _cancel_queued(self) -> None:
        """--max-failures with a fan-out: the children the backend has not started yet are cancelled."""
        with self._lock:
            queued = [c for c in self.running.values() if c.fanned and c.submitted is not None]
        for c in queued:
            if c.submitted.get_status() is RunStatus.SCHEDULED:
                threading.Thread(target=c.submitted.cancel, args=(signal.SIGTERM,), daemon=True).start()

    def _start_child(self, child: Child, cwd: Path) -> None:
        from mlexec_core.pipeline.execute import start

        if not self._plan_child(child, cwd):
            return
        child.started = time.monotonic()
        child.status = "RUNNING"
        with self._lock:
            self.children.append(child)
            self.running[id(child)] = child
        child.output = _new_output()
        try:
            submitted = start(self.plugins, child.plan, self.prepared, output=child.output)
        except MlexecError as exc:  # the backend refused this one (its run, if any, ended FAILED)
            child.ended = time.monotonic()
            child.status, child.reason = "FAILED", str(exc).splitlines()[0]
            self._events.put(child)
            return
        child.submitted = submitted
        child.run_id = submitted.run_id
        if self.stop_signal is not None:  # a signal arrived while it was starting
            threading.Thread(target=submitted.cancel, args=(self.stop_signal,), daemon=True).start()
        self.events.child_started(self, child)
        threading.Thread(target=self._watch, args=(child,), name=f"mlexec-sweep-{child.number}",
                         daemon=True).start()

    def _watch(self, child: Child) -> None:
        def job_ended(status: RunStatus) -> None:
            # It finished: its share of the machine is free and the next child may start now, while
            # its end is recorded.  A failure is counted first (--max-failures, --fail-fast, --retries).
            if status is RunStatus.FINISHED:
                child.job_done = True
                self._events.put(None)

        try:
            child.submitted.wait(job_ended=job_ended)
        except BaseException as exc:  # a backend bug: the run was ended FAILED by wait()
            child.reason = f"{type(exc).__name__}: {exc}"
        finally:
            child.ended = time.monotonic()
            self._events.put(child)

    def _ended(self, child: Child, strategy: SearchStrategy, retry: list[Child]) -> None:
        with self._lock:
            self.running.pop(id(child), None)
        submitted = child.submitted
        if submitted is not None:
            status = submitted.status or RunStatus.FAILED
            child.status = status.value
            child.exit_code = submitted.exit_code
            child.reason = child.reason or submitted.failure_reason
        out, child.output = child.output, None  # the run keeps its log; a sweep keeps only failures' last lines
        if out is not None and child.status != "FINISHED":
            child.tail = list(out.tail(FAILURE_TAIL))
        if self.spec.metric and child.status == "FINISHED" and submitted is not None:
            try:
                child.value = T.latest_metric(submitted.run, self.spec.metric)
            except MlexecError as exc:
                self.plugins.context.reporter.warning(str(exc))
        if child.status == "FINISHED":
            strategy.tell(TrialResult(child.params, child.status, child.value, child.run_id))
            self.events.child_ended(self, child)
            return
        if child.status == "KILLED" and self.stopped:
            self.events.child_ended(self, child)
            return
        retrying = child.attempt <= self.spec.retries and not self.stopped
        self.events.child_failed(self, child, retrying)
        if retrying:
            retry.append(child)
            return
        strategy.tell(TrialResult(child.params, child.status, None, child.run_id))
        self.failures += 1
        if self.spec.fail_fast and not self.stopped:
            self.stop_reason = f"--fail-fast: child {child.number} {child.status.lower()}"
            self.events.stopping(self, self.stop_reason)
            with self._lock:
                running = [c for c in self.running.values() if c.submitted is not None]
            for c in running:
                threading.Thread(target=c.submitted.cancel, args=(signal.SIGTERM,), daemon=True).start()
        elif self.spec.max_failures is not None and self.failures >= self.spec.max_failures and not self.no_more:
            self.no_more = True
            self.stop_reason = f"--max-failures {self.spec.max_failures} reached"
            self.events.stopping(self, self.stop_reason + ": starting no more children")
            self._cancel_queued()

    def _drain(self) -> None:
        while self.running:
            try:
                child = self._events.get(timeout=0.25)
            except queue.Empty:
                continue
            if child is not None:
                with self._lock:
                    self.running.pop(id(child), None)
                if child.submitted is not None and child.submitted.status is not None:
                    child.status = child.submitted.status.value

    def summary(self) -> dict[str, Any]:
        best = self.best()
        return {
            "parent_run_id": self.parent.run_id if self.parent else None,
            "experiment_id": self.parent.experiment_id if self.parent else None,
            "status": self.status.value if self.status else None,
            "reason": self.reason,
            "strategy": self.plan.strategy_name,
            "metric": self.spec.metric,
            "goal": self.spec.goal if self.spec.metric else None,
            "counts": {k: v for k, v in self.counts().items() if k != "running"},
            "best": None if best is None else {"run_id": best.run_id, "trial": best.number, "value": best.value,
                                               "params": best.params},
            "children": [c.to_dict() for c in self.results()],
        }
