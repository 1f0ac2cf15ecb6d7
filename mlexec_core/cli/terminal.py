"""The one object that talks to the user.

On a terminal it uses rich (colour, spinners, tables; rich honours
``NO_COLOR``); when output is piped, or ``TERM=dumb``, it prints plain lines
and never imports rich at all, which keeps piped and scripted runs fast.  Messages go
to stderr so the job's own stdout stays clean; tables go to stdout.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, Sequence

from mlexec_core.errors import MlexecError


class Terminal:
    def __init__(self, *, force_plain: bool = False) -> None:
        self.rich_err = not force_plain and _is_tty(sys.stderr)
        self.rich_out = not force_plain and _is_tty(sys.stdout)
        self._err = None
        self._out = None

    @property
    def err(self):
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False)
        return self._err

    @property
    def out(self):
        if self._out is None:
            from rich.console import Console

            self._out = Console(highlight=False)
        return self._out

    def _say(self, style: str, prefix: str, message: str) -> None:
        try:
            self._write(style, prefix, message)
        except OSError:  # the terminal went away (SIGHUP, a closed pipe): the run must still end cleanly
            pass

    def _write(self, style: str, prefix: str, message: str) -> None:
        if self.rich_err:
            from rich.markup import escape

            self.err.print(f"[{style}]{prefix}[/] {escape(message)}" if prefix else f"[{style}]{escape(message)}[/]")
        else:
            print(f"{prefix} {message}" if prefix else message, file=sys.stderr, flush=True)

    def info(self, message: str) -> None:
        self._say("dim", "", message)

    def warning(self, message: str) -> None:
        self._say("yellow", "warning:", message)

    def success(self, message: str) -> None:
        self._say("green", "", message)

    def failure(self, message: str) -> None:
        self._say("red", "", message)

    def error(self, exc: MlexecError) -> None:
        context = f"{exc.context}: " if exc.context else ""
        self._say("bold red", "error:", f"{context}{exc.message}")
        if exc.hint:
            self._say("cyan", "  hint:", exc.hint)

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        if self.rich_err:
            with self.err.status(message):
                yield
        else:
            print(f"{message} ...", file=sys.stderr, flush=True)
            yield

    def table(self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.rich_out:
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for column in columns:
                table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(*("" if v is None else str(v) for v in row))
            self.out.print(table)
        else:
            if title:
                print(f"# {title}")
            print("\t".join(columns))
            for row in rows:
                print("\t".join("" if v is None else str(v).replace("\n", " ") for v in row))

    def echo(self, text: str) -> None:
        print(text, flush=True)


def _is_tty(stream: Any) -> bool:
    if os.environ.get("TERM") == "dumb":  # rich itself honours NO_COLOR
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
