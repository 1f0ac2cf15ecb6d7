"""The central test of issue 23: a package index of our own changes under a project whose
python_env.yaml does not pin; `mlexec rerun` of the first run gets the version it had."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlexec_core.testing import assert_no_traceback, build_wheel

COMMAND = "python -c 'import demo_pkg; print(\"demo-pkg\", demo_pkg.VERSION)'"


def publish(index: Path, version: str) -> None:
    build_wheel(index, "demo_pkg", version, {"demo_pkg/__init__.py": f"VERSION = {version!r}\n"})


def run_id(proc) -> str:
    return proc.stderr.split("=== Run ", 1)[1].split()[0]


def test_rerun_builds_the_recorded_environment_not_todays(mlexec, project, store, env_root, tmp_path, cli_env):
    index = tmp_path / "index"  # a package index of our own (a --find-links folder): 1.0 only
    publish(index, "1.0")
    env = {**cli_env, "UV_FIND_LINKS": str(index), "UV_NO_INDEX": "1"}
    proj = project(f"name: demo\npython_env: python_env.yaml\nentry_points:\n  main:\n    command: {json.dumps(COMMAND)}\n",
                   {"python_env.yaml": "dependencies:\n  - demo-pkg\n"})
    first = mlexec("run", proj, "--env-manager", "uv", env=env, check=0)
    assert "demo-pkg 1.0" in first.stdout

    publish(index, "2.0")  # a new release; a fresh environment gets it
    for cached in env_root.glob("virtualenv-*"):
        shutil.rmtree(cached)
    fresh = mlexec("run", proj, "--env-manager", "uv", env=env, check=0)
    assert "demo-pkg 2.0" in fresh.stdout

    dry = mlexec("rerun", run_id(first), "--dry-run", env=env, check=0)
    assert "requirements lock of 1 distributions" in dry.stdout and "to be built" in dry.stdout
    again = mlexec("rerun", run_id(first), env=env, check=0)
    assert_no_traceback(again)
    assert "demo-pkg 1.0" in again.stdout  # the environment the run had, not today's
    assert "from the recorded lock" in again.stderr
    rerun = store.client.get_run(run_id(again))
    assert rerun.data.tags["mlexec.rerunOf"] == run_id(first)
    lock = Path(rerun.info.artifact_uri.replace("file://", ""), "mlexec", "environment.lock").read_text()
    assert "demo-pkg==1.0" in lock.splitlines()
    # a second rerun reuses the environment built from the lock
    twice = mlexec("rerun", run_id(first), env=env, check=0)
    assert "demo-pkg 1.0" in twice.stdout and "reusing environment" in twice.stderr


def test_a_version_no_longer_on_the_index_is_one_error_before_any_run(mlexec, project, store, env_root, tmp_path,
                                                                      cli_env):
    index = tmp_path / "index"
    publish(index, "1.0")
    env = {**cli_env, "UV_FIND_LINKS": str(index), "UV_NO_INDEX": "1"}
    proj = project(f"name: demo\npython_env: python_env.yaml\nentry_points:\n  main:\n    command: {json.dumps(COMMAND)}\n",
                   {"python_env.yaml": "dependencies:\n  - demo-pkg\n"})
    first = mlexec("run", proj, "--env-manager", "uv", env=env, check=0)
    (index / "demo_pkg-1.0-py3-none-any.whl").unlink()  # yanked
    publish(index, "2.0")
    proc = mlexec("rerun", run_id(first), env=env, check=2)
    assert_no_traceback(proc)
    assert "installing the recorded environment again failed" in proc.stderr
    assert "demo-pkg" in proc.stderr and "no longer where it came from" in proc.stderr
    assert len(store.runs()) == 1  # no run was created
    assert not [p for p in env_root.glob("*virtualenv-*") if p.name.startswith(".tmp")]  # nothing half-built
