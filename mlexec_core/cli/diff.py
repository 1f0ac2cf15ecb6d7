"""``mlexec diff RUN_A RUN_B``: what differs between two runs of the store (docs/reproducing.md).

The work is in :mod:`mlexec_core.reproduce.diff`; this is only the command: a rich table per
section on a terminal, plain lines when piped, ``--json`` for programs.
"""

from __future__ import annotations

import json

import click

from mlexec_core.cli.common import fail, make_terminal, open_store
from mlexec_core.errors import MlexecError


@click.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the shape is in docs/reproducing.md).")
def diff(run_a: str, run_b: str, as_json: bool) -> None:
    """What differs between two runs: parameters, metrics, code, environment, backend, versions."""
    from mlexec_core.reproduce.diff import compare, load_run

    terminal = make_terminal()
    try:
        store = open_store(terminal)
        result = compare(load_run(store, run_a), load_run(store, run_b))
    except MlexecError as exc:
        fail(terminal, exc)
    if as_json:
        from mlexec_core.reproduce.diff import to_json

        terminal.echo(json.dumps(to_json(result), indent=2))
        return
    for note in result.notes:
        terminal.info(note)
    if not terminal.rich_out:
        from mlexec_core.reproduce.diff import text_lines

        for line in text_lines(result):
            terminal.echo(line)
        return
    if result.identical:
        terminal.echo(f"no differences between {run_a} and {run_b}")
        return
    from mlexec_core.reproduce.diff import format_value

    columns = [f"a: {run_a[:12]}", f"b: {run_b[:12]}"] if run_a[:12] != run_b[:12] else ["a", "b"]
    for section in result.sections:
        terminal.table(section.title, [section.what, *columns],
                       [(row.key, format_value(row.a, row.unit), format_value(row.b, row.unit))
                        for row in section.rows])
