"""What a registration hook returns: a small record naming a class, not the class.

mlexec reads the record (name, kind, aliases, what it handles ...) to list,
choose and check plugins, and imports the class only when a run selects it.
So an installed plugin costs a run that does not use it nothing but the import
of its ``plugin`` module, which holds the hooks and these records.

This module imports only attrs: ``plugin.py`` modules import it at start-up.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable

import attrs
from attrs import frozen

#: The kinds of class a plugin can register, as ``mlexec plugins`` labels them,
#: with the registration hook that registers each.
KINDS: dict[str, str] = {
    "backend": "mlexec_backends",
    "env-manager": "mlexec_environment_managers",
    "image-builder": "mlexec_image_builders",
}


def _kinds(values: Iterable[Any]) -> frozenset[str]:
    if isinstance(values, str):
        values = (values,)
    return frozenset(str(getattr(v, "value", v)) for v in values)


def _names(values: Iterable[str]) -> tuple[str, ...]:
    return (values,) if isinstance(values, str) else tuple(values)


@frozen
class Registration:
    """One environment manager, backend or image builder, described without importing it.

    Return these from :func:`~mlexec_core.plugin.hookspecs.mlexec_environment_managers`,
    :func:`~mlexec_core.plugin.hookspecs.mlexec_backends` and
    :func:`~mlexec_core.plugin.hookspecs.mlexec_image_builders`::

        Registration(kind="env-manager", name="conda", path="mlexec_conda.manager:CondaEnvironment",
                     handles={"conda"}, default_for={"conda"}, description="...")

    The class at ``path`` is imported when it is first needed; it must be a
    subclass of the interface for ``kind``, and if it sets ``name`` that must
    be the record's ``name``.  The record's ``aliases``, ``handles``,
    ``default_for`` and ``priority`` are what mlexec uses, not the class's.
    """

    #: "env-manager", "backend" or "image-builder".
    kind: str
    #: The ``--env-manager`` / ``--backend`` / image builder name.
    name: str
    #: Where the class lives: ``"package.module:ClassName"`` (``"package.module.ClassName"`` works too).
    path: str
    #: More names that select it (environment managers only: ``("uv",)``).
    aliases: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: Environment managers: the project kinds it can prepare ("python", "conda", "docker", "none" or EnvKind).
    handles: frozenset[str] = attrs.field(default=frozenset(), converter=_kinds)
    #: Environment managers: the kinds for which it is chosen when the user names no manager.
    default_for: frozenset[str] = attrs.field(default=frozenset(), converter=_kinds)
    #: Environment managers: among several defaults for one kind, the highest wins (built-ins use 0).
    priority: int = 100
    #: One line for humans (``mlexec plugins``, errors listing what is installed).
    description: str = ""

    @classmethod
    def of(cls, kind: str, klass: type) -> Registration:
        """The record for a class registered directly (the older way, still accepted)."""
        return cls(
            kind=kind,
            name=getattr(klass, "name", None) or "",
            path=f"{klass.__module__}:{klass.__qualname__}",
            aliases=tuple(getattr(klass, "aliases", ()) or ()),
            handles=getattr(klass, "handles", ()) or (),
            default_for=getattr(klass, "default_for", ()) or (),
            priority=getattr(klass, "priority", 100),
            description=getattr(klass, "description", "") or "",
        )

    @property
    def module(self) -> str:
        return self._split()[0]

    def _split(self) -> tuple[str, str]:
        if ":" in self.path:
            module, _, attr = self.path.partition(":")
        else:
            module, _, attr = self.path.rpartition(".")
        return module, attr

    def problem(self) -> str | None:
        """What is wrong with the record itself, or ``None``."""
        if self.kind not in KINDS:
            return f"kind {self.kind!r} is not one of {', '.join(KINDS)}"
        if not isinstance(self.name, str) or not self.name:
            return "it has no name"
        module, attr = self._split()
        if not module or not attr:
            return f"path {self.path!r} is not 'package.module:ClassName'"
        return None

    def load(self) -> type:
        """Import the class (raises what the import raises)."""
        module, attr = self._split()
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
