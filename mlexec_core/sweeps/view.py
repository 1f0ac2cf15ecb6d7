"""What ``mlexec sweep`` shows while it runs.

On a terminal: a rich Live view (counts, and one line per running child with
its latest output), failures printed above it as they happen.  Piped: one
plain line per child that ends, failures with their last lines.  Messages go
to stderr; the final table (or ``--json``) goes to stdout.
"""

from __future__ import annotations

import shlex
from typing import Mapping

from mlexec_core.sweeps.engine import Child, Events, Sweep


def params_text(params: Mapping[str, str], limit: int = 60) -> str:
    text = " ".join(f"{k}={shlex.quote(v) if v else repr(v)}" for k, v in params.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def child_allocation(child: Child) -> str:
    """What this machine gave a running child (``GPUs 2; cores 1``), or what it waits for."""
    submitted = child.submitted
    job = getattr(submitted, "job", None)
    allocation = getattr(job, "allocation", None)
    if allocation is not None:
        from mlexec_core.allocation import describe_allocation

        return describe_allocation(allocation)
    reason = getattr(job, "pending_reason", None)
    return "waiting" if reason else ""


def _metric(sweep: Sweep, child: Child) -> str:
    if not sweep.spec.metric:
        return ""
    return f"  {sweep.spec.metric}={child.value:.6g}" if child.value is not None else f"  {sweep.spec.metric}=-"


class TerminalView(Events):
    """Plain lines, or a live view when ``terminal.rich_err``."""

    def __init__(self, terminal) -> None:
        self.terminal = terminal
        self.live = None
        self.ended_count = 0

    # -- plain and rich alike ------------------------------------------------------------

    def _print(self, style: str, text: str) -> None:
        if self.live is not None:
            from rich.markup import escape

            self.live.console.print(f"[{style}]{escape(text)}[/]" if style else escape(text))
        elif style == "red":
            self.terminal.failure(text)
        elif style == "yellow":
            self.terminal.warning(text)
        else:
            self.terminal.info(text)

    def started(self, sweep: Sweep) -> None:
        total = sweep.queued_total
        parent = sweep.parent
        where = f" (experiment {parent.experiment_id})" if parent and parent.experiment_id else ""
        resumed = f", resuming: {sum(1 for c in sweep.children if c.earlier)} already finished" \
            if sweep.plan.earlier else ""
        self.terminal.info(f"=== Sweep {parent.run_id if parent else '?'}{where}: {total} children, "
                           f"{sweep.plan.strategy_name}, at most {sweep.plan.max_parallel} at once{resumed} ===")
        if self.terminal.rich_err:
            from rich.live import Live

            self.live = Live(self._render(sweep), console=self.terminal.err, refresh_per_second=4, transient=True)
            self.live.start()

    def child_ended(self, sweep: Sweep, child: Child) -> None:
        self.ended_count += 1
        if self.live is None:
            total = sweep.queued_total
            got = child_allocation(child)
            self.terminal.info(f"[{self.ended_count}/{total}] {child.status.lower()}: child {child.number} "
                               f"{params_text(child.params)}{_metric(sweep, child)}  {format_duration(child.duration)}  "
                               f"run {child.run_id}" + (f"  ({got})" if got and got != "waiting" else ""))
        self.tick(sweep)

    def child_failed(self, sweep: Sweep, child: Child, retrying: bool) -> None:
        if not retrying:
            self.ended_count += 1
        code = f", exit code {child.exit_code}" if child.exit_code is not None else ""
        again = f"; retrying (attempt {child.attempt + 1} of {sweep.spec.retries + 1})" if retrying else ""
        self._print("red", f"child {child.number} {child.status.lower()} ({params_text(child.params)}){code}: "
                           f"{child.reason or 'no reason given'}; run {child.run_id}{again}")
        for line in child.tail:
            self._print("dim", f"    | {line.rstrip()}")
        self.tick(sweep)

    def stopping(self, sweep: Sweep, why: str) -> None:
        self._print("yellow", why)

    def tick(self, sweep: Sweep) -> None:
        if self.live is not None:
            self.live.update(self._render(sweep))

    def ended(self, sweep: Sweep) -> None:
        self.close()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    # -- the live view -------------------------------------------------------------------

    def _render(self, sweep: Sweep):
        from rich.console import Group
        from rich.text import Text

        c = sweep.counts()
        head = Text.assemble(("queued ", "dim"), str(c["queued"]), ("  running ", "dim"), (str(c["running"]), "cyan"),
                             ("  finished ", "dim"), (str(c["finished"]), "green"),
                             ("  failed ", "dim"), (str(c["failed"] + c["killed"]), "red"))
        lines = [head]
        width = max(20, self.terminal.err.width - 4)
        running = sorted(list(sweep.running.values()), key=lambda ch: ch.number)
        for child in running[:20]:
            label = f"#{child.number} {params_text(child.params, 40)} {format_duration(child.duration)}"
            got = child_allocation(child)
            if got:
                label += f" [{got}]"
            last = child.last_line.strip()
            text = Text(label, style="bold")
            if last:
                text.append("  " + last[: max(0, width - len(label) - 2)], style="dim")
            lines.append(text)
        if len(running) > 20:
            lines.append(Text(f"... and {len(running) - 20} more", style="dim"))
        return Group(*lines)
