"""`mlexec run` with the virtualenv manager: real uv, real installs, a real MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from virtualenv_helpers import REPORT, env_dirs, need

from mlexec_core.testing import MLEXEC, ROOT, assert_no_traceback
from mlexec_virtualenv.interpreters import find_interpreters

MLPROJECT = """\
name: demo
python_env: python_env.yaml
entry_points:
  main:
    command: "python report.py"
  pip:
    command: "pip --version"
  fail:
    command: "echo failing >&2; exit 3"
  sleep:
    command: "python -c 'import time; print(\\"sleeping\\", flush=True); time.sleep(60)'"
"""

RUNNING_VERSION = "%d.%d" % sys.version_info[:2]


def other_python() -> str:
    """An X.Y on this machine other than the one running the tests (to see that python: is honoured)."""
    versions = {".".join(i.version.split(".")[:2]) for i in find_interpreters()}
    others = sorted((v for v in versions if v != RUNNING_VERSION and tuple(map(int, v.split("."))) >= (3, 8)),
                    key=lambda v: tuple(map(int, v.split("."))))
    need(bool(others), "another Python", f"needs a Python 3.8+ other than {RUNNING_VERSION} on PATH or in "
         "pyenv's versions", how="put another CPython 3.8+ on PATH or in pyenv's versions folder")
    return others[-1]


def python_env(python: str, deps: list[str], build: list[str] | None = None) -> str:
    text = f'python: "{python}"\n'
    if build:
        text += "build_dependencies:\n" + "".join(f"  - {b}\n" for b in build)
    text += "dependencies:\n" + "".join(f"  - {d}\n" for d in deps) if deps else ""
    return text


def make(project, env_yaml: str, files: dict[str, str] | None = None, where="proj"):
    return project(MLPROJECT, {"python_env.yaml": env_yaml, "report.py": REPORT, **(files or {})}, where=where)


def report(tmp_path):
    return json.loads((tmp_path / "report.json").read_text())


@pytest.fixture
def out(tmp_path):
    return {"REPORT": str(tmp_path / "report.json")}


def test_python_env_installed_cached_and_keyed_on_requirement_files(mlexec, project, store, env_root, uv_wrapper,
                                                                     tmp_path, out):
    version = other_python()
    proj = make(project, python_env(version, ["six==1.16.0", "-r requirements.txt"], build=["pip"]),
                {"requirements.txt": "idna==3.7  # pinned\n"})

    first = mlexec("run", proj, env=out, check=0)
    assert_no_traceback(first)
    assert "creating environment virtualenv-" in first.stderr
    seen = report(tmp_path)
    (name,) = [d for d in env_dirs(env_root)]  # one environment, no temporary folder left
    assert seen["prefix"] == seen["virtual_env"] == str(env_root / name)
    assert seen["path0"] == str(env_root / name / "bin")
    assert seen["version"].startswith(version + ".")
    assert seen["modules"] == {"six": "1.16.0", "idna": "3.7", "numpy": None}
    run = store.only_run()
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.env"] == "virtualenv"
    # venv, then what `python -m venv` seeds (virtualenv is the default), the build dependency, the requirements
    assert uv_wrapper.subcommands() == ["venv", "pip install", "pip install", "pip install", "pip freeze"]

    # the environment was built elsewhere and renamed into place: its scripts still work
    pip = mlexec("run", proj, "-e", "pip", check=0)
    assert f"{env_root / name}/lib/python{version}/site-packages/pip" in pip.stdout
    assert f"reusing environment {name}" in pip.stderr and "creating" not in pip.stderr
    assert len(uv_wrapper.calls()) == 5  # the cache hit ran uv not even once (its lock was kept)

    # a changed -r file is a new spec, hence a new environment; the old one stays
    (proj / "requirements.txt").write_text("idna==3.6\n")
    changed = mlexec("run", proj, env=out, check=0)
    assert "creating environment virtualenv-" in changed.stderr
    assert report(tmp_path)["modules"]["idna"] == "3.6"
    assert len(env_dirs(env_root)) == 2
    assert [r.info.status for r in store.runs()] == ["FINISHED"] * 3


def test_uv_alias_tags_the_run_uv_and_gets_its_own_lean_environment(mlexec, project, store, env_root, uv_wrapper,
                                                                     out, tmp_path):
    proj = make(project, python_env(RUNNING_VERSION, ["six==1.16.0"]))
    mlexec("run", proj, "--env-manager", "uv", env=out, check=0)
    assert report(tmp_path)["modules"]["six"] == "1.16.0"
    mlexec("run", proj, "--env-manager", "virtualenv", env=out, check=0)
    assert report(tmp_path)["modules"]["six"] == "1.16.0"
    tags = sorted(r.data.tags["mlflow.project.env"] for r in store.runs())
    assert tags == ["uv", "virtualenv"]
    # virtualenv is seeded as `python -m venv` seeds, uv is not: two environments
    assert len(env_dirs(env_root)) == 2 and uv_wrapper.subcommands().count("venv") == 2
    again = mlexec("run", proj, "--env-manager", "uv", env=out, check=0)
    assert "reusing environment" in again.stderr and uv_wrapper.subcommands().count("venv") == 2


def test_bad_requirement_gives_uvs_error_and_no_run(mlexec, project, store, env_root):
    proj = make(project, python_env(RUNNING_VERSION, ["six==1.16.0", "mlexec-no-such-package-zz==1.0"]))
    proc = mlexec("run", proj)
    assert proc.returncode == 2, proc.stderr
    assert_no_traceback(proc)
    assert "error:" in proc.stderr and "python_env.yaml" in proc.stderr
    assert "uv says:" in proc.stderr and "mlexec-no-such-package-zz" in proc.stderr
    assert "hint:" in proc.stderr
    assert store.runs() == []
    assert env_dirs(env_root) == []  # neither a ready-looking nor a temporary folder is left


def test_missing_python_version_fails_before_anything_with_the_versions_found(mlexec, project, store, env_root,
                                                                               uv_wrapper):
    proj = make(project, python_env("3.4", ["six"]))
    proc = mlexec("run", proj)
    assert proc.returncode == 2
    assert_no_traceback(proc)
    assert "no Python 3.4 on this machine" in proc.stderr
    assert "found: " in proc.stderr and f"{sys.version_info[0]}.{sys.version_info[1]}." in proc.stderr
    assert "pyenv install 3.4" in proc.stderr
    assert store.runs() == [] and uv_wrapper.calls() == [] and env_dirs(env_root) == []
    # --dry-run checks it too (check() runs before any run exists)
    dry = mlexec("run", proj, "--dry-run")
    assert dry.returncode == 2 and "no Python 3.4" in dry.stderr


def test_malformed_python_env_names_the_key(mlexec, project, store):
    proj = make(project, 'python: "3.11"\ndependecies: [six]\n')
    proc = mlexec("run", proj)
    assert proc.returncode == 2
    assert_no_traceback(proc)
    assert "python_env.yaml: unknown key 'dependecies' (did you mean 'dependencies'?)" in proc.stderr
    assert store.runs() == []


def _start(cli_env, proj, *args, extra=None):
    return subprocess.Popen([*MLEXEC, "run", str(proj), *args], cwd=proj, env={**cli_env, **(extra or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_first_runs_build_one_environment(cli_env, project, store, env_root, uv_wrapper, tmp_path):
    proj = make(project, python_env(RUNNING_VERSION, ["six==1.16.0"]))
    # uv is held for a second inside the install, so the second run arrives while the first builds
    procs = [_start(cli_env, proj, extra={"UVWRAP_DELAY": "1.5", "REPORT": str(tmp_path / f"r{i}.json")})
             for i in range(2)]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    stderrs = [err for _, err in results]
    assert sum("creating environment" in err for err in stderrs) == 1, stderrs
    assert sum("reusing environment" in err for err in stderrs) == 1, stderrs
    assert uv_wrapper.subcommands() == ["venv", "pip install", "pip install", "pip freeze"]  # seeded, then six; then its lock
    (name,) = env_dirs(env_root)
    for i in range(2):
        seen = json.loads((tmp_path / f"r{i}.json").read_text())
        assert seen["prefix"] == str(env_root / name) and seen["modules"]["six"] == "1.16.0"
    assert sorted(r.info.status for r in store.runs()) == ["FINISHED", "FINISHED"]


def test_ctrl_c_during_creation_leaves_nothing_ready_looking(cli_env, mlexec, project, store, env_root, tmp_path):
    proj = make(project, python_env(RUNNING_VERSION, ["six==1.16.0"]))
    marker = tmp_path / "uv-paused"
    proc = _start(cli_env, proj, extra={"UVWRAP_PAUSE": str(marker), "REPORT": str(tmp_path / "report.json")})
    deadline = time.monotonic() + 120
    while not marker.exists() or not marker.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    uv_pid = int(marker.read_text())
    assert [p.name for p in env_root.iterdir() if p.name.startswith(".tmp-")]  # half built, aside
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err
    assert store.runs() == []  # no run at all, so none left RUNNING
    assert env_dirs(env_root) == []  # no environment, no temporary folder
    for _ in range(100):  # uv (here, its wrapper) was stopped too
        if not os.path.exists(f"/proc/{uv_pid}") or "Z" in open(f"/proc/{uv_pid}/stat").read().split(")")[-1][:3]:
            break
        time.sleep(0.05)
    else:
        pytest.fail("uv is still running after mlexec was interrupted")
    retry = mlexec("run", proj, env={"REPORT": str(tmp_path / "report.json")}, check=0)
    assert "creating environment" in retry.stderr
    assert store.only_run().info.status == "FINISHED"


def test_command_runs_like_the_local_backend(cli_env, mlexec, project, store, env_root, tmp_path):
    """Exit status, live output and Ctrl-C inside the environment; prune keeps an environment in use."""
    proj = make(project, python_env(RUNNING_VERSION, []))
    fail = mlexec("run", proj, "-e", "fail")
    assert fail.returncode != 0 and "failing" in fail.stderr and "exited with status 3" in fail.stderr

    proc = _start(cli_env, proj, "-e", "sleep")
    assert proc.stdout.readline().strip() == "sleeping"  # output arrives while the command runs
    busy = mlexec("env", "prune", "--all", "--manager", "virtualenv", check=0)
    assert "in use by a run, kept" in busy.stderr and len(env_dirs(env_root)) == 1
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    statuses = {r.data.tags["mlflow.project.entryPoint"]: r.info.status for r in store.runs()}
    assert statuses == {"fail": "FAILED", "sleep": "KILLED"}
    assert "RUNNING" not in statuses.values()


def test_env_list_and_prune_through_the_cli(mlexec, project, env_root, out):
    proj = make(project, python_env(RUNNING_VERSION, ["six==1.16.0"]))
    mlexec("run", proj, env=out, check=0)
    listed = json.loads(mlexec("env", "list", "--json", "--manager", "virtualenv", check=0).stdout)
    (entry,) = [e for e in listed if e["manager"] == "virtualenv"]
    assert entry["name"].startswith("virtualenv-") and entry["path"] == str(env_root / entry["name"])
    assert "six==1.16.0" in entry["summary"] and f"python {RUNNING_VERSION}." in entry["summary"]
    assert entry["size_bytes"] > 0 and entry["last_used"] and not entry["in_use"]
    table = mlexec("env", "list", "--manager", "virtualenv", check=0).stdout
    assert entry["name"] in table and "six==1.16.0" in table

    kept = mlexec("env", "prune", "--older-than", "1d", "--manager", "virtualenv", check=0)
    assert "0 environments removed" in kept.stderr and env_dirs(env_root) == [entry["name"]]
    pruned = mlexec("env", "prune", "--all", "--manager", "virtualenv", check=0)
    assert f"removed {entry['name']}" in pruned.stdout
    assert env_dirs(env_root) == []
    assert [e for e in json.loads(mlexec("env", "list", "--json", "--manager", "virtualenv", check=0).stdout) if e["manager"] == "virtualenv"] \
        == []


def test_environment_whose_python_is_gone_is_built_again(mlexec, project, env_root, out, tmp_path):
    proj = make(project, python_env(RUNNING_VERSION, ["six==1.16.0"]))
    mlexec("run", proj, env=out, check=0)
    (name,) = env_dirs(env_root)
    python = env_root / name / "bin" / "python"
    python.unlink()
    python.symlink_to(tmp_path / "uninstalled-python")  # as after `pyenv uninstall`
    again = mlexec("run", proj, env=out, check=0)
    assert f"environment {name} is broken" in again.stderr and f"creating environment {name}" in again.stderr
    assert report(tmp_path)["modules"]["six"] == "1.16.0" and env_dirs(env_root) == [name]


def test_conda_yaml_with_virtualenv_keeps_python_and_pip_list(mlexec, project, store, out, tmp_path):
    version = other_python()
    conda = f"""\
name: demo
channels: [conda-forge]
dependencies:
  - python={version}
  - pip
  - numpy=1.26
  - libgfortran
  - pip:
    - six==1.16.0
"""
    proj = project(MLPROJECT.replace("python_env: python_env.yaml", "conda_env: conda.yaml"),
                   {"conda.yaml": conda, "report.py": REPORT})
    proc = mlexec("run", proj, "--env-manager", "virtualenv", env=out, check=0)
    assert "not installing the conda packages numpy=1.26, libgfortran" in proc.stderr
    seen = report(tmp_path)
    assert seen["version"].startswith(version + ".")
    assert seen["modules"] == {"six": "1.16.0", "idna": None, "numpy": None}
    assert store.only_run().data.tags["mlflow.project.env"] == "virtualenv"


def test_uv_lock_decides_the_environment(mlexec, project, env_root, uv_wrapper, out, tmp_path):
    from uv import find_uv_bin

    pyproject = '[project]\nname = "locked"\nversion = "0.1"\nrequires-python = ">=3.8"\ndependencies = ["six{}"]\n'
    proj = project("name: locked\nentry_points:\n  main:\n    command: python report.py\n", {"report.py": REPORT})

    def lock(pin):
        (proj / "pyproject.toml").write_text(pyproject.format(pin))
        subprocess.run([find_uv_bin(), "lock", "--project", str(proj)], check=True, capture_output=True,
                       env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})

    lock("==1.16.0")
    first = mlexec("run", proj, env=out, check=0)  # a project without python_env: the default manager
    assert "uv.lock" in first.stderr
    assert report(tmp_path)["modules"]["six"] == "1.16.0"
    assert "export" in uv_wrapper.subcommands()

    lock("==1.17.0")  # only the lock decides the new environment
    second = mlexec("run", proj, env=out, check=0)
    assert "creating environment" in second.stderr
    assert report(tmp_path)["modules"]["six"] == "1.17.0"
    assert len(env_dirs(env_root)) == 2


def test_project_without_environment_gets_an_empty_virtualenv(mlexec, project, store, env_root, out, tmp_path):
    proj = project("entry_points:\n  main:\n    command: python report.py\n", {"report.py": REPORT})
    proc = mlexec("run", proj, env=out, check=0)
    assert "creating environment" in proc.stderr
    seen = report(tmp_path)
    assert seen["version"] == "%d.%d.%d" % sys.version_info[:3]  # the Python mlexec runs on, as MLflow does
    assert seen["prefix"].startswith(str(env_root / "virtualenv-"))
    assert seen["modules"] == {"six": None, "idna": None, "numpy": None}  # nothing but Python itself
    assert store.only_run().data.tags["mlflow.project.env"] == "virtualenv"


@pytest.mark.slow
def test_example_wine_elasticnet(mlexec, store, tmp_path):
    """The example project end to end: mlflow and scikit-learn installed from its python_env.yaml."""
    proc = mlexec("run", ROOT / "examples" / "wine-elasticnet", "-P", "alpha=0.3", timeout=900, check=0)
    assert "creating environment" in proc.stderr and "rmse=" in proc.stdout
    run = store.only_run()
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.env"] == "virtualenv"
    assert {"rmse", "mae", "r2"} <= set(run.data.metrics)
    assert run.data.params["alpha"] == "0.3"
