"""What a virtualenv really contained is recorded with every run (issue 23): the lock is made
once, when the environment is built (``uv pip freeze``), kept beside it, and copied into each
run's record, so a run made after the index changed says which version it really got."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlexec_core.testing import assert_no_traceback, build_wheel

COMMAND = "python -c 'import demo_pkg; print(\"demo-pkg\", demo_pkg.VERSION)'"


def publish(index: Path, version: str) -> None:
    build_wheel(index, "demo_pkg", version, {"demo_pkg/__init__.py": f"VERSION = {version!r}\n"})


def test_each_run_records_the_versions_its_environment_really_holds(mlexec, project, store, env_root, tmp_path,
                                                                    cli_env):
    index = tmp_path / "index"  # a package index of our own: a --find-links folder
    publish(index, "1.0")
    env = {**cli_env, "UV_FIND_LINKS": str(index), "UV_NO_INDEX": "1"}
    proj = project(f"name: locked\npython_env: python_env.yaml\nentry_points:\n  main:\n    command: {json.dumps(COMMAND)}\n",
                   {"python_env.yaml": "dependencies:\n  - demo-pkg\n"})
    proc = mlexec("run", proj, "--env-manager", "uv", env=env, check=0)
    assert_no_traceback(proc)
    assert "demo-pkg 1.0" in proc.stdout
    [first] = store.runs()
    lock = Path(first.info.artifact_uri.replace("file://", ""), "mlexec", "environment.lock").read_text()
    assert "demo-pkg==1.0" in lock.splitlines()
    assert f"--find-links {index}" in lock.splitlines() and "--no-index" in lock.splitlines()
    record = json.loads(Path(first.info.artifact_uri.replace("file://", ""), "mlexec", "run.json").read_text())
    assert record["environment"]["kind"] == "requirements"
    assert record["environment"]["packages"] == {"demo-pkg": "1.0"}
    # the environment keeps its lock: a second run reuses both, and records the same
    [envdir] = [p for p in env_root.iterdir() if p.name.startswith("virtualenv-")]
    assert (envdir / ".mlexec-lock.txt").read_text() == lock

    # 2.0 is published: the cached environment still holds 1.0, and says so
    publish(index, "2.0")
    mlexec("run", proj, "--env-manager", "uv", env=env, check=0)
    # a fresh cache builds with 2.0, and the record says 2.0
    shutil.rmtree(envdir)
    proc = mlexec("run", proj, "--env-manager", "uv", env=env, check=0)
    assert "demo-pkg 2.0" in proc.stdout
    locks = sorted(Path(r.info.artifact_uri.replace("file://", ""), "mlexec", "environment.lock").read_text()
                   .count("demo-pkg==2.0") for r in store.runs())
    assert locks == [0, 0, 1]


def test_an_environment_built_before_locks_gets_one_when_next_used(mlexec, project, store, env_root, tmp_path,
                                                                   cli_env):
    index = tmp_path / "index"
    publish(index, "1.0")
    env = {**cli_env, "UV_FIND_LINKS": str(index), "UV_NO_INDEX": "1"}
    proj = project(f"name: locked\npython_env: python_env.yaml\nentry_points:\n  main:\n    command: {json.dumps(COMMAND)}\n",
                   {"python_env.yaml": "dependencies:\n  - demo-pkg\n"})
    mlexec("run", proj, "--env-manager", "uv", env=env, check=0)
    [envdir] = [p for p in env_root.iterdir() if p.name.startswith("virtualenv-")]
    (envdir / ".mlexec-lock.txt").unlink()
    mlexec("run", proj, "--env-manager", "uv", env=env, check=0)
    assert "demo-pkg==1.0" in (envdir / ".mlexec-lock.txt").read_text()
    assert all("demo-pkg==1.0" in Path(r.info.artifact_uri.replace("file://", ""), "mlexec",
                                       "environment.lock").read_text() for r in store.runs())
