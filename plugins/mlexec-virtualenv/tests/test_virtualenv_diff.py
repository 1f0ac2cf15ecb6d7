"""``mlexec diff`` names the packages two virtualenv runs got at different versions (issue 23,
item 5): the same project run before and after a new release reached the package index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlexec_core.testing import assert_no_traceback, build_wheel

COMMAND = "python -c 'import demo_pkg; print(\"demo-pkg\", demo_pkg.VERSION)'"


def publish(index: Path, name: str, version: str) -> None:
    build_wheel(index, name, version, {f"{name}/__init__.py": f"VERSION = {version!r}\n"})


def test_diff_names_the_packages_whose_versions_differ(mlexec, project, store, env_root, tmp_path, cli_env):
    index = tmp_path / "index"  # a package index of our own: a --find-links folder
    publish(index, "demo_pkg", "1.0")
    publish(index, "steady_pkg", "3.0")
    env = {**cli_env, "UV_FIND_LINKS": str(index), "UV_NO_INDEX": "1"}
    proj = project(f"name: locked\npython_env: python_env.yaml\nentry_points:\n  main:\n"
                   f"    command: {json.dumps(COMMAND)}\n",
                   {"python_env.yaml": "dependencies:\n  - demo-pkg\n  - steady-pkg\n"})
    mlexec("run", proj, "--env-manager", "uv", env=env, check=0)
    [old] = [r.info.run_id for r in store.runs()]
    # 2.0 is published; a fresh environment gets it
    publish(index, "demo_pkg", "2.0")
    [envdir] = [p for p in env_root.iterdir() if p.name.startswith("virtualenv-")]
    shutil.rmtree(envdir)
    proc = mlexec("run", proj, "--env-manager", "uv", env=env, check=0)
    assert "demo-pkg 2.0" in proc.stdout
    [new] = [r.info.run_id for r in store.runs() if r.info.run_id != old]

    proc = mlexec("diff", old, new, env=env, check=0)
    assert_no_traceback(proc)
    lines = proc.stdout.splitlines()
    assert "# Packages" in lines and "demo-pkg 1.0 -> 2.0" in lines, proc.stdout
    assert "steady-pkg" not in proc.stdout  # the same version in both: not a difference
    result = json.loads(mlexec("diff", old, new, "--json", env=env, check=0).stdout)
    [packages] = [s for s in result["sections"] if s["name"] == "packages"]
    assert packages["rows"] == [{"key": "demo-pkg", "a": "1.0", "b": "2.0"}]
