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
    from mlexec_core.cli.main import _ago, _size
    from mlexec_core.cli.terminal import Terminal

    terminal = Terminal()
    store, entries = _entries(kind)
    if as_json:
        terminal.echo(json.dumps([{"kind": e.kind, "name": e.name, "path": str(e.path), "summary": e.summary,
                                   "size_bytes": e.size_bytes, "last_used": e.last_used, "in_use": e.in_use}
                                  for e in entries], indent=2))
        return
    terminal.table(f"Source cache ({store.root})", ["kind", "name", "source", "size", "last used", "in use"], [
        (e.kind, e.name, e.summary, _size(e.size_bytes), _ago(e.last_used), "yes" if e.in_use else "")
        for e in entries
    ])


@cache.command("prune")
@click.option("--older-than", metavar="AGE", help="Remove entries unused for longer than AGE (30m, 12h, 7d).")
@click.option("--all", "all_", is_flag=True, help="Remove every entry not in use.")
@click.option("--kind", type=_KINDS, help="Only mirrors (git), checkouts (tree) or archives.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed.")
def cache_prune(older_than: str | None, all_: bool, kind: str | None, dry_run: bool) -> None:
    """Remove cached sources; never a checkout or archive a run is using."""
    import time

    from mlexec_core.cli.main import _fail, _parse_age, _size
    from mlexec_core.cli.terminal import Terminal

    terminal = Terminal()
    try:
        if bool(older_than) == all_:
            raise MlexecError("say what to prune: --older-than AGE or --all")
        cutoff = time.time() - _parse_age(older_than) if older_than else None
    except MlexecError as exc:
        _fail(terminal, exc)
    store, entries = _entries(kind)
    removed = 0
    for entry in entries:
        if cutoff is not None and (entry.last_used or 0) > cutoff:
            continue
        if entry.in_use:
            terminal.warning(f"{entry.name}: in use by a run, kept")
            continue
        if dry_run:
            terminal.echo(f"would remove {entry.name} ({_size(entry.size_bytes)})")
            continue
        if store.remove(entry):
            removed += 1
            terminal.echo(f"removed {entry.name} ({_size(entry.size_bytes)})")
        else:
            terminal.warning(f"{entry.name}: in use by a run, kept")
    if not dry_run:
        terminal.info(f"{removed} cache entr{'ies' if removed != 1 else 'y'} removed")
