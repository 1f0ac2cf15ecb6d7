"""``mlexec sweep``: one entry point over many parameter values, as one parent run."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from mlexec_core.cli.options import run_options, take_run_options
from mlexec_core.errors import MlexecError, UsageError


class _Terminated(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _SweepStopper:
    """Signals for the whole of ``mlexec sweep``.

    Until the parent run is about to be created (checking, preparing the
    environment), a signal interrupts at once: nothing exists.  From then on it
    is handed to the sweep: nothing more starts, every running child is stopped,
    and they and the parent end KILLED; a second signal kills the children at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, terminal) -> None:
        self.terminal = terminal
        self.sweep = None
        self.received: list[int] = []
        self._old = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        self.received.append(signum)
        if self.sweep is None:
            raise KeyboardInterrupt() if signum == signal.SIGINT else _Terminated(signum)
        if len(self.received) == 1:
            self.terminal.warning(f"{signal.Signals(signum).name}: stopping every running child "
                                  "(again to kill at once)")
        self.sweep.stop(signum)


@click.command("sweep", context_settings={"max_content_width": 100})
@click.argument("uri", required=False)
@click.option("-e", "--entry-point", default=None, metavar="NAME", help="Entry point to sweep (default: main).")
@click.option("-P", "--param-list", multiple=True, metavar="NAME=VALUES",
              help="Values: 5 | a,b,c | range(start, stop[, step]) | uniform(lo, hi) | loguniform(lo, hi) | "
                   "int(lo, hi) | choice(a, b, ...); \\, is a literal comma. Repeatable.")
@click.option("--sweep-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="A YAML sweep (parameters, strategy, metric, limits); options given here win over it.")
@click.option("--strategy", metavar="NAME", help="grid (default for lists and ranges), random, or a plugin's "
              "(optuna).")
@click.option("--trials", type=int, metavar="N", help="How many children (random, optuna).")
@click.option("--seed", type=int, metavar="S", help="Seed for drawn values (the same seed, the same children).")
@click.option("--metric", metavar="NAME", help="The metric each child logs; children are ranked by it.")
@click.option("--goal", type=click.Choice(["minimize", "maximize"]), help="What is best for --metric "
              "(default: minimize).")
@click.option("--max-parallel", type=int, metavar="N", help="Children at once (default: the cores for the local "
              "and docker backends, 4 elsewhere).")
@click.option("--max-failures", type=int, metavar="K", help="Start no new child after K failed children.")
@click.option("--fail-fast", is_flag=True, default=None, help="Stop every child at the first failure.")
@click.option("--retries", type=int, metavar="R", help="Rerun a failed child up to R times, each a new run.")
@click.option("--resume", metavar="PARENT_RUN_ID", help="Continue this sweep: run its missing and failed children.")
@run_options("sweep")
@click.option("--dry-run", is_flag=True, help="List the children and the backend's plan; nothing runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (or, with --dry-run, the plan) as JSON.")
def sweep(uri: str | None, entry_point: str | None, param_list: tuple[str, ...], sweep_file: Path | None,
          strategy: str | None, trials: int | None, seed: int | None, metric: str | None, goal: str | None,
          max_parallel: int | None, max_failures: int | None, fail_fast: bool | None, retries: int | None,
          resume: str | None, dry_run: bool, as_json: bool, **shared: Any) -> None:
    """Run the project at URI once per combination of parameter values, in parallel.

    \b
      mlexec sweep . -P lr=0.001,0.01,0.1 -P epochs=5,10
      mlexec sweep . -P lr='loguniform(1e-4, 1e-1)' --trials 20 --metric rmse
      mlexec sweep --resume PARENT_RUN_ID
    """
    from mlexec_core.cli.common import fail, load_plugins
    from mlexec_core.cli.terminal import Terminal

    terminal = Terminal()
    stopper = _SweepStopper(terminal)
    view = None
    code = 0
    try:
        from mlexec_core.sweeps.engine import Sweep, plan_sweep
        from mlexec_core.sweeps.spec import build_spec

        if not uri and not resume:
            raise UsageError("give the project URI (or --resume PARENT_RUN_ID)",
                              hint="mlexec sweep . -P lr=0.001,0.01")
        plugins = load_plugins(terminal)
        spec = build_spec(param_list, sweep_file=sweep_file, strategy=strategy, trials=trials, seed=seed,
                          metric=metric, goal=goal, max_parallel=max_parallel, max_failures=max_failures,
                          fail_fast=fail_fast, retries=retries, entry_point=entry_point)
        if not spec.parameters and not resume:
            raise UsageError("nothing to sweep: give values with -P NAME=VALUES or --sweep-file",
                              hint="mlexec sweep . -P lr=0.001,0.01,0.1")
        plan = plan_sweep(plugins, take_run_options(shared, uri=uri), spec, resume=resume)
        if dry_run:
            _dry_run(terminal, plugins, plan, as_json)
            return
        from mlexec_core.sweeps.view import TerminalView

        view = TerminalView(terminal)
        runner = Sweep(plugins, plan, view)
        runner.prepare()
        stopper.sweep = runner
        status = runner.run()
        view.close()
        _report(terminal, runner, as_json)
        from mlexec_core.pipeline.plan import RunStatus

        if status is RunStatus.KILLED:
            code = 128 + (stopper.received[0] if stopper.received else signal.SIGTERM)
        elif status is not RunStatus.FINISHED:
            code = 1
    except MlexecError as exc:
        if view is not None:
            view.close()
        fail(terminal, exc)
    except (KeyboardInterrupt, _Terminated) as exc:
        if view is not None:
            view.close()
        terminal.failure("Interrupted before the sweep started; no run was created.")
        sys.exit(128 + (exc.signum if isinstance(exc, _Terminated) else signal.SIGINT))
    finally:
        stopper.restore()
    sys.exit(code)


def _report(terminal, runner, as_json: bool) -> None:
    from mlexec_core.sweeps.view import format_duration

    summary = runner.summary()
    if as_json:
        terminal.echo(json.dumps(summary, indent=2))
    else:
        names = list(runner.spec.parameters)
        metric = runner.spec.metric
        columns = ["trial", *names, "status", *([metric] if metric else []), "duration", "run id"]
        rows = []
        for child in runner.results():
            rows.append([child.number, *(child.params.get(n, "") for n in names),
                         child.status.lower() + (f" (attempt {child.attempt})" if child.attempt > 1 else "")
                         + (" (earlier)" if child.earlier else ""),
                         *([("" if child.value is None else f"{child.value:.6g}")] if metric else []),
                         format_duration(child.duration), child.run_id or ""])
        title = f"Sweep {summary['parent_run_id']}" + (f", by {metric} ({runner.spec.goal})" if metric else "")
        terminal.table(title, columns, rows)
    counts = summary["counts"]
    text = f"{counts['finished']} finished, {counts['failed']} failed" + \
        (f", {counts['killed']} killed" if counts["killed"] else "")
    best = summary["best"]
    if best:
        text += f"; best: run {best['run_id']} (child {best['trial']}) {runner.spec.metric}={best['value']:.6g}"
    elif runner.spec.metric and counts["finished"]:
        text += f"; no child logged {runner.spec.metric!r}"
    status = summary["status"]
    line = f"=== Sweep {summary['parent_run_id']} {status.lower()}: {text} ==="
    if status == "FINISHED":
        terminal.success(line)
    else:
        if summary["reason"]:
            line = line[:-4] + f" ({summary['reason']}) ==="
        terminal.failure(line)


def _dry_run(terminal, plugins, plan, as_json: bool) -> None:
    from mlexec_core.pipeline.describe import plan_summary

    done = {c.trial for c in plan.earlier.children if c.status == "FINISHED"} if plan.earlier else set()
    summary: dict[str, Any] = {
        "strategy": plan.strategy_name,
        "max_parallel": plan.max_parallel,
        "metric": plan.spec.metric,
        "goal": plan.spec.goal if plan.spec.metric else None,
        "resume": plan.earlier.run_id if plan.earlier else None,
    }
    if plan.children is not None:
        children = [{"trial": i, "params": dict(params), "command": child.command, "done": i in done}
                    for i, (params, child) in enumerate(plan.children)]
        summary["count"] = sum(1 for c in children if not c["done"])
        summary["children"] = children
    else:
        strategy = plugins.search_strategy(plan.strategy_name)
        summary["count"] = max(0, (plan.spec.trials or 0) - len(done))
        summary["space"] = strategy.describe(plan.spec)
    summary["plan"] = plan_summary(plugins, plan.base)
    if plan.children is not None and "fan-out" in plugins.registered("backend")[plan.base.backend].capabilities:
        backend = plugins.backend(plan.base.backend)
        todo = [child for i, (_, child) in enumerate(plan.children) if i not in done]
        summary["fan_out"] = dict(backend.dry_run_many(plan.base, todo, plan.max_parallel)) if todo else {}
    if as_json:
        terminal.echo(json.dumps(summary, indent=2))
        return
    if plan.children is not None:
        names = list(plan.spec.parameters)
        terminal.table(f"Children (dry run: nothing runs)", ["trial", *names, "command"],
                       [[c["trial"], *(c["params"].get(n, "") for n in names),
                         c["command"] + ("  (finished earlier: skipped)" if c["done"] else "")]
                        for c in summary["children"]])
    else:
        terminal.table(f"Search space of {plan.strategy_name} (dry run: nothing runs)", ["parameter", "domain"],
                       [[n, d.text] for n, d in plan.spec.parameters.items()])
    terminal.echo(f"{summary['count']} children, strategy {plan.strategy_name}, at most {plan.max_parallel} at once"
                  + (f", ranked by {plan.spec.metric} ({plan.spec.goal})" if plan.spec.metric else ""))
    from mlexec_core.cli.common import print_plan

    print_plan(terminal, summary["plan"])
    if summary.get("fan_out", {}).get("text"):
        terminal.echo(f"The children as one submission (backend {plan.base.backend}):")
        terminal.echo(summary["fan_out"]["text"])
