"""Building the plugin manager, calling its hooks, and collecting what plugins register.

:func:`build_plugins` is a function, not an import side effect: each call
gives a fresh, independent set of plugins, so tests register exactly the
plugins they mean to and never whatever happens to be installed.

**How hooks are called.**  :class:`Plugins` has one method per hook
(:meth:`~Plugins.run_create`, :meth:`~Plugins.run_started`,
:meth:`~Plugins.run_status`, :meth:`~Plugins.run_tags`,
:meth:`~Plugins.run_finished`; the registration hooks behind
:meth:`~Plugins.registered`, :meth:`~Plugins.backends` ...), and nothing else in
mlexec names a hook.  Every call goes through pluggy's ``HookCaller``, so
``wrapper=True`` / ``hookwrapper=True`` implementations run and pluggy's
tracing (``add_hookcall_monitoring``, ``enable_tracing``) sees each call.

**One failing plugin is reported, the run goes on.**  pluggy stops a hook call at
the first implementation that raises, and a wrapper cannot resume the ones
after it; so isolation cannot be a wrapper implementation.  Instead
:meth:`Plugins._each` (the one place) calls the hook once per implementation,
each time through a pluggy ``HookCaller`` holding that implementation and every
wrapper (``PluginManager.subset_hook_caller``), and hands back each plugin's
result or exception.  The lifecycle hooks that return nothing use it through
:meth:`Plugins._notify`, which turns an exception into a warning naming the
plugin; the registration hooks use it to know which plugin registered what.
So a wrapper of those hooks runs around each implementation in turn.
``mlexec_run_create`` (``firstresult``) is one plain call: its
``TrackingError`` is meant to stop the run.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, TypeVar

import attrs
import pluggy
from attrs import frozen

from mlexec_core.errors import MlexecError, PluginError
from mlexec_core.plugin import hookspecs
from mlexec_core.plugin.interfaces import (
    Backend,
    Context,
    EnvironmentManager,
    ImageBuilder,
    PluginRegistry,
    Reporter,
    SilentReporter,
)
from mlexec_core.plugin.registration import KINDS, Registration

if TYPE_CHECKING:
    from mlexec_core.pipeline.plan import RunPlan, RunRecord, RunStatus

ENTRY_POINT_GROUP = "mlexec"
DISABLE_VAR = "MLEXEC_DISABLE_PLUGINS"

#: Built-in plugins: (name, module), registered exactly like installed ones.
BUILTINS: tuple[tuple[str, str], ...] = (
    ("local", "mlexec_core.builtins.local_plugin"),
    ("mlflow", "mlexec_core.builtins.mlflow.hooks"),
    ("sweep", "mlexec_core.builtins.sweep_plugin"),
)

T = TypeVar("T")

_KIND_WORDS = {"env-manager": "environment manager", "backend": "backend", "image-builder": "image builder",
               "search-strategy": "search strategy"}
#: The option that names each kind, for an unknown name's error.
_OPTIONS = {"env-manager": "--env-manager", "backend": "--backend", "image-builder": "image builder",
            "search-strategy": "--strategy"}
#: How `mlexec plugins` labels each kind.
_LABELS = {"env-manager": "env-manager", "backend": "backend", "image-builder": "image-builder",
           "search-strategy": "sweep-strategy"}


def _base(kind: str) -> type:
    """The interface each kind's classes implement (the sweep modules are imported only for a strategy)."""
    if kind == "search-strategy":
        from mlexec_core.sweeps.strategy import SearchStrategy

        return SearchStrategy
    return {"env-manager": EnvironmentManager, "backend": Backend, "image-builder": ImageBuilder}[kind]


@frozen
class PluginInfo:
    """One plugin as ``mlexec plugins`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    module: str | None
    builtin: bool = False
    #: "loaded", "disabled" or "error".
    state: str = "loaded"
    error: str | None = None
    #: What it provides: "backend: local", "env-manager: virtualenv (uv)", "hook: mlexec_run_create" ...
    provides: tuple[str, ...] = ()


def disabled_plugins(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    raw = (environ if environ is not None else os.environ).get(DISABLE_VAR, "")
    return frozenset(n.strip() for n in raw.replace(" ", ",").split(",") if n.strip())


class Plugins:
    """The loaded plugins and what they register, by name."""

    def __init__(self, pm: pluggy.PluginManager, reporter: Reporter | None = None) -> None:
        self.pm = pm
        self.context = Context(reporter=reporter or SilentReporter(), plugins=PluginRegistry(self))
        self._infos: dict[str, PluginInfo] = {}
        self._cache: dict[str, Any] = {}

    def set_reporter(self, reporter: Reporter) -> None:
        """Hand ``reporter`` to every plugin object created from now on."""
        self.context = Context(reporter=reporter, plugins=PluginRegistry(self))

    # -- registration ------------------------------------------------------------------

    def register(self, module_or_obj: Any, name: str, *, distribution: str | None = None,
                 version: str | None = None, builtin: bool = False) -> None:
        """Register a plugin (a module or object with ``@hookimpl`` functions)."""
        try:
            self.pm.register(module_or_obj, name=name)
            self.pm.check_pending()
        except (ValueError, pluggy.PluginValidationError) as exc:
            if self.pm.is_registered(module_or_obj):
                self.pm.unregister(module_or_obj)
            self._record(name, distribution, version, _module_name(module_or_obj), builtin, "error", _reason(exc))
            return
        self._cache.clear()
        self._record(name, distribution, version, _module_name(module_or_obj), builtin, "loaded", None)

    def _record(self, name, distribution, version, module, builtin, state, error) -> None:
        self._infos[name] = PluginInfo(name, distribution, version, module, builtin, state, error)

    def record_error(self, name: str, distribution: str | None, version: str | None, module: str | None,
                     error: str) -> None:
        self._record(name, distribution, version, module, False, "error", error)

    def record_disabled(self, name: str, distribution: str | None, version: str | None, module: str | None,
                        builtin: bool = False) -> None:
        self._record(name, distribution, version, module, builtin, "disabled", None)

    # -- calling hooks -------------------------------------------------------------------
    #
    # One method per hook (as tox's plugin manager has), each calling through pluggy's
    # HookCaller, so wrapper implementations (wrapper=True, hookwrapper=True) run and
    # pluggy's tracing (add_hookcall_monitoring, enable_tracing) sees every call.

    def _each(self, caller: pluggy.HookCaller, **kwargs: Any) -> Iterator[tuple[str, list[Any], Exception | None]]:
        """Call ``caller`` once per plugin that implements it, in pluggy's calling order;
        yield ``(plugin name, results, error)`` for each.

        Each call goes through pluggy (a HookCaller holding that one implementation and
        every wrapper), so one implementation raising cannot stop the others, and the
        caller learns which plugin returned what (a registration hook) or raised.
        """
        impls = [impl for impl in reversed(caller.get_hookimpls()) if not (impl.wrapper or impl.hookwrapper)]
        for impl in impls:
            others = [other.plugin for other in impls if other.plugin is not impl.plugin]
            one = self.pm.subset_hook_caller(caller.name, remove_plugins=others) if others else caller
            try:
                results = one(**kwargs)
            except Exception as exc:
                yield impl.plugin_name, [], exc
            else:
                yield impl.plugin_name, list(results or ()), None

    def _notify(self, caller: pluggy.HookCaller, **kwargs: Any) -> None:
        """Call a lifecycle hook that returns nothing: every implementation runs, and one
        that raises is reported as a warning naming its plugin (so a broken notifier never
        leaves a run RUNNING); the run goes on."""
        for plugin_name, _, exc in self._each(caller, **kwargs):
            if exc is None:
                continue
            if isinstance(exc, MlexecError):
                self.context.reporter.warning(f"plugin {plugin_name!r}, {caller.name}: {exc}")
            else:
                self.context.reporter.warning(f"plugin {plugin_name!r} failed in {caller.name}: {_reason(exc)}")

    def run_create(self, plan: RunPlan) -> RunRecord | None:
        """:func:`~mlexec_core.plugin.hookspecs.mlexec_run_create`: the first tracker's record, or
        ``None``.  Not isolated: a :class:`~mlexec_core.errors.TrackingError` stops the run
        before anything runs."""
        return self.pm.hook.mlexec_run_create(plan=plan, context=self.context)

    def run_started(self, run: RunRecord, plan: RunPlan) -> None:
        """:func:`~mlexec_core.plugin.hookspecs.mlexec_run_started`."""
        self._notify(self.pm.hook.mlexec_run_started, run=run, plan=plan)

    def run_status(self, run: RunRecord, plan: RunPlan, status: RunStatus) -> None:
        """:func:`~mlexec_core.plugin.hookspecs.mlexec_run_status`."""
        self._notify(self.pm.hook.mlexec_run_status, run=run, plan=plan, status=status)

    def run_record(self, run: RunRecord, plan: RunPlan, files: Mapping[str, bytes]) -> None:
        """:func:`~mlexec_core.plugin.hookspecs.mlexec_run_record`."""
        self._notify(self.pm.hook.mlexec_run_record, run=run, plan=plan, files=files)

    def run_restarted(self, run: RunRecord, plan: RunPlan, attempt: int, reason: str) -> None:
        """:func:`~mlexec_core.plugin.hookspecs.mlexec_run_restarted`."""
        self._notify(self.pm.hook.mlexec_run_restarted, run=run, plan=plan, attempt=attempt, reason=reason)

    def run_tags(self, run: RunRecord, tags: Mapping[str, str]) -> None:
        """:func:`~mlexec_core.plugin.hookspecs.mlexec_run_tags`."""
        self._notify(self.pm.hook.mlexec_run_tags, run=run, tags=tags)

    def run_finished(self, run: RunRecord, plan: RunPlan, status: RunStatus, reason: str | None) -> None:
        """:func:`~mlexec_core.plugin.hookspecs.mlexec_run_finished`."""
        self._notify(self.pm.hook.mlexec_run_finished, run=run, plan=plan, status=status, reason=reason)

    # -- what is registered --------------------------------------------------------------
    #
    # Registration hooks return Registration records, the only place a plugin writes
    # what mlexec knows about its classes.  Records are collected and checked without
    # importing anything; a class is imported only when it is asked for by name
    # (environment_manager(), backend(), image_builder(), search_strategy(), load())
    # or when a whole table of classes is.

    def _collect(self, kind: str) -> dict[str, _Entry]:
        if kind in self._cache:
            return self._cache[kind]
        hook_name = KINDS[kind]
        found: dict[str, _Entry] = {}
        for plugin_name, results, exc in reversed(list(self._each(getattr(self.pm.hook, hook_name)))):
            # registration order: the first plugin registered is named first in an error
            if exc is not None:  # a plugin bug: say whose
                raise PluginError(f"plugin {plugin_name!r} failed in {hook_name}: {_reason(exc)}") from exc
            for item in _items(results):
                entry = _entry(item, kind, plugin_name, hook_name)
                for name in (entry.record.name, *entry.record.aliases):
                    if name in found and found[name].record.path != entry.record.path:
                        raise PluginError(
                            f"two plugins register the {_KIND_WORDS[kind]} {name!r}: "
                            f"{found[name].plugin!r} and {plugin_name!r}",
                            hint=f"uninstall one, or block one with {DISABLE_VAR}={plugin_name}",
                        )
                    found.setdefault(name, entry)
        self._cache[kind] = found
        return found

    def registered(self, kind: str) -> dict[str, Registration]:
        """Every name (and alias) of ``kind`` ("env-manager", "backend", "image-builder",
        "search-strategy") to its :class:`~mlexec_core.plugin.registration.Registration`;
        imports no class."""
        return {name: entry.record for name, entry in self._collect(kind).items()}

    def record(self, kind: str, name: str) -> Registration:
        """The record registered as ``name`` (or an alias) for ``kind``; imports nothing.

        An unknown name is a :class:`PluginError` that lists what is installed and
        suggests the closest name.
        """
        return self._lookup(self.registered(kind), name, _KIND_WORDS[kind], _OPTIONS[kind])

    def load(self, kind: str, name: str) -> type:
        """The class registered as ``name`` for ``kind``, imported now if it was not yet.

        An unknown name, or a class that does not import, is a :class:`PluginError`
        naming the plugin.
        """
        entries = self._collect(kind)
        self._lookup(entries, name, _KIND_WORDS[kind], _OPTIONS[kind])
        return entries[name].load(base=_base(kind))

    def create(self, kind: str, name: str) -> Any:
        """A new instance of the class registered as ``name``, knowing its record
        (``obj.registration``, ``obj.name``)."""
        cls = self.load(kind, name)
        return cls(attrs.evolve(self.context, registration=self._collect(kind)[name].record))

    def _classes(self, kind: str) -> dict[str, type]:
        return {name: self.load(kind, name) for name in self._collect(kind)}

    def environment_managers(self) -> dict[str, type[EnvironmentManager]]:
        """Every ``--env-manager`` value (names and aliases) to its class (imports them all:
        use :meth:`registered` to choose without importing)."""
        return self._classes("env-manager")

    def backends(self) -> dict[str, type[Backend]]:
        """Every ``--backend`` value to its class (imports them all)."""
        return self._classes("backend")

    def image_builders(self) -> dict[str, type[ImageBuilder]]:
        """Every image builder name to its class (imports them all)."""
        return self._classes("image-builder")

    def search_strategies(self) -> dict[str, type]:
        """Every ``--strategy`` name to its class (imports them all)."""
        return self._classes("search-strategy")

    def environment_manager(self, name: str) -> EnvironmentManager:
        return self.create("env-manager", name)

    def backend(self, name: str) -> Backend:
        return self.create("backend", name)

    def search_strategy(self, name: str) -> Any:
        """A new :class:`~mlexec_core.sweeps.strategy.SearchStrategy` (``--strategy name``)."""
        return self.create("search-strategy", name)

    def image_builder(self, name: str | None = None) -> ImageBuilder:
        if name is None:
            builders = self._collect("image-builder")
            if not builders:
                raise PluginError(
                    "no image builder is installed", hint="install one, for example: pip install mlexec-docker"
                )
            name = sorted(builders)[0]
        return self.create("image-builder", name)

    @staticmethod
    def _lookup(table: Mapping[str, T], name: str, kind: str, option: str) -> T:
        if name in table:
            return table[name]
        import difflib

        close = difflib.get_close_matches(name, list(table), n=1)
        known = ", ".join(sorted(table)) or "none"
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise PluginError(
            f"unknown {kind} {name!r} ({option})",
            hint=f"{hint}installed: {known}. `mlexec plugins` lists what is installed.",
        )

    # -- for `mlexec plugins` ---------------------------------------------------------------

    def load_errors(self) -> list[PluginInfo]:
        """Plugins that failed to load (import error, bad hook)."""
        return [info for info in self._infos.values() if info.state == "error"]

    def versions(self) -> dict[str, str]:
        """Distribution -> version of every loaded plugin (a run's record keeps them)."""
        return {info.distribution or info.name: info.version or "" for info in self._infos.values()
                if info.state == "loaded"}

    def infos(self, *, import_classes: bool = False) -> list[PluginInfo]:
        """What ``mlexec plugins`` shows.  With ``import_classes``, every registered
        class is imported too, and a plugin whose class does not import is shown
        with state ``error`` (its plugin module alone imported fine)."""
        provides: dict[str, list[str]] = {}
        broken: dict[str, str] = {}
        for kind, hook_name in KINDS.items():
            label = _LABELS[kind]
            for pname, results, exc in reversed(list(self._each(getattr(self.pm.hook, hook_name)))):
                if exc is not None:  # shown, not raised, here
                    provides.setdefault(pname, []).append(f"{label}: error: {_reason(exc)}")
                    continue
                for item in _items(results):
                    try:
                        entry = _entry(item, kind, pname, hook_name)
                    except PluginError as exc:
                        provides.setdefault(pname, []).append(f"{label}: error: {exc.message}")
                        broken.setdefault(pname, exc.message)
                        continue
                    aliases = entry.record.aliases
                    provides.setdefault(pname, []).append(
                        f"{label}: {entry.record.name}" + (f" ({', '.join(aliases)})" if aliases else ""))
                    if import_classes:
                        try:
                            entry.load(_base(kind))
                        except PluginError as exc:
                            broken.setdefault(pname, exc.message)
        for plugin in self.pm.get_plugins():
            pname = self.pm.get_name(plugin)
            for caller in self.pm.get_hookcallers(plugin) or ():
                if caller.name.startswith("mlexec_run_"):
                    provides.setdefault(pname, []).append(f"hook: {caller.name}")
        out = []
        for info in self._infos.values():
            info = attrs.evolve(info, provides=tuple(provides.get(info.name, ())))
            if info.state == "loaded" and info.name in broken:
                info = attrs.evolve(info, state="error", error=broken[info.name])
            out.append(info)
        return out


@attrs.define
class _Entry:
    """A registered record, and its class once imported."""

    record: Registration
    plugin: str
    cls: type | None = None

    def load(self, base: type) -> type:
        if self.cls is not None:
            return self.cls
        rec = self.record
        what = f"plugin {self.plugin!r} registers the {_KIND_WORDS[rec.kind]} {rec.name!r} as {rec.path}"
        hint = f"reinstall the plugin, or block it with {DISABLE_VAR}={self.plugin}"
        try:
            cls = rec.load()
        except Exception as exc:
            raise PluginError(f"{what}, which does not import: {_reason(exc)}", hint=hint) from exc
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{what}, which is not a {base.__name__} subclass", hint=hint)
        own = getattr(cls, "name", None)  # a property of the interface, unless the class still sets one
        if isinstance(own, str) and own != rec.name:
            raise PluginError(f"{what}, whose own name is {own!r}", hint="make the record's name and the class's agree")
        self.cls = cls
        return cls


def _entry(item: Any, kind: str, plugin_name: str, hook_name: str) -> _Entry:
    """Check one thing a registration hook returned: it must be a good Registration."""
    if isinstance(item, Registration):
        problem = item.problem()
        if problem is None and item.kind != kind:
            problem = f"its kind is {item.kind!r}, but {hook_name} registers {kind!r}"
        if problem:
            raise PluginError(f"plugin {plugin_name!r} returned a bad Registration from {hook_name} "
                              f"({item.name or item.path!r}): {problem}")
        return _Entry(item, plugin_name)
    if isinstance(item, type):  # the older way: the class, its name and the rest as class attributes
        raise PluginError(
            f"plugin {plugin_name!r} registered {item.__name__} from {hook_name}, a class: return "
            f"Registration(kind={kind!r}, name=..., path={item.__name__}) instead (name, description and the "
            "rest go in the record, not on the class)",
            hint="docs/plugins.md, 'Registration records'")
    raise PluginError(f"plugin {plugin_name!r} registered {item!r} from {hook_name}, which is not a Registration")


def _items(results: list[Any]) -> list[Any]:
    """What one plugin's registration hook returned (pluggy leaves out a ``None``)."""
    return [item for result in results for item in (result or ())]


def _module_name(obj: Any) -> str | None:
    return getattr(obj, "__name__", None) or type(obj).__module__


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def build_plugins(
    *,
    builtins: bool = True,
    entry_points: bool = True,
    extra: Iterable[tuple[str, Any]] = (),
    disabled: Iterable[str] | None = None,
    reporter: Reporter | None = None,
) -> Plugins:
    """A fresh plugin manager with the built-ins, the installed plugins and ``extra``.

    :param builtins: register the built-in plugins (``local``, ``mlflow``).
    :param entry_points: load plugins installed in entry-point group ``mlexec``.
    :param extra: more ``(name, module_or_object)`` plugins (tests use this).
    :param disabled: names not to load; defaults to ``$MLEXEC_DISABLE_PLUGINS``.
    :param reporter: how plugin objects talk to the user (silent by default).
    """
    pm = pluggy.PluginManager("mlexec")
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(pm, reporter)
    blocked = disabled_plugins() if disabled is None else frozenset(disabled)
    dist = _own_distribution()

    if builtins:
        for name, module_name in BUILTINS:
            if name in blocked:
                plugins.record_disabled(name, dist[0], dist[1], module_name, builtin=True)
                continue
            plugins.register(importlib.import_module(module_name), name, distribution=dist[0],
                             version=dist[1], builtin=True)
    if entry_points:
        from mlexec_core.plugin.entrypoints import entry_points as installed

        for ep in sorted(installed(ENTRY_POINT_GROUP), key=lambda e: e.name):
            dname, dversion = ep.dist_name, ep.dist_version
            if ep.name in blocked:
                plugins.record_disabled(ep.name, dname, dversion, ep.value)
                continue
            if pm.has_plugin(ep.name):
                plugins.record_error(ep.name, dname, dversion, ep.value,
                                     f"the name {ep.name!r} is already taken by another plugin")
                continue
            try:
                module = ep.load()
            except Exception as exc:  # reported, the rest still load
                plugins.record_error(ep.name, dname, dversion, ep.value, _reason(exc))
                continue
            plugins.register(module, ep.name, distribution=dname, version=dversion)
    for name, module in extra:
        if name in blocked:
            plugins.record_disabled(name, None, None, _module_name(module))
            continue
        plugins.register(module, name)
    return plugins


def _own_distribution() -> tuple[str, str | None]:
    from mlexec_core.version import __version__

    return "mlexec", __version__
