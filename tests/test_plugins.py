"""The plugin manager: registration, entry points, broken and duplicate plugins, blocking."""

from __future__ import annotations

import json
import sys
import textwrap
import types

import pytest

import mlexec_core
from mlexec_core.testing import assert_no_traceback
from mlexec_core.errors import PluginError
from mlexec_core.pipeline.plan import RunStatus
from mlexec_core.plugin import Registration, hookimpl
from mlexec_core.plugin.interfaces import Backend, EnvironmentManager, PreparedEnvironment, SubmittedJob
from mlexec_core.plugin.manager import build_plugins
from mlexec_core.project.model import EnvKind


def plugin_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


class DoneJob(SubmittedJob):
    def __init__(self, status=RunStatus.FINISHED):
        self.status = status
        self.tags = {"example.job": "done"}

    def wait(self):
        return self.status

    def get_status(self):
        return self.status

    def cancel(self, signum=None):
        self.status = RunStatus.KILLED


class RecordingBackend(Backend):
    submitted: list = []

    def parse_config(self, config, base_dir):
        return dict(config)

    def submit(self, plan, run, prepared):
        RecordingBackend.submitted.append((plan, run, prepared))
        return DoneJob()


class FakePythonEnv(EnvironmentManager):
    def prepare(self, plan):
        return PreparedEnvironment(name=plan.env_manager_requested, env={"FAKE_ENV": "1"},
                                   tags={"example.env": "yes"})


RECORDING = Registration(kind="backend", name="recording", path=RecordingBackend)
FAKE_PYTHON_ENV = Registration(kind="env-manager", name="fakevenv", aliases=("fakeuv",), path=FakePythonEnv,
                               handles={EnvKind.PYTHON, EnvKind.NONE}, default_for={EnvKind.PYTHON})


@pytest.fixture
def python_project(project):
    return project("name: p\npython_env: python_env.yaml\nentry_points: {main: {command: 'echo hi'}}\n",
                   {"python_env.yaml": "python: '3.11'\n"})


def test_plugins_registered_in_a_test_drive_a_run(python_project, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    RecordingBackend.submitted.clear()
    module = plugin_module("example", mlexec_backends=lambda: [RECORDING],
                           mlexec_environment_managers=lambda: [FAKE_PYTHON_ENV])
    plugins = build_plugins(entry_points=False, extra=[("example", module)])
    submitted = mlexec_core.run(str(python_project), backend="recording", backend_config={"k": "v"},
                                plugins=plugins)
    (plan, run, prepared), = RecordingBackend.submitted
    assert plan.env_manager == "fakevenv" and plan.backend_config == {"k": "v"}
    assert prepared.env == {"FAKE_ENV": "1"}
    assert run.env["MLFLOW_RUN_ID"] == submitted.run_id
    stored = store.only_run()
    assert stored.info.status == "FINISHED"
    assert stored.data.tags["mlflow.project.backend"] == "recording"
    assert stored.data.tags["mlflow.project.env"] == "fakevenv"
    assert stored.data.tags["example.env"] == "yes" and stored.data.tags["example.job"] == "done"


def test_alias_selects_manager_and_is_the_env_tag(python_project, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    module = plugin_module("example", mlexec_backends=lambda: [RECORDING],
                           mlexec_environment_managers=lambda: [FAKE_PYTHON_ENV])
    plugins = build_plugins(entry_points=False, extra=[("example", module)])
    mlexec_core.run(str(python_project), backend="recording", env_manager="fakeuv", plugins=plugins)
    assert store.only_run().data.tags["mlflow.project.env"] == "fakeuv"


def test_duplicate_backend_name_is_an_error_naming_both():
    one = plugin_module("one", mlexec_backends=lambda: [RECORDING])

    class Other(RecordingBackend):
        pass

    two = plugin_module("two", mlexec_backends=lambda: [Registration(kind="backend", name="recording", path=Other)])
    plugins = build_plugins(entry_points=False, extra=[("one", one), ("two", two)])
    with pytest.raises(PluginError, match="two plugins register the backend 'recording': 'one' and 'two'"):
        plugins.backends()


def test_builtin_backend_cannot_be_shadowed_silently():
    local = Registration(kind="backend", name="local", path=RecordingBackend)
    plugins = build_plugins(entry_points=False, extra=[("mine", plugin_module("mine", mlexec_backends=lambda: [local]))])
    with pytest.raises(PluginError, match="'local' and 'mine'"):
        plugins.backend("local")


def test_registering_a_non_class_is_an_error():
    plugins = build_plugins(entry_points=False, extra=[("bad", plugin_module("bad", mlexec_backends=lambda: ["x"]))])
    with pytest.raises(PluginError, match="plugin 'bad' registered 'x'"):
        plugins.backends()


def test_misspelt_hook_is_reported_not_registered():
    module = types.ModuleType("typo")
    module.mlexec_backend = hookimpl(lambda: [RECORDING])  # missing s
    plugins = build_plugins(entry_points=False, extra=[("typo", module)])
    (info,) = [i for i in plugins.infos() if i.name == "typo"]
    assert info.state == "error" and "mlexec_backend" in info.error
    assert "recording" not in plugins.backends()


def test_disabled_builtin_and_extra(monkeypatch):
    plugins = build_plugins(entry_points=False, disabled=["mlflow", "example"],
                            extra=[("example", plugin_module("example", mlexec_backends=lambda: [RECORDING]))])
    states = {i.name: i.state for i in plugins.infos()}
    assert states == {"local": "loaded", "mlflow": "disabled", "sweep": "loaded", "example": "disabled"}
    assert "recording" not in plugins.backends()


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Two plugins 'installed' as a real distribution on sys.path: one breaks on import."""
    site = tmp_path / "site"
    dist = site / "mlexec_demo_plugins-1.2.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlexec-demo-plugins\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[mlexec]\nbroken = demo_broken\ngood = demo_good\n")
    (site / "demo_broken.py").write_text("import no_such_module_anywhere\n")
    (site / "demo_good.py").write_text(textwrap.dedent("""
        from mlexec_core.builtins.local import LocalBackend
        from mlexec_core.plugin import Registration, hookimpl

        class GoodBackend(LocalBackend):
            pass

        @hookimpl
        def mlexec_backends():
            return [Registration(kind="backend", name="good", path=GoodBackend,
                                 description="local, under another name")]
    """))
    monkeypatch.syspath_prepend(str(site))
    for name in ("demo_broken", "demo_good"):
        sys.modules.pop(name, None)
    return site


def test_broken_entry_point_is_reported_and_the_rest_load(installed):
    plugins = build_plugins()
    infos = {i.name: i for i in plugins.infos()}
    broken = infos["broken"]
    assert broken.state == "error" and broken.distribution == "mlexec-demo-plugins" and broken.version == "1.2.3"
    assert "ModuleNotFoundError" in broken.error and "no_such_module_anywhere" in broken.error
    assert infos["good"].state == "loaded" and infos["good"].provides == ("backend: good",)
    assert "good" in plugins.backends()


def test_cli_plugins_table_and_json(mlexec, installed, cli_env):
    env = {"PYTHONPATH": f"{installed}:{cli_env['PYTHONPATH']}"}
    data = json.loads(mlexec("plugins", "--json", env=env, check=0).stdout)
    by_name = {p["name"]: p for p in data}
    assert by_name["local"]["builtin"] and "backend: local" in by_name["local"]["provides"]
    assert "env-manager: local" in by_name["local"]["provides"]
    assert "hook: mlexec_run_create" in by_name["mlflow"]["provides"]
    assert by_name["broken"]["state"] == "error" and by_name["broken"]["distribution"] == "mlexec-demo-plugins"
    table = mlexec("plugins", env=env, check=0).stdout
    assert "broken\tmlexec-demo-plugins\t1.2.3\t\terror: ModuleNotFoundError" in table
    blocked = json.loads(mlexec("plugins", "--json", env={**env, "MLEXEC_DISABLE_PLUGINS": "broken"},
                                check=0).stdout)
    assert {p["name"]: p["state"] for p in blocked}["broken"] == "disabled"


def test_cli_run_warns_about_broken_plugin_and_runs(mlexec, installed, cli_env, project, store):
    proj = project("entry_points: {main: {command: 'echo ok'}}\n")
    proc = mlexec("run", proj, "-b", "good", "--env-manager", "local",
                  env={"PYTHONPATH": f"{installed}:{cli_env['PYTHONPATH']}"}, check=0)
    assert proc.stdout.strip() == "ok"
    assert "plugin 'broken' (mlexec-demo-plugins) did not load: ModuleNotFoundError" in proc.stderr
    assert_no_traceback(proc)
    assert store.only_run().data.tags["mlflow.project.backend"] == "good"


def test_a_failing_lifecycle_plugin_does_not_leave_the_run_running(project, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)

    def boom(run, status):
        raise RuntimeError("notifier down")

    warnings = []

    class Collect:
        def info(self, m): pass
        def success(self, m): pass
        def warning(self, m): warnings.append(m)
        def status(self, m):
            import contextlib
            return contextlib.nullcontext()

    plugins = build_plugins(entry_points=False, reporter=Collect(),
                            extra=[("notifier", plugin_module("notifier", mlexec_run_finished=boom))])
    mlexec_core.run(str(project("entry_points: {main: {command: 'true'}}\n")), env_manager="local", plugins=plugins)
    assert store.only_run().info.status == "FINISHED"
    assert warnings == ["plugin 'notifier' failed in mlexec_run_finished: RuntimeError: notifier down"]


def test_lifecycle_hooks_go_through_pluggy_wrappers_and_tracing_see_them(project, store, monkeypatch):
    """A wrapper=True implementation runs around the call, pluggy's hook-call monitoring sees it,
    and a failing plugin is still reported while the next one runs."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    seen = []

    def wrap(run, status):
        seen.append(("before", status.value))
        result = yield
        seen.append(("after", status.value))
        return result

    def boom(run, status):
        raise RuntimeError("notifier down")

    def fine(run, status):
        seen.append(("fine", status.value))

    wrapper = types.ModuleType("wrapper")
    wrapper.mlexec_run_finished = hookimpl(wrapper=True)(wrap)
    warnings = []
    plugins = build_plugins(entry_points=False,
                            extra=[("fine", plugin_module("fine", mlexec_run_finished=fine)),
                                   ("notifier", plugin_module("notifier", mlexec_run_finished=boom)),
                                   ("wrapper", wrapper)])
    plugins.context.reporter.warning = warnings.append  # SilentReporter: an instance attribute will do
    traced = []
    undo = plugins.pm.add_hookcall_monitoring(lambda name, impls, kwargs: traced.append(name),
                                              lambda outcome, name, impls, kwargs: None)
    try:
        mlexec_core.run(str(project("entry_points: {main: {command: 'true'}}\n")), env_manager="local",
                        plugins=plugins)
    finally:
        undo()
    assert store.only_run().info.status == "FINISHED"
    assert ("fine", "FINISHED") in seen and ("before", "FINISHED") in seen and ("after", "FINISHED") in seen
    assert warnings == ["plugin 'notifier' failed in mlexec_run_finished: RuntimeError: notifier down"]
    assert "mlexec_run_create" in traced and "mlexec_run_finished" in traced and "mlexec_run_tags" in traced


def test_registered_class_without_name_is_a_plugin_error():
    """A class is not a registration: the record holds its name (the older way, a class with
    class attributes, is refused with the record to write instead)."""
    class Nameless(Backend):
        def submit(self, plan, run, prepared):
            raise AssertionError

    plugins = build_plugins(entry_points=False,
                            extra=[("nameless", plugin_module("nameless", mlexec_backends=lambda: [Nameless]))])
    with pytest.raises(PluginError, match=r"registered Nameless from mlexec_backends, a class: return "
                                          r"Registration\(kind='backend', name=..., path=Nameless\)"):
        plugins.backends()
    nameless = plugin_module("nameless", mlexec_backends=lambda: [Registration(kind="backend", name="",
                                                                               path=Nameless)])
    with pytest.raises(PluginError, match="it has no name"):
        build_plugins(entry_points=False, extra=[("nameless", nameless)]).backends()


def test_signal_while_the_run_is_being_created_still_stops_the_job(project, cli_env, store, tmp_path):
    """A SIGTERM that lands between creating the run and starting the job is held, then acted on."""
    site = tmp_path / "site"
    dist = site / "mlexec_sigterm-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlexec-sigterm\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mlexec]\nsigterm = demo_sigterm\n")
    (site / "demo_sigterm.py").write_text(textwrap.dedent("""
        import os, signal
        from mlexec_core.plugin import hookimpl

        @hookimpl
        def mlexec_run_tags(run, tags):
            if "mlflow.project.backend" in tags:  # the first tags: the run exists, the job not yet
                os.kill(os.getpid(), signal.SIGTERM)
    """))
    proj = project("entry_points: {main: {command: 'echo $$ > job.pid; exec sleep 300'}}\n")
    import subprocess
    from mlexec_core.testing import MLEXEC

    proc = subprocess.run([*MLEXEC, "run", str(proj), "--env-manager", "local"], capture_output=True, text=True,
                          env={**cli_env, "PYTHONPATH": f"{site}:{cli_env['PYTHONPATH']}"}, timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert_no_traceback(proc)
    assert store.only_run().info.status == "KILLED"
    assert _processes_in(proj) == []  # the job was really stopped, not left running


def _processes_in(directory) -> list[int]:
    """Live processes whose working directory is ``directory`` (the job runs in the project)."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") == str(directory):
                state = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_command_env_order():
    from mlexec_core.pipeline.plan import RunRecord
    from mlexec_core.plugin.interfaces import command_env

    env = command_env(
        {"PATH": "/usr/bin", "VIRTUAL_ENV": "/old", "KEEP": "1", "MLFLOW_RUN_ID": "stale"},
        PreparedEnvironment(name="x", env={"A": "b"}, path_prepend=("/env/bin",), unset=("VIRTUAL_ENV",)),
        RunRecord(run_id="r1", env={"MLFLOW_RUN_ID": "r1"}),
    )
    assert env == {"PATH": "/env/bin:/usr/bin", "KEEP": "1", "A": "b", "MLFLOW_RUN_ID": "r1"}


# -- records: classes imported only when selected ---------------------------------------


@pytest.fixture
def lazy_installed(tmp_path, monkeypatch):
    """An installed plugin whose hooks return records: one class imports (and says so
    in a file when it does), one class's module is broken."""
    site = tmp_path / "lazysite"
    dist = site / "mlexec_lazy-0.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlexec-lazy\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[mlexec]\nlazy = lazy_hooks\n")
    (site / "lazy_hooks.py").write_text(textwrap.dedent("""
        from mlexec_core.plugin import Registration, hookimpl

        @hookimpl
        def mlexec_backends():
            return [Registration(kind="backend", name="lazy", path="lazy_impl:LazyBackend",
                                 description="local, imported late"),
                    Registration(kind="backend", name="lazy-broken", path="lazy_broken_impl:Nope")]

        @hookimpl
        def mlexec_environment_managers():
            return [Registration(kind="env-manager", name="lazyenv", path="lazy_impl:LazyEnv",
                                 handles={"none"}, default_for={"none"}, priority=-5)]
    """))
    marker = tmp_path / "imported.txt"
    (site / "lazy_impl.py").write_text(textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(marker)!r}).open("a").write("imported\\n")
        from mlexec_core.builtins.local import LocalBackend, LocalEnvironment

        class LazyBackend(LocalBackend):
            name = "lazy"

        class LazyEnv(LocalEnvironment):
            name = "lazyenv"
    """))
    (site / "lazy_broken_impl.py").write_text("import no_such_module_for_lazy\n")
    monkeypatch.syspath_prepend(str(site))
    for name in ("lazy_hooks", "lazy_impl", "lazy_broken_impl"):
        sys.modules.pop(name, None)
    return site, marker


def test_records_are_listed_without_importing_the_classes(lazy_installed):
    site, marker = lazy_installed
    plugins = build_plugins()
    records = plugins.registered("backend")
    assert records["lazy"].description == "local, imported late" and "lazy-broken" in records
    assert records["local"].path == "mlexec_core.builtins.local:LocalBackend"
    assert plugins.registered("env-manager")["uv"].name == "virtualenv"  # an installed plugin's alias
    assert "lazy_impl" not in sys.modules and not marker.exists()
    assert type(plugins.backend("lazy")).__name__ == "LazyBackend"
    assert marker.read_text() == "imported\n"
    with pytest.raises(PluginError, match=r"plugin 'lazy' registers the backend 'lazy-broken' as "
                                          r"lazy_broken_impl:Nope, which does not import: ModuleNotFoundError"):
        plugins.backend("lazy-broken")


def test_cli_run_imports_only_what_it_uses(mlexec, lazy_installed, cli_env, project, store):
    site, marker = lazy_installed
    env = {"PYTHONPATH": f"{site}:{cli_env['PYTHONPATH']}"}
    proj = project("entry_points: {main: {command: 'echo ok'}}\n")
    proc = mlexec("run", proj, "--env-manager", "local", env=env, check=0)
    assert proc.stdout.strip() == "ok" and "did not load" not in proc.stderr
    assert not marker.exists()  # neither lazy class was imported, nor the broken module
    proc = mlexec("run", proj, "-b", "lazy", "--env-manager", "lazyenv", env=env, check=0)
    assert marker.read_text() == "imported\n"
    assert store.runs()[0].data.tags["mlflow.project.backend"] == "lazy"


def test_cli_selecting_a_class_that_does_not_import_is_one_error(mlexec, lazy_installed, cli_env, project, store):
    site, _ = lazy_installed
    env = {"PYTHONPATH": f"{site}:{cli_env['PYTHONPATH']}"}
    proj = project("entry_points: {main: {command: 'echo ok'}}\n")
    proc = mlexec("run", proj, "-b", "lazy-broken", "--env-manager", "local", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "backend 'lazy-broken' as lazy_broken_impl:Nope, which does not import" in proc.stderr
    assert "MLEXEC_DISABLE_PLUGINS=lazy" in proc.stderr
    assert_no_traceback(proc)
    assert store.runs() == []


def test_cli_plugins_reports_a_class_that_does_not_import(mlexec, lazy_installed, cli_env):
    site, _ = lazy_installed
    env = {"PYTHONPATH": f"{site}:{cli_env['PYTHONPATH']}"}
    by_name = {p["name"]: p for p in json.loads(mlexec("plugins", "--json", env=env, check=0).stdout)}
    lazy = by_name["lazy"]
    assert lazy["state"] == "error" and "lazy_broken_impl:Nope, which does not import" in lazy["error"]
    assert lazy["provides"] == ["backend: lazy", "backend: lazy-broken", "env-manager: lazyenv"]
    assert by_name["local"]["provides"] == ["backend: local", "env-manager: local"]
    assert by_name["docker"]["state"] == "loaded"


def test_a_bad_record_is_an_error_naming_the_plugin():
    from mlexec_core.plugin import Registration

    wrong_kind = plugin_module("wrong", mlexec_backends=lambda: [
        Registration(kind="env-manager", name="w", path="x:Y")])
    plugins = build_plugins(entry_points=False, extra=[("wrong", wrong_kind)])
    with pytest.raises(PluginError, match="plugin 'wrong' returned a bad Registration from mlexec_backends "
                                          r"\('w'\): its kind is 'env-manager', but mlexec_backends registers"):
        plugins.registered("backend")
    no_path = plugin_module("nopath", mlexec_backends=lambda: [Registration(kind="backend", name="n", path="x")])
    with pytest.raises(PluginError, match="path 'x' is not 'package.module:ClassName'"):
        build_plugins(entry_points=False, extra=[("nopath", no_path)]).registered("backend")


def test_a_record_whose_class_disagrees_is_an_error():
    from mlexec_core.plugin import Registration

    from mlexec_core.builtins.local import LocalBackend

    class Stale(LocalBackend):
        name = "local"  # the older way: a name on the class too

    module = plugin_module("mismatch", mlexec_backends=lambda: [
        Registration(kind="backend", name="other", path=Stale)])
    plugins = build_plugins(entry_points=False, extra=[("mismatch", module)])
    with pytest.raises(PluginError, match="whose own name is 'local'"):
        plugins.backend("other")
    module = plugin_module("notabackend", mlexec_backends=lambda: [
        Registration(kind="backend", name="local2", path="mlexec_core.builtins.local:LocalEnvironment")])
    with pytest.raises(PluginError, match="which is not a Backend subclass"):
        build_plugins(entry_points=False, extra=[("notabackend", module)]).backend("local2")


def test_entry_points_are_found_as_importlib_metadata_finds_them(installed):
    """mlexec reads entry_points.txt itself (importing importlib.metadata costs every command);
    what it finds must be what importlib.metadata finds."""
    from importlib import metadata

    from mlexec_core.plugin.entrypoints import entry_points

    for group in ("mlexec", "console_scripts", "pytest11"):
        ours = sorted((e.name, e.value, e.dist_name, e.dist_version) for e in entry_points(group))
        theirs = sorted((e.name, e.value, e.dist.name, e.dist.version) for e in metadata.entry_points(group=group))
        assert ours == theirs, group
    assert ("broken", "demo_broken", "mlexec-demo-plugins", "1.2.3") in [
        (e.name, e.value, e.dist_name, e.dist_version) for e in entry_points("mlexec")]


def test_every_installed_record_is_the_only_metadata_of_its_class():
    """The built-ins and the plugins in plugins/ write their metadata once, in the record:
    no class repeats it as class attributes (mlexec would ignore them, and they would drift)."""
    from mlexec_core.testing import leftover_metadata

    plugins = build_plugins()
    for kind in ("backend", "env-manager", "image-builder", "search-strategy"):
        for name in plugins.registered(kind):
            assert leftover_metadata(plugins, kind, name) == [], (kind, name)


def test_capabilities_are_record_data_checked_per_kind():
    """What a class can do is written once, in its record; a capability its kind does not
    have is a malformed record, and an instance reads its record (name, capabilities)."""
    bad = plugin_module("bad", mlexec_backends=lambda: [
        Registration(kind="backend", name="b", path=RecordingBackend, capabilities={"adaptive"})])
    with pytest.raises(PluginError, match="capability 'adaptive' is not one a backend has"):
        build_plugins(entry_points=False, extra=[("bad", bad)]).registered("backend")
    good = plugin_module("good", mlexec_backends=lambda: [
        Registration(kind="backend", name="b", path=RecordingBackend, capabilities={"detachable"})])
    plugins = build_plugins(entry_points=False, extra=[("good", good)])
    backend = plugins.backend("b")
    assert backend.name == "b" and backend.registration.capabilities == {"detachable"}
    grid = plugins.search_strategy("grid")
    assert grid.name == "grid" and "finite" in grid.registration.capabilities
    assert plugins.registered("search-strategy")["random"].capabilities == frozenset()


def test_each_job_has_its_own_tags_without_calling_super_init():
    class Quiet(DoneJob):
        def __init__(self):  # never calls super().__init__, as many backends' jobs
            self.status = RunStatus.FINISHED

    first, second = Quiet(), Quiet()
    first.tags["a"] = "1"
    assert second.tags == {} and first.tags == {"a": "1"}
    assert DoneJob().tags == {"example.job": "done"}
