"""``mlexec``: the command line.  Options of ``mlflow run`` are accepted as they are."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import click

from mlexec_core.version import __version__
from mlexec_core.cli.common import fail, load_plugins, print_plan
from mlexec_core.cli.options import run_options, take_run_options
from mlexec_core.errors import MlexecError


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived before a job was running."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _load_env_file(path: str) -> None:
    from mlexec_core.yamlfile import read_text, shorten

    text = read_text(path, error=MlexecError, what="env file", hint="--env-file takes a text file of NAME=VALUE lines")
    for number, line in enumerate(text.splitlines(), 1):
        if "\x00" in line:
            raise MlexecError(f"line {number}: contains a NUL character", context=shorten(path))
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        if "=" not in line or not line.split("=", 1)[0].strip():
            raise MlexecError(f"line {number}: expected NAME=VALUE", context=shorten(path))
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ.setdefault(key.strip(), value)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mlexec")
@click.option("--env-file", type=click.Path(exists=True, dir_okay=False),
              help="Load environment variables from a dotenv file first (as `mlflow --env-file`).")
def cli(env_file: str | None) -> None:
    """Run MLflow projects: typed parameters, cached environments, clean stops."""
    if env_file:
        _load_env_file(env_file)


@cli.command(context_settings={"max_content_width": 100})
@click.argument("uri")
@click.option("-e", "--entry-point", default="main", show_default=True, metavar="NAME",
              help="Entry point to run, or a .py/.sh/.R file in the project.")
@click.option("-P", "--param-list", multiple=True, metavar="NAME=VALUE", help="A parameter; repeatable.")
@run_options("run")
@click.option("--run-id", help="Log to this existing run instead of creating one.")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan and exit; nothing runs, no run is created.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
@click.option("--detach", is_flag=True, help="Cluster backends: submit the job and exit; follow it later with "
              "`mlexec attach RUN_ID`.")
def run(uri: str, entry_point: str, param_list: tuple[str, ...], run_id: str | None, dry_run: bool, as_json: bool,
        detach: bool, **shared) -> None:
    """Run the project at URI (a directory, as with `mlflow run`)."""
    from mlexec_core.cli.terminal import Terminal

    terminal = Terminal()
    if as_json and not dry_run:
        fail(terminal, MlexecError("--json goes with --dry-run"))
    stopper = _Stopper(terminal)
    try:
        plugins = load_plugins(terminal)
        from mlexec_core.pipeline.resolve import resolve_plan

        plan = resolve_plan(plugins, take_run_options(shared, uri=uri, entry_point=entry_point,
                                                      parameters=param_list, run_id=run_id))
        if dry_run:
            from mlexec_core.pipeline.describe import plan_summary

            summary = plan_summary(plugins, plan)
            if as_json:
                terminal.echo(json.dumps(summary, indent=2))
            else:
                print_plan(terminal, summary)
            return
        if detach and "detachable" not in plugins.registered("backend")[plan.backend].capabilities:
            raise MlexecError(f"--detach: the {plan.backend!r} backend's jobs do not live on without mlexec",
                              hint="use a cluster backend (-b kubernetes), or leave out --detach")
        code = _run_plan(terminal, plugins, plan, stopper, detach=detach)
    except MlexecError as exc:
        fail(terminal, exc)
    except (KeyboardInterrupt, _Terminated) as exc:
        terminal.failure("Interrupted before the run started; no run was created.")
        sys.exit(128 + (exc.signum if isinstance(exc, _Terminated) else signal.SIGINT))
    finally:
        stopper.restore()
    sys.exit(code)


@cli.command(context_settings={"max_content_width": 100})
@click.argument("run_id")
@click.option("-P", "--param-list", multiple=True, metavar="NAME=VALUE", help="Run with this value instead.")
@click.option("-R", "--resource", "resource_list", multiple=True, metavar="NAME=VALUE",
              help="Ask for this resource instead.")
@click.option("-b", "--backend", help="Run on this backend instead.")
@click.option("-c", "--backend-config", help="Use this backend config instead (needed when the run's had secrets).")
@click.option("--allow-changed-code", is_flag=True,
              help="A folder (not a git work tree) that changed since the run: run it as it is now.")
@click.option("--from-snapshot", is_flag=True, help="A folder (not a git work tree): run the files the run had.")
@click.option("--experiment-name", help="Record the new run in this experiment (default: the run's).")
@click.option("--experiment-id", help="Record the new run in this experiment (default: the run's).")
@click.option("--run-name", help="A name for the new run.")
@click.option("--dry-run", is_flag=True, help="Print the plan and what is reused; nothing runs, no run is created.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
def rerun(run_id: str, param_list: tuple[str, ...], resource_list: tuple[str, ...], backend: str | None,
          backend_config: str | None, allow_changed_code: bool, from_snapshot: bool, experiment_name: str | None,
          experiment_id: str | None, run_name: str | None, dry_run: bool, as_json: bool) -> None:
    """Run RUN_ID again as it was: its code (commit and uncommitted changes), its environment
    built from the recorded lock, its parameters, backend and resources."""
    from mlexec_core.cli.terminal import Terminal

    terminal = Terminal()
    if as_json and not dry_run:
        fail(terminal, MlexecError("--json goes with --dry-run"))
    stopper = _Stopper(terminal)
    try:
        from mlexec_core.cli.common import open_store
        from mlexec_core.reproduce.rerun import read_record, rerun_options

        recorded = read_record(open_store(terminal), run_id)
        options, notes = rerun_options(
            recorded, parameters=param_list, resources=resource_list, backend=backend,
            backend_config=backend_config, allow_changed_code=allow_changed_code, from_snapshot=from_snapshot,
            experiment_name=experiment_name, experiment_id=experiment_id, run_name=run_name)
        plugins = load_plugins(terminal)
        from mlexec_core.pipeline.resolve import resolve_plan

        plan = resolve_plan(plugins, options)
        if dry_run:
            from mlexec_core.pipeline.describe import plan_summary

            summary = dict(plan_summary(plugins, plan), rerun_of=run_id, reused=notes)
            if as_json:
                terminal.echo(json.dumps(summary, indent=2))
            else:
                print_plan(terminal, dict(summary, reused="; ".join(notes)))
            return
        for note in notes:
            terminal.info(note)
        code = _run_plan(terminal, plugins, plan, stopper)
    except MlexecError as exc:
        fail(terminal, exc)
    except (KeyboardInterrupt, _Terminated) as exc:
        terminal.failure("Interrupted before the run started; no run was created.")
        sys.exit(128 + (exc.signum if isinstance(exc, _Terminated) else signal.SIGINT))
    finally:
        stopper.restore()
    sys.exit(code)


class _Stopper:
    """SIGINT/SIGTERM/SIGHUP for the whole of `mlexec run`.

    While preparing (nothing exists yet) a signal interrupts at once.  While the
    run is being created and the job started, it is held, and acted on as soon
    as the job exists, so a signal can never leave a job running or a run
    RUNNING.  While the job runs, the first signal stops it (SIGINT/SIGTERM to
    its process group, SIGKILL after MLEXEC_STOP_TIMEOUT); a second kills at once.
    SIGHUP (the terminal or ssh session closed) counts as SIGTERM: the job runs in
    its own session and would not get the hangup itself.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, terminal) -> None:
        self.terminal = terminal
        self.received: list[int] = []
        self.submitted = None
        self.starting = False
        self._old = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        from mlexec_core.supervisor import interrupted

        interrupted.set()  # a tracking store that does not answer is not waited for any longer
        self.received.append(signum)
        if self.submitted is None and not self.starting:
            raise KeyboardInterrupt() if signum == signal.SIGINT else _Terminated(signum)
        if self.submitted is not None:
            self._stop(signum)

    def _stop(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            signum = signal.SIGTERM  # what the job gets; mlexec still exits 129
        if len(self.received) == 1:
            self.terminal.warning(f"{signal.Signals(signum).name}: stopping the run (again to kill at once)")
            threading.Thread(target=self.submitted.cancel, args=(signum,), daemon=True).start()
        else:
            threading.Thread(target=self.submitted.cancel, args=(signal.SIGKILL,), daemon=True).start()

    def started(self, submitted) -> None:
        self.submitted = submitted
        if self.received:  # arrived while the run was being created
            self.received = self.received[:1]
            self._stop(self.received[0])


def _run_plan(terminal, plugins, plan, stopper: _Stopper, detach: bool = False) -> int:
    from mlexec_core.pipeline.execute import prepare, start
    from mlexec_core.pipeline.plan import RunStatus

    prepared = prepare(plugins, plan)
    stopper.starting = True
    def announce(run) -> None:  # before the job starts, so its first lines come after
        where = f" (experiment {run.experiment_id})" if run.experiment_id else ""
        terminal.info(f"=== Run {run.run_id}{where}: {plan.command} ===")
        if plan.resources:
            terminal.info(f"    resources: {plan.resources}")

    submitted = start(plugins, plan, prepared, announce=announce)
    stopper.started(submitted)
    got = getattr(submitted.job, "allocation", None)
    if got is not None:  # what this machine gave it (a job that waits says so in its output)
        from mlexec_core.allocation import describe_allocation

        terminal.info(f"    on {describe_allocation(got)}")
    if detach:
        return _detach(terminal, plugins, submitted)
    submitted.wait()
    status = submitted.status
    from mlexec_core.builtins.mlflow.hooks import outcome_unrecorded

    if outcome_unrecorded(submitted.run):  # a run whose outcome is not recorded is not a success
        terminal.failure(f"=== Run {submitted.run_id} {status.value.lower()}, but the tracking store did not "
                         "record it (kept locally; `mlexec runs repair` writes it) ===")
        if status is RunStatus.KILLED:
            return 128 + (stopper.received[0] if stopper.received else signal.SIGTERM)
        return 1
    if status is RunStatus.FINISHED:
        terminal.success(f"=== Run {submitted.run_id} succeeded ===")
        return 0
    reason = f": {submitted.failure_reason}" if submitted.failure_reason else ""
    terminal.failure(f"=== Run {submitted.run_id} {status.value.lower()}{reason} ===")
    if status is RunStatus.KILLED:
        return 128 + (stopper.received[0] if stopper.received else signal.SIGTERM)
    return failed_exit_status(submitted.exit_code)


def failed_exit_status(code: int | None) -> int:
    """What `mlexec run` exits with for a FAILED run: the command's own status when
    the backend knows it and it is from 1 to 125, else 1 (126 and up are the shell's
    "cannot run" codes and 128 + N a signal, which would read as mlexec's own)."""
    return code if isinstance(code, int) and 1 <= code <= 125 else 1


def _detach(terminal, plugins, submitted) -> int:
    """Leave the submitted job running without us; say how to follow it."""
    from mlexec_core import supervisor
    from mlexec_core.pipeline.livelog import stop_live_log

    run_id = submitted.run_id
    plugins.run_tags(run=submitted.run, tags={supervisor.DETACHED_TAG: "true"})
    stop_live_log(run_id)
    submitted.run.output.close()
    submitted.run.output.discard()
    terminal.success(f"=== Run {run_id} detached: its job goes on without mlexec ===")
    terminal.info(f"follow it: mlexec attach {run_id}   output: mlexec logs -f {run_id}   "
                  f"stop it: mlexec cancel {run_id}")
    return 0


@cli.command()
@click.argument("uri", default=".")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def describe(uri: str, as_json: bool) -> None:
    """Show a project's environment, entry points and parameters."""
    from mlexec_core.cli.terminal import Terminal

    terminal = Terminal()
    try:
        from mlexec_core.pipeline.describe import project_summary
        from mlexec_core.pipeline.resolve import load_project_reporting
        from mlexec_core.pipeline.source import fetch

        project = load_project_reporting(fetch(uri, None, Path.cwd(), reporter=terminal).directory, terminal)
    except MlexecError as exc:
        fail(terminal, exc)
    summary = project_summary(project)
    if as_json:
        terminal.echo(json.dumps(summary, indent=2))
        return
    terminal.echo(f"{summary['name']}  ({summary['directory']})")
    terminal.echo(f"environment: {summary['environment']['description']}")
    rows = []
    for ep in summary["entry_points"]:
        params = ep["parameters"] or [None]
        for i, p in enumerate(params):
            rows.append((
                ep["name"] if i == 0 else "",
                ep["command"] if i == 0 else "",
                p["name"] if p else "",
                p["type"] if p else "",
                ("(required)" if p["required"] else p["default"]) if p else "",
            ))
    terminal.table("Entry points", ["entry point", "command", "parameter", "type", "default"], rows)
    needs = [(ep["name"], ", ".join(f"{k}={v}" for k, v in ep["resources"].items()))
             for ep in summary["entry_points"] if ep["resources"]]
    if needs:
        terminal.table("Resources", ["entry point", "needs"], needs)


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_cmd(as_json: bool) -> None:
    """List installed plugins and what they provide."""
    from mlexec_core.cli.terminal import Terminal

    terminal = Terminal()
    infos = load_plugins(terminal, warn=False).infos(import_classes=True)  # a class that does not import is shown
    if as_json:
        import attrs

        terminal.echo(json.dumps([attrs.asdict(i) for i in infos], indent=2))
        return
    terminal.table("Plugins", ["name", "distribution", "version", "provides", "status"], [
        (i.name, i.distribution or "", i.version or "", ", ".join(i.provides),
         i.state if i.state != "error" else f"error: {i.error}")
        for i in infos
    ])


@cli.group("env")
def env_group() -> None:
    """List and prune cached environments."""


def _managers(terminal):
    plugins = load_plugins(terminal)
    names = sorted({record.name for record in plugins.registered("env-manager").values()})  # not the aliases
    return [plugins.environment_manager(name) for name in names]


def _all_envs(terminal, manager: str | None):
    managers = _managers(terminal)
    if manager and manager not in {m.name for m in managers}:
        fail(terminal, MlexecError(f"unknown environment manager {manager!r} (--manager)",
                                    hint=f"installed: {', '.join(m.name for m in managers)}"))
    envs = []
    for mgr in managers:
        if manager and mgr.name != manager:
            continue
        envs.extend((mgr, info) for info in mgr.list_environments())
    return envs


@env_group.command("list")
@click.option("--manager", metavar="NAME", help="Only this environment manager's environments.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def env_list(manager: str | None, as_json: bool) -> None:
    """Cached environments: name, spec, size, last use."""
    from mlexec_core.cli.terminal import Terminal

    terminal = Terminal()
    envs = _all_envs(terminal, manager)
    if as_json:
        terminal.echo(json.dumps([{"manager": i.manager, "name": i.name, "path": str(i.path), "summary": i.summary,
                                   "size_bytes": i.size_bytes, "last_used": i.last_used, "in_use": i.in_use}
                                  for _, i in envs], indent=2))
        return
    from mlexec_core.cli.housekeeping import ago, size

    terminal.table("Environments", ["manager", "name", "spec", "size", "last used", "in use"], [
        (i.manager, i.name, i.summary, size(i.size_bytes), ago(i.last_used), "yes" if i.in_use else "")
        for _, i in envs
    ])


@env_group.command("prune")
@click.option("--older-than", metavar="AGE", help="Remove environments unused for longer than AGE (30m, 12h, 7d).")
@click.option("--all", "all_", is_flag=True, help="Remove every environment not in use.")
@click.option("--manager", metavar="NAME", help="Only this environment manager's environments.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed.")
def env_prune(older_than: str | None, all_: bool, manager: str | None, dry_run: bool) -> None:
    """Remove cached environments; never one a run is using."""
    from mlexec_core.cli import housekeeping
    from mlexec_core.cli.terminal import Terminal

    terminal = Terminal()
    try:
        cutoff = housekeeping.prune_cutoff(older_than, all_)
    except MlexecError as exc:
        fail(terminal, exc)
    items = [(info, lambda mgr=mgr, info=info: mgr.remove_environment(info))
             for mgr, info in _all_envs(terminal, manager)]
    housekeeping.prune(terminal, items, cutoff, dry_run, ("environment", "environments"))


from mlexec_core.cli.cache import cache as _cache_group  # noqa: E402  (click and errors only)

cli.add_command(_cache_group)
from mlexec_core.cli import runs as _runs  # noqa: E402  (click and errors only)

for _command in (_runs.runs, _runs.attach, _runs.cancel, _runs.logs):
    cli.add_command(_command)
from mlexec_core.cli.sweep import sweep as _sweep_command  # noqa: E402  (click and errors only)

cli.add_command(_sweep_command)
from mlexec_core.cli.diff import diff as _diff_command  # noqa: E402  (click and errors only)

cli.add_command(_diff_command)


def main() -> None:
    try:
        try:
            cli(prog_name="mlexec")
        except MlexecError as exc:  # raised outside a command (e.g. --env-file)
            from mlexec_core.cli.terminal import Terminal

            fail(Terminal(), exc)
    except SystemExit as exc:
        _exit(exc)
        raise


def _exit(exc: SystemExit) -> None:
    """End the process at once with ``exc``'s status, once the command is done.

    Python's own shutdown (tearing down every imported module and collecting
    what they hold) costs a ``mlexec run`` about 30 ms, and nothing of mlexec's
    needs it: its runs are ended, its files closed.  What shutdown would still
    do that matters is done here: the ``atexit`` functions run and the standard
    streams are flushed.  When another thread that Python would wait for is
    still running, or the status is not a number, the normal shutdown happens
    (this returns, and the caller re-raises).
    """
    import atexit
    import threading

    code = exc.code
    if code is None:
        code = 0
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
        return
    main_thread = threading.main_thread()
    if threading.current_thread() is not main_thread or any(
            t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            if stream is sys.stdout and code == 0:
                code = 120  # as Python's own shutdown does when stdout cannot be flushed
    os._exit(code)
