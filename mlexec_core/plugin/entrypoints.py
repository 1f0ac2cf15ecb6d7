"""Finding installed plugins: the entry points of one group, read straight from
the ``*.dist-info`` (and ``*.egg-info``) folders on ``sys.path``.

``importlib.metadata`` does the same, but importing it (email, zipfile, csv ...)
and building every distribution's metadata costs every ``mlexec`` command tens
of milliseconds; this reads one small file per installed distribution, and
the metadata of the few that declare an ``mlexec`` entry point.  As
``importlib.metadata`` does, the first distribution of a name on ``sys.path``
wins.  When ``sys.path`` holds a zip archive, it falls back to
``importlib.metadata``, which can look inside.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any, Iterable


class EntryPoint:
    """One ``name = module:attr`` line of a distribution's ``entry_points.txt``."""

    def __init__(self, name: str, value: str, dist_name: str | None, dist_version: str | None) -> None:
        self.name = name
        self.value = value
        self.dist_name = dist_name
        self.dist_version = dist_version

    def load(self) -> Any:
        module, _, attr = self.value.partition(":")
        obj: Any = importlib.import_module(module.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        return obj

    def __repr__(self) -> str:
        return f"EntryPoint({self.name!r}, {self.value!r}, {self.dist_name!r})"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _headers(folder: str, wanted: tuple[str, ...]) -> dict[str, str]:
    """``Name`` and ``Version`` from METADATA / PKG-INFO (the header block only)."""
    found: dict[str, str] = {}
    for filename in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(folder, filename), encoding="utf-8", errors="replace") as f:
                for line in f:
                    if not line.strip():
                        break
                    key, sep, value = line.partition(":")
                    if sep and key in wanted and key not in found:
                        found[key] = value.strip()
        except OSError:
            continue
        break
    return found


def _parse(text: str, group: str) -> list[tuple[str, str]]:
    out = []
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            continue
        if current == group and "=" in line:
            name, _, value = line.partition("=")
            out.append((name.strip(), value.strip()))
    return out


def entry_points(group: str, path: Iterable[str] | None = None) -> list[EntryPoint]:
    """The entry points of ``group`` of every distribution on ``path`` (``sys.path``)."""
    entries = list(sys.path if path is None else path)
    if any(os.path.isfile(e) for e in entries if e):
        return _from_importlib(group)
    seen: set[str] = set()
    found: list[EntryPoint] = []
    for entry in entries:
        directory = entry or "."
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for folder_name in names:
            if folder_name.endswith(".dist-info"):
                stem = folder_name[: -len(".dist-info")]
            elif folder_name.endswith(".egg-info"):
                stem = folder_name[: -len(".egg-info")]
            else:
                continue
            dist, _, rest = stem.partition("-")
            key = _normalize(dist)
            if key in seen:
                continue
            seen.add(key)
            folder = os.path.join(directory, folder_name)
            try:
                with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            if f"[{group}]" not in text:
                continue
            pairs = _parse(text, group)
            if not pairs:
                continue
            headers = _headers(folder, ("Name", "Version"))
            version = headers.get("Version") or (rest.partition("-")[0] or None)
            for name, value in pairs:
                found.append(EntryPoint(name, value, headers.get("Name") or dist, version))
    return found


def _from_importlib(group: str) -> list[EntryPoint]:
    from importlib import metadata

    return [EntryPoint(ep.name, ep.value, ep.dist.name if ep.dist else None, ep.dist.version if ep.dist else None)
            for ep in metadata.entry_points(group=group)]
