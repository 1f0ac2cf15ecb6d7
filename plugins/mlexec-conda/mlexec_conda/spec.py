"""conda.yaml as conda defines it, parsed into frozen data (no I/O beyond reading the file).

The cache key is taken from the parsed spec, not the raw text, so whitespace,
comments and key order do not create new environments (MLflow hashes the raw
text).  ``name`` and ``variables`` do not change what is installed and are
left out of the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import attrs
from attrs import frozen

from mlexec_core.errors import EnvironmentBuildError
from mlexec_core.yamlfile import load_yaml, shorten

#: Keys conda's environment.yml knows; others are reported (conda ignores them silently).
KNOWN_KEYS = ("name", "channels", "dependencies", "variables", "prefix")


@frozen
class CondaSpec:
    file: Path
    name: str | None = None
    #: In the order written: the first has the highest priority.
    channels: tuple[str, ...] = ()
    #: Conda match specs (``numpy >=1.20``), whitespace-normalised, in the order written.
    dependencies: tuple[str, ...] = ()
    #: The ``pip:`` sub-list, installed with uv after the conda packages.
    pip: tuple[str, ...] = ()
    #: ``variables:`` set when the environment is activated.
    variables: Mapping[str, str] = attrs.field(factory=dict)
    #: Keys in the file that conda does not know (reported, otherwise ignored).
    unknown_keys: tuple[str, ...] = ()

    def key_data(self) -> dict[str, Any]:
        """What decides the environment's contents (for :func:`mlexec_core.envcache.spec_key`)."""
        return {
            "channels": list(self.channels),
            "dependencies": sorted(self.dependencies),
            "pip": sorted(self.pip),
        }

    def summary(self) -> str:
        deps = list(self.dependencies) + [f"pip:{p}" for p in self.pip]
        text = ", ".join(deps) or "no packages"
        return text if len(text) <= 80 else text[:77] + "..."

    @property
    def needs_python(self) -> bool:
        return bool(self.pip)


def _normalise(spec: str) -> str:
    """``"numpy   >=1.20 "`` -> ``"numpy >=1.20"`` (what conda reads as the same spec)."""
    return re.sub(r"\s+", " ", spec.strip())


def parse_conda_yaml(path: Path) -> CondaSpec:
    """Read ``path``; a malformed file is an :class:`EnvironmentBuildError` naming the key."""
    context = shorten(str(path), 300)
    data = load_yaml(path, error=EnvironmentBuildError, what="conda environment file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EnvironmentBuildError("expected a mapping with channels and dependencies", context=context,
                                    hint="see https://docs.conda.io/projects/conda/en/latest/user-guide/tasks/"
                                         "manage-environments.html#create-env-file-manually")

    def fail(key: str, message: str, hint: str | None = None) -> EnvironmentBuildError:
        return EnvironmentBuildError(f"{key}: {message}", context=context, hint=hint)

    name = data.get("name")
    if name is not None and (not isinstance(name, (str, int, float)) or isinstance(name, bool)):
        raise fail("name", "expected a string")

    channels = data.get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) and c.strip() for c in channels):
        raise fail("channels", "expected a list of channel names or URLs", "for example: channels: [conda-forge]")

    deps: list[str] = []
    pip: list[str] = []
    raw_deps = data.get("dependencies") or []
    if not isinstance(raw_deps, list):
        raise fail("dependencies", "expected a list of packages", "for example: dependencies: [python=3.11, numpy]")
    for i, item in enumerate(raw_deps):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)
        if isinstance(item, str):
            if not item.strip():
                raise fail(f"dependencies[{i}]", "empty package spec")
            deps.append(_normalise(item))
        elif isinstance(item, dict) and list(item) == ["pip"]:
            entries = item["pip"] or []
            if not isinstance(entries, list) or not all(isinstance(p, str) and p.strip() for p in entries):
                raise fail(f"dependencies[{i}].pip", "expected a list of pip requirements",
                           "for example: - pip: [requests>=2]")
            pip.extend(p.strip() for p in entries)
        else:
            shown = ", ".join(map(str, item)) if isinstance(item, dict) else repr(item)
            raise fail(f"dependencies[{i}]", f"expected a package spec or a 'pip:' list, got {shorten(shown)}")

    variables = data.get("variables") or {}
    if not isinstance(variables, dict):
        raise fail("variables", "expected a mapping of variable names to values")
    for key, value in variables.items():
        if not isinstance(key, str) or not key or "=" in key or (value is not None and not isinstance(
                value, (str, int, float))):
            raise fail(f"variables.{shorten(str(key), 60)}", "expected a variable name and a string value")

    return CondaSpec(
        file=path,
        name=None if name is None else str(name),
        channels=tuple(c.strip() for c in channels),
        dependencies=tuple(deps),
        pip=tuple(pip),
        variables={str(k): "" if v is None else str(v) for k, v in variables.items()},
        unknown_keys=tuple(str(k) for k in data if k not in KNOWN_KEYS),
    )
