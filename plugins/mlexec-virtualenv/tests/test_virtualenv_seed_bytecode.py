"""What goes into the environment besides the requirements: venv's seed and compiled bytecode.

``--env-manager virtualenv`` holds what MLflow's ``python -m venv`` environment
holds (ensurepip's pip, and setuptools before Python 3.12), compared here with
a real ``python -m venv`` of the same interpreter; ``--env-manager uv`` holds
neither.  Every environment is built with its site-packages compiled, checked
under ``PYTHONDONTWRITEBYTECODE=1`` so the run itself cannot write a ``.pyc``.
Real uv, real installs, the real CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from virtualenv_helpers import env_dirs, need

from mlexec_core.testing import assert_no_traceback, build_wheel
from mlexec_virtualenv.build import seed_wheels
from mlexec_core.errors import EnvironmentBuildError
from mlexec_virtualenv.interpreters import Interpreter, choose, find_interpreters

#: The project's command: which distributions the environment holds, and whether pkg_resources imports.
DISTS = """\
import importlib.metadata, json, os, sys
dists = sorted({(d.metadata["Name"].lower(), d.version) for d in importlib.metadata.distributions()})
try:
    import pkg_resources
    imported = True
except ImportError:
    imported = False
json.dump({"dists": dists, "pkg_resources": imported, "prefix": sys.prefix}, open(os.environ["REPORT"], "w"))
sys.exit(0 if imported else 7)
"""

MLPROJECT = """\
name: seeded
python_env: python_env.yaml
entry_points:
  main:
    command: "python dists.py"
"""

#: The command imports what it needs, but with PYTHONDONTWRITEBYTECODE=1 it can write no .pyc itself.
NO_PYC = {"PYTHONDONTWRITEBYTECODE": "1"}


def interpreter(version: str) -> Interpreter:
    found = choose(find_interpreters(), version)
    need(found is not None, f"Python {version}", f"needs a Python {version} on PATH or in pyenv's versions",
         how=f"put a CPython {version} on PATH or in pyenv's versions folder")
    return found


def venv_dists(python: str, where: Path) -> list[list[str]]:
    """The distributions in a real ``python -m venv`` of ``python`` (what MLflow's virtualenv manager makes)."""
    subprocess.run([python, "-m", "venv", str(where)], check=True, capture_output=True, timeout=300)
    out = subprocess.run([str(where / "bin" / "python"), "-c",
                          "import importlib.metadata, json; print(json.dumps(sorted({(d.metadata['Name'].lower(), "
                          "d.version) for d in importlib.metadata.distributions()})))"],
                         check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def compiled(source: Path, version: str) -> bool:
    """``source`` has a ``.pyc`` of Python ``version`` that Python would load (its header matches the source)."""
    tag = "cpython-" + "".join(version.split(".")[:2])
    pyc = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
    if not pyc.is_file():
        return False
    header = pyc.read_bytes()[:16]
    flags = int.from_bytes(header[4:8], "little")
    if flags & 1:  # hash-based (SOURCE_DATE_EPOCH was set): the hash is keyed by the magic number
        return len(header) == 16
    st = source.stat()
    return (int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF)


def site_packages(env: Path) -> Path:
    (site,) = env.glob("lib/python3.*/site-packages")
    return site


@pytest.mark.parametrize("version, setuptools", [("3.11", True), ("3.12", False)])
def test_virtualenv_holds_what_mlflows_venv_holds_and_uv_stays_lean(mlexec, project, store, env_root, tmp_path,
                                                                    version, setuptools):
    """A project importing pkg_resources without declaring setuptools, as under `mlflow run`."""
    python = interpreter(version)
    proj = project(MLPROJECT, {"python_env.yaml": f'python: "{version}"\ndependencies:\n  - six==1.16.0\n',
                               "dists.py": DISTS})
    report = tmp_path / "report.json"

    seeded = mlexec("run", proj, "--env-manager", "virtualenv", env={"REPORT": str(report), **NO_PYC})
    assert_no_traceback(seeded)
    got = json.loads(report.read_text())
    expected = venv_dists(python.path, tmp_path / "real-venv")
    names = [name for name, _ in expected]
    assert "pip" in names and ("setuptools" in names) == setuptools  # what ensurepip bundles for this Python
    # exactly venv's distributions, at venv's versions, plus the requirement
    assert [tuple(d) for d in got["dists"]] == sorted({*map(tuple, expected), ("six", "1.16.0")})
    assert got["pkg_resources"] is setuptools
    assert seeded.returncode == (0 if setuptools else 7)  # mlexec exits with the command's status

    lean = mlexec("run", proj, "--env-manager", "uv", env={"REPORT": str(report), **NO_PYC})
    got_lean = json.loads(report.read_text())
    assert [tuple(d) for d in got_lean["dists"]] == [("six", "1.16.0")]  # neither pip nor setuptools
    assert got_lean["pkg_resources"] is False and lean.returncode == 7
    assert got_lean["prefix"] != got["prefix"] and len(env_dirs(env_root)) == 2
    statuses = [r.info.status for r in sorted(store.runs(), key=lambda r: r.info.start_time)]
    assert statuses == (["FINISHED", "FAILED"] if setuptools else ["FAILED", "FAILED"])
    tags = [r.data.tags["mlflow.project.env"] for r in sorted(store.runs(), key=lambda r: r.info.start_time)]
    assert tags == ["virtualenv", "uv"]

    # the seeded packages are compiled too
    site = site_packages(Path(got["prefix"]))
    assert compiled(site / "pip" / "__init__.py", version)
    assert compiled(site / "pip" / "_internal" / "cli" / "main.py", version)
    if setuptools:
        assert compiled(site / "pkg_resources" / "__init__.py", version)


def _wheel(dest: Path) -> Path:
    """A wheel whose package holds a file that does not compile (Python 2 test data, as real packages ship)."""
    name = "withbadfile"
    return build_wheel(dest, name, "1.0", {f"{name}/__init__.py": "VALUE = 42\n",
                                           f"{name}/tests/data/py2_only.py": "print 'this is Python 2'\n"})


@pytest.mark.parametrize("manager", ["virtualenv", "uv"])
def test_environment_is_compiled_when_python_writes_no_bytecode(mlexec, project, store, env_root, tmp_path,
                                                                manager):
    running = "%d.%d" % sys.version_info[:2]
    wheel = _wheel(tmp_path / "wheels")
    command = "python -c 'import six, idna, withbadfile; print(\"value\", withbadfile.VALUE)'"
    proj = project(f"name: compiled\npython_env: python_env.yaml\nentry_points:\n  main:\n    command: {json.dumps(command)}\n",
                   {"python_env.yaml": f'python: "{running}"\nbuild_dependencies:\n  - six==1.16.0\n'
                                       f"dependencies:\n  - idna==3.7\n  - {wheel}\n"})
    proc = mlexec("run", proj, "--env-manager", manager, env=NO_PYC)
    assert_no_traceback(proc)
    assert proc.returncode == 0 and "value 42" in proc.stdout  # a file that does not compile fails nothing
    assert store.only_run().info.status == "FINISHED"
    (name,) = env_dirs(env_root)
    site = site_packages(env_root / name)
    version = "%d.%d" % sys.version_info[:2]
    assert compiled(site / "six.py", version)  # a build dependency
    idna = sorted((site / "idna").glob("*.py"))
    assert idna and all(compiled(f, version) for f in idna), [f.name for f in idna if not compiled(f, version)]
    assert compiled(site / "withbadfile" / "__init__.py", version)
    assert not compiled(site / "withbadfile" / "tests" / "data" / "py2_only.py", version)
    assert (site / "pip").is_dir() == (manager == "virtualenv")


def test_python_that_cannot_seed_a_venv_is_one_clear_error(tmp_path):
    fake = tmp_path / "python3.99"
    fake.write_text('#!/bin/sh\necho \'{"error": "no ensurepip (No module named ensurepip)"}\'\n')
    fake.chmod(0o755)
    with pytest.raises(EnvironmentBuildError) as err:
        seed_wheels(Interpreter(str(fake), "3.99.0", "PATH"))
    assert "cannot seed a virtualenv as `python -m venv` does: no ensurepip" in err.value.message
    assert "--env-manager uv" in (err.value.hint or "")
