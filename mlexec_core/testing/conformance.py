"""The contract tests every backend and environment manager should pass.

A plugin runs them against itself by subclassing :class:`Contract` in one of
its test modules, naming what it provides and how to configure it::

    # tests/test_nice_contract.py   (conftest.py: pytest_plugins = ["mlexec_core.testing"])
    from mlexec_core.testing.conformance import Contract

    class TestNiceContract(Contract):
        backend = "nice"
        env_manager = "local"
        backend_config = {"niceness": 10}
        bad_backend_config = ({"nicenes": 3}, "nicenes")   # a config error, and the key it must name

Each test drives the real CLI (``python -m mlexec_core``) against a real MLflow
sqlite store, read back with ``MlflowClient``:

* ``test_success_records_params_and_tags``: exit 0, the run FINISHED with the
  ``-P`` parameters and the backend, environment and entry point tags; the
  command saw the parameters (its output is checked when ``runs_command``).
* ``test_failure_has_the_exit_status_and_reason``: ``exit 3`` in the command
  makes the run FAILED, ``mlexec run`` exit 3 (when ``knows_exit_code``) and the
  reason say so.
* ``test_ctrl_c_ends_killed_with_nothing_left`` and ``test_sigterm_...``: a
  command that started a background child (``sleep &``, which ignores SIGINT)
  is stopped; mlexec exits 130 / 143, the run is KILLED, and (``runs_here``)
  neither the shell nor its child is left running; and (``stops_its_own_processes``)
  the backend did that itself, not the core's safety net.
* ``test_config_error_names_the_key_before_any_run``: a bad backend config or
  environment file is one error naming the key, exit 2, no traceback, no run.
* ``test_the_record_is_the_only_metadata``: the class the Registration record
  names imports, and sets none of the record's metadata (``name``, ``handles``,
  ``detachable`` ...) as class attributes, which mlexec would ignore.
* ``test_dry_run_has_no_side_effects``: ``--dry-run`` and ``--dry-run --json``
  exit 0, create no run, run nothing and leave nothing behind.
* ``test_sweep_children_each_have_their_own_run`` (when ``sweeps``): a 3-child
  grid sweep (``mlexec sweep -P alpha=0.1,0.2,0.3 --max-parallel 2``) exits 0,
  the parent and each child FINISHED with its own ``alpha``, and (when
  ``runs_command``) each child's ``mlexec/output.log`` holds its own output only.
  A backend whose record declares the ``fan-out`` capability gets these children in one ``submit_many``.
* ``test_sweep_dry_run_has_no_side_effects`` (when ``sweeps``): ``mlexec sweep
  --dry-run --json`` lists the 3 children, creates no run and runs nothing; with
  ``fan-out``, its ``fan_out`` entry is what ``dry_run_many`` returned.
* ``test_undeclared_resources_are_refused_before_any_run``: for every resource the
  backend (with its environment manager) does not declare in its record's
  ``resources``, ``mlexec run -R KEY=VALUE`` is one error naming the backend and the
  resource, exit 2, no run.
* ``test_time_limit_ends_failed_with_the_reason`` (when ``time`` is declared): the
  ``slow`` entry point with ``-R time=3s`` ends FAILED with the reason ``time limit 3s
  reached``, ``mlexec run`` exits 1 and (``runs_here``) nothing is left running.
* ``test_declared_resources_take_effect``: each of ``resource_probes`` (a resource,
  a value, a command that prints what the job sees and the text expected) runs and
  prints what is expected; a probe for an undeclared resource is an error of the suite.
* after every test: no run in the store is left RUNNING, and
  ``contract_leftovers()`` reports nothing new (containers, Jobs ...).

The project is named ``contract``; its entry points are ``main`` (parameters
``alpha`` and ``name``, echoed), ``fail`` (``exit 3``) and ``slow`` (``sleep``
in the background, then ``wait``), plain POSIX sh, so they run in a busybox
image too.

Override the class attributes below, and these fixtures when the defaults do not fit:

* ``contract_env``: more variables for every CLI call (a kubeconfig ...).
* ``contract_arrange``: a callable ``arrange(case)`` called before each CLI run,
  ``case`` being "success", "failure", "slow", "dry-run" or "sweep" (before a
  sweep of 3 children); a suite whose
  backend talks to a double scripts the double here.
* ``contract_leftovers``: a callable returning what the backend leaves behind
  right now (container ids, Job names); it is called before and after each test.
* ``contract_project``: a callable ``make(entry_points, files=None, environment=None) -> Path``
  writing the project (the default adds ``environment`` and ``environment_files``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import pytest

from mlexec_core.testing import assert_no_traceback, assert_processes_gone, make_project, wait_until

ENTRY_POINTS = """\
main:
  parameters:
    alpha: {type: float, default: 0.1}
    name: {type: string, default: "x"}
  command: "echo contract alpha={alpha} name={name}"
fail:
  command: "echo contract-failing >&2; exit 3"
slow:
  command: "sleep 300 & echo \\"contract-ready $$ $!\\"; wait"
"""
#: A value of every resource, for the refusal test.
RESOURCE_VALUES = {"cpus": "1", "memory": "64M", "gpus": "1", "gpu-type": "A100", "shm": "64M", "time": "1h",
                   "nodes": "2", "processes-per-node": "2"}
#: The slow entry point's line once it runs: its shell's pid and its child's.
READY = re.compile(r"contract-ready (\d+) (\d+)")


class Contract:
    """Subclass it (as ``Test...``) and set at least ``backend`` or ``env_manager``."""

    #: The ``--backend`` under test.
    backend: ClassVar[str] = "local"
    #: The ``--env-manager``; ``None`` lets mlexec choose from the project's environment.
    env_manager: ClassVar[str | None] = "local"
    #: ``--backend-config``: a mapping (passed as inline JSON), a file name in the
    #: project (see ``environment_files``), or ``None`` for none.
    backend_config: ClassVar[Mapping[str, Any] | str | None] = None
    #: MLproject lines declaring the environment, for example ``"python_env: python_env.yaml"``.
    environment: ClassVar[str] = ""
    #: Files written into the project: ``{"python_env.yaml": "python: ..."}``.
    environment_files: ClassVar[Mapping[str, str]] = {}
    #: The ``mlflow.project.env`` tag expected, ``None`` when the backend sets none;
    #: by default the ``env_manager``.
    env_tag: ClassVar[str | None] = ""
    #: A bad ``--backend-config`` and the key its error must name, or ``None``.
    bad_backend_config: ClassVar[tuple[Mapping[str, Any] | str, str] | None] = None
    #: An environment with a mistake: MLproject environment lines, the files
    #: (replacing ``environment_files``), and the text its error must contain (the
    #: file and key); or ``None``.
    bad_environment: ClassVar[tuple[str, Mapping[str, str], str] | None] = None
    #: The command really runs (not a double): its output is checked.
    runs_command: ClassVar[bool] = True
    #: The command runs as processes of this machine: after a stop, none may be left.
    runs_here: ClassVar[bool] = True
    #: The backend reports the command's exit status (``mlexec run`` exits with it).
    knows_exit_code: ClassVar[bool] = True
    #: The backend stops its own job completely: the core's safety net (which stops
    #: leftover processes and warns "the job left ...") has nothing to do.
    stops_its_own_processes: ClassVar[bool] = True
    #: Seconds to wait for the job to start (a pull, a solve ...).
    start_timeout: ClassVar[float] = 120
    #: The command's stderr reaches mlexec's stderr (false where the remote system
    #: keeps one stream, as Slurm's one output file does: then it is on stdout).
    separates_stderr: ClassVar[bool] = True
    #: Run the sweep cases (``mlexec sweep`` on this backend).
    sweeps: ClassVar[bool] = True
    #: What the job sees of a declared resource: ``{"cpus": ("1", "nproc", "1")}`` runs
    #: ``nproc`` with ``-R cpus=1`` and expects ``1`` in its output (plain POSIX sh).
    resource_probes: ClassVar[Mapping[str, tuple[str, str, str]]] = {}

    # -- fixtures a suite may override -------------------------------------------------

    @pytest.fixture
    def contract_env(self) -> dict[str, str]:
        return {}

    @pytest.fixture
    def contract_arrange(self) -> Callable[[str], None]:
        return lambda case: None

    @pytest.fixture
    def contract_leftovers(self) -> Callable[[], list[Any]]:
        return lambda: []

    @pytest.fixture
    def contract_project(self, tmp_path) -> Callable[..., Path]:
        def make(entry_points: str = ENTRY_POINTS, files: Mapping[str, str] | None = None,
                 environment: str | None = None) -> Path:
            env = self.environment if environment is None else environment
            body = f"name: contract\n{env}\nentry_points:\n{textwrap.indent(entry_points, '  ')}"
            return make_project(tmp_path / "contract", body,
                                dict(self.environment_files if files is None else files))

        return make

    # -- what every test shares --------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _contract_checks(self, store, contract_leftovers):
        before = list(contract_leftovers())
        yield
        running = [r.info.run_id for r in store.runs() if r.info.status in ("RUNNING", "SCHEDULED")]
        assert not running, f"runs left RUNNING: {running}"
        new = [x for x in contract_leftovers() if x not in before]
        assert not new, f"left behind: {new}"

    def _args(self, config: Mapping[str, Any] | str | None = None, *, use_default: bool = True) -> list[str]:
        args = ["-b", self.backend]
        if self.env_manager:
            args += ["--env-manager", self.env_manager]
        config = self.backend_config if use_default and config is None else config
        if isinstance(config, str):
            args += ["-c", config]
        elif config is not None:
            args += ["-c", json.dumps(dict(config))]
        return args

    def _expected_env_tag(self) -> str | None:
        return self.env_manager if self.env_tag == "" else self.env_tag

    # -- the contract ------------------------------------------------------------------

    def test_success_records_params_and_tags(self, mlexec, store, contract_project, contract_env, contract_arrange):
        proj = contract_project()
        contract_arrange("success")
        proc = mlexec("run", proj, *self._args(), "-P", "alpha=0.5", "-P", "name=a b", cwd=proj, env=contract_env,
                      timeout=self.start_timeout + 60)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert_no_traceback(proc)
        run = store.only_run()
        assert run.info.status == "FINISHED"
        assert run.data.params == {"alpha": "0.5", "name": "a b"}
        tags = run.data.tags
        assert tags["mlflow.project.backend"] == self.backend
        assert tags["mlflow.project.entryPoint"] == "main"
        expected_env = self._expected_env_tag()
        if expected_env is not None:
            assert tags.get("mlflow.project.env") == expected_env
        if self.runs_command:
            assert "contract alpha=0.5 name=a b" in proc.stdout
        assert run.info.run_id in proc.stderr and "succeeded" in proc.stderr

    def test_failure_has_the_exit_status_and_reason(self, mlexec, store, contract_project, contract_env,
                                                    contract_arrange):
        proj = contract_project()
        contract_arrange("failure")
        proc = mlexec("run", proj, "-e", "fail", *self._args(), cwd=proj, env=contract_env,
                      timeout=self.start_timeout + 60)
        assert_no_traceback(proc)
        if self.knows_exit_code:
            assert proc.returncode == 3, f"exit {proc.returncode}\n{proc.stderr}"
            assert "exited with status 3" in proc.stderr
        else:
            assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stderr}"
        if self.runs_command:
            assert "contract-failing" in (proc.stderr if self.separates_stderr else proc.stdout)
        run = store.only_run()
        assert run.info.status == "FAILED"
        last = proc.stderr.strip().splitlines()[-1]
        assert f"=== Run {run.info.run_id} failed" in last

    def _stop(self, signum: int, mlexec_background, store, contract_project, contract_env, contract_arrange):
        proj = contract_project()
        contract_arrange("slow")
        bg = mlexec_background("run", proj, "-e", "slow", *self._args(), cwd=proj, env=contract_env)
        if self.runs_command:  # the job's own line, not the command mlexec echoes before it starts
            wait_until(lambda: READY.search(bg.stdout), self.start_timeout,
                       lambda: f"the job to print 'contract-ready PID PID'\nstdout:\n{bg.stdout}\nstderr:\n{bg.stderr}")
        else:
            bg.wait_for("contract-ready", timeout=self.start_timeout)
        bg.signal(signum)
        proc = bg.finish(timeout=60)
        assert proc.returncode == 128 + signum, f"exit {proc.returncode}\n{proc.stderr}"
        assert_no_traceback(proc)
        run = store.only_run()
        assert run.info.status == "KILLED"
        if self.stops_its_own_processes:
            assert "the job left" not in proc.stderr, proc.stderr
        if self.runs_here:
            found = READY.search(proc.stdout)
            assert found, proc.stdout
            assert_processes_gone([int(found.group(1)), int(found.group(2))], timeout=5)
        return proc

    def test_ctrl_c_ends_killed_with_nothing_left(self, mlexec_background, store, contract_project, contract_env,
                                                 contract_arrange):
        self._stop(signal.SIGINT, mlexec_background, store, contract_project, contract_env, contract_arrange)

    def test_sigterm_ends_killed_with_nothing_left(self, mlexec_background, store, contract_project, contract_env,
                                                  contract_arrange):
        self._stop(signal.SIGTERM, mlexec_background, store, contract_project, contract_env, contract_arrange)

    def test_config_error_names_the_key_before_any_run(self, mlexec, store, contract_project, contract_env,
                                                        contract_arrange):
        if self.bad_backend_config is None and self.bad_environment is None:
            pytest.skip("the suite names no bad backend config and no bad environment file")
        if self.bad_backend_config is not None:
            config, key = self.bad_backend_config
            proj = contract_project()
            proc = mlexec("run", proj, *self._args(config), cwd=proj, env=contract_env)
            self._one_error(proc, key, store)
        if self.bad_environment is not None:
            environment, files, text = self.bad_environment
            proj = contract_project(files=files, environment=environment)
            proc = mlexec("run", proj, *self._args(), cwd=proj, env=contract_env, timeout=self.start_timeout + 60)
            self._one_error(proc, text, store)

    @staticmethod
    def _one_error(proc, text: str, store) -> None:
        assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert_no_traceback(proc)
        assert "error:" in proc.stderr and text in proc.stderr, proc.stderr
        assert "contract" not in proc.stdout  # nothing ran
        assert store.runs() == []

    def test_the_record_is_the_only_metadata(self, cli_env, monkeypatch, contract_env):
        """The class a plugin's record names imports, and does not write the record's metadata
        again as class attributes (mlexec reads only the record)."""
        from mlexec_core.plugin.manager import build_plugins
        from mlexec_core.testing import leftover_metadata

        for key, value in {**cli_env, **contract_env}.items():
            if key != "PYTHONPATH":
                monkeypatch.setenv(key, value)
        for path in reversed(contract_env.get("PYTHONPATH", "").split(os.pathsep)):
            if path:
                monkeypatch.syspath_prepend(path)
        plugins = build_plugins()
        checked = [("backend", self.backend)] + ([("env-manager", self.env_manager)] if self.env_manager else [])
        for kind, name in checked:
            assert leftover_metadata(plugins, kind, name) == [], f"{kind} {name!r}"

    def test_dry_run_has_no_side_effects(self, mlexec, store, contract_project, contract_env, contract_arrange):
        proj = contract_project(ENTRY_POINTS.replace("echo contract alpha", "touch ran-it; echo contract alpha"))
        before = sorted(p.relative_to(proj) for p in proj.rglob("*"))
        contract_arrange("dry-run")
        proc = mlexec("run", proj, *self._args(), "-P", "alpha=0.5", "--dry-run", cwd=proj, env=contract_env)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}"
        assert_no_traceback(proc)
        proc = mlexec("run", proj, *self._args(), "-P", "alpha=0.5", "--dry-run", "--json", cwd=proj,
                      env=contract_env)
        assert proc.returncode == 0, proc.stderr
        plan = json.loads(proc.stdout)
        assert plan["backend"] == self.backend
        assert "contract alpha=0.5" in plan["command"]
        assert store.runs() == []
        assert sorted(p.relative_to(proj) for p in proj.rglob("*")) == before

    # -- resources -----------------------------------------------------------------------

    def _honoured(self, mlexec, proj, contract_env) -> set[str]:
        proc = mlexec("run", proj, *self._args(), "--dry-run", "--json", cwd=proj, env=contract_env)
        assert proc.returncode == 0, proc.stderr
        return set(json.loads(proc.stdout)["honoured_resources"])

    def test_undeclared_resources_are_refused_before_any_run(self, mlexec, store, contract_project, contract_env,
                                                             contract_arrange):
        proj = contract_project()
        contract_arrange("dry-run")
        honoured = self._honoured(mlexec, proj, contract_env)
        for key, value in RESOURCE_VALUES.items():
            if key in honoured:
                continue
            proc = mlexec("run", proj, *self._args(), "-R", f"{key}={value}", cwd=proj, env=contract_env)
            self._one_error(proc, f"cannot honour the resource -R {key}={value}", store)
            assert f"-b {self.backend}" in proc.stderr, proc.stderr

    def test_time_limit_ends_failed_with_the_reason(self, mlexec, store, contract_project, contract_env,
                                                    contract_arrange):
        proj = contract_project()
        contract_arrange("dry-run")
        if "time" not in self._honoured(mlexec, proj, contract_env):
            pytest.skip(f"-b {self.backend} does not declare the resource time")
        contract_arrange("slow")
        proc = mlexec("run", proj, "-e", "slow", *self._args(), "-R", "time=3s", cwd=proj, env=contract_env,
                      timeout=self.start_timeout + 120)
        assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert_no_traceback(proc)
        run = store.only_run()
        assert run.info.status == "FAILED"
        assert run.data.tags.get("mlexec.failureReason") == "time limit 3s reached"
        assert "time limit 3s reached" in proc.stderr.strip().splitlines()[-1]
        if self.runs_here and self.runs_command:
            found = READY.search(proc.stdout)
            assert found, proc.stdout
            assert_processes_gone([int(found.group(1)), int(found.group(2))], timeout=5)

    def test_declared_resources_take_effect(self, mlexec, store, contract_project, contract_env, contract_arrange):
        if not self.resource_probes:
            pytest.skip("the suite names no resource_probes")
        probes = "".join(f"probe-{key}:\n  command: {json.dumps(command)}\n"
                         for key, (_, command, _) in self.resource_probes.items())
        proj = contract_project(ENTRY_POINTS + probes)
        contract_arrange("dry-run")
        honoured = self._honoured(mlexec, proj, contract_env)
        for key, (value, _, expected) in self.resource_probes.items():
            assert key in honoured, f"a probe for {key}, which -b {self.backend} does not declare"
            contract_arrange("success")
            proc = mlexec("run", proj, "-e", f"probe-{key}", *self._args(), "-R", f"{key}={value}", cwd=proj,
                          env=contract_env, timeout=self.start_timeout + 60)
            assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            assert expected in proc.stdout, f"-R {key}={value}: expected {expected!r} in\n{proc.stdout}"

    # -- sweeps --------------------------------------------------------------------------

    def test_sweep_children_each_have_their_own_run(self, mlexec, store, contract_project, contract_env,
                                                    contract_arrange, tmp_path):
        if not self.sweeps:
            pytest.skip("the suite runs no sweep cases (sweeps = False)")
        proj = contract_project()
        contract_arrange("sweep")
        proc = mlexec("sweep", proj, *self._args(), "-P", "alpha=0.1,0.2,0.3", "--max-parallel", "2", cwd=proj,
                      env=contract_env, timeout=self.start_timeout + 120)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert_no_traceback(proc)
        runs = store.runs()
        [parent] = [r for r in runs if r.data.tags.get("mlexec.sweep") == "parent"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert parent.info.status == "FINISHED"
        assert sorted(c.data.params["alpha"] for c in children) == ["0.1", "0.2", "0.3"]
        assert {c.info.status for c in children} == {"FINISHED"}
        for child in children:
            assert child.data.tags["mlflow.project.backend"] == self.backend
            if self.runs_command:
                alpha = child.data.params["alpha"]
                where = store.client.download_artifacts(child.info.run_id, "mlexec/output.log",
                                                        str(tmp_path / f"out-{alpha}"))
                text = Path(where).read_text()
                assert f"contract alpha={alpha} " in text, text
                assert text.count("contract alpha=") == 1, text  # its own output, no other child's

    def test_sweep_dry_run_has_no_side_effects(self, mlexec, store, contract_project, contract_env,
                                               contract_arrange):
        if not self.sweeps:
            pytest.skip("the suite runs no sweep cases (sweeps = False)")
        proj = contract_project(ENTRY_POINTS.replace("echo contract alpha", "touch ran-it; echo contract alpha"))
        before = sorted(p.relative_to(proj) for p in proj.rglob("*"))
        contract_arrange("dry-run")
        proc = mlexec("sweep", proj, *self._args(), "-P", "alpha=0.1,0.2,0.3", "--max-parallel", "2",
                      "--dry-run", "--json", cwd=proj, env=contract_env)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}"
        assert_no_traceback(proc)
        plan = json.loads(proc.stdout)
        assert len(plan["children"]) == 3
        if "fan_out" in plan:  # the backend declares fan-out: dry_run_many must say what it would submit
            assert plan["fan_out"], "dry_run_many returned nothing for 3 children"
        assert store.runs() == []
        assert sorted(p.relative_to(proj) for p in proj.rglob("*")) == before
