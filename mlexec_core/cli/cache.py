"""``mlexec cache list/prune``: the source cache (git mirrors, work trees, extracted archives)."""

from __future__ import annotations

import json

import click

from mlexec_core.errors import MlexecError


@click.group("cache")
def cache() -> None:
    """List and prune cached project sources (git mirrors, checkouts, archives)."""


def _entries(kind: str | None):
    from mlexec_core.sources.cache import SourceCache

    store = SourceCache()
    return store, [e for e in store.entries() if kind is None or e.kind == kind]


_KINDS = click.Choice(["git", "tree", "archive"])


@cache.command("list")
@click.option("--kind", type=_KINDS, help="Only mirrors (git), checkouts (tree) or archives.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cache_list(kind: str | None, as_json: bool) -> None:
    """Cached sources: what, size, last use; and where the cache is."""
    from mlexec_core.cli.housekeeping import ago, size
    from mlexec_core.cli.terminal import Terminal

    terminal = Terminal()
    store, entries = _entries(kind)
    if as_json:
        terminal.echo(json.dumps([{"kind": e.kind, "name": e.name, "path": str(e.path), "summary": e.summary,
                                   "size_bytes": e.size_bytes, "last_used": e.last_used, "in_use": e.in_use}
                                  for e in entries], indent=2))
        return
    terminal.table(f"Source cache ({store.root})", ["kind", "name", "source", "size", "last used", "in use"], [
        (e.kind, e.name, e.summary, size(e.size_bytes), ago(e.last_used), "yes" if e.in_use else "")
        for e in entries
    ])


@cache.command("prune")
@click.option("--older-than", metavar="AGE", help="Remove entries unused for longer than AGE (30m, 12h, 7d).")
@click.option("--all", "all_", is_flag=True, help="Remove every entry not in use.")
@click.option("--kind", type=_KINDS, help="Only mirrors (git), checkouts (tree) or archives.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed.")
def cache_prune(older_than: str | None, all_: bool, kind: str | None, dry_run: bool) -> None:
    """Remove cached sources; never a checkout or archive a run is using."""
    from mlexec_core.cli import housekeeping
    from mlexec_core.cli.common import fail
    from mlexec_core.cli.terminal import Terminal

    terminal = Terminal()
    try:
        cutoff = housekeeping.prune_cutoff(older_than, all_)
    except MlexecError as exc:
        fail(terminal, exc)
    store, entries = _entries(kind)
    items = [(entry, lambda entry=entry: store.remove(entry)) for entry in entries]
    housekeeping.prune(terminal, items, cutoff, dry_run, ("cache entry", "cache entries"))
