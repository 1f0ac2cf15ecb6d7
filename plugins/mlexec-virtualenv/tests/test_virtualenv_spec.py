"""Reading python_env.yaml / conda.yaml / requirement files, the cache key, and finding interpreters.

In-process and fast: no uv, no installs (the CLI tests in test_virtualenv_run.py do those).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from mlexec_core.errors import EnvironmentBuildError, ProjectError
from mlexec_core.project.loader import load_project
from mlexec_core.testing import make_project
from mlexec_virtualenv import interpreters
from mlexec_virtualenv.manager import VirtualenvManager, resolve
from mlexec_virtualenv.spec import expand_requirements, read_spec

RUNNING = "%d.%d" % sys.version_info[:2]


def load(tmp_path, files, mlproject="entry_points: {main: {command: 'true'}}\n"):
    return load_project(make_project(tmp_path / "proj", mlproject, files))


def test_python_env_yaml_with_nested_requirement_files(tmp_path):
    project = load(tmp_path, {
        "python_env.yaml": """\
            python: "3.11"
            build_dependencies: [pip, wheel]
            dependencies:
              - six==1.16.0   # trailing comment
              - -r reqs/base.txt
            """,
        "reqs/base.txt": "# a comment\nidna==3.7 \\\n  ; python_version >= '3'\n-r more.txt\n-c pins.txt\n",
        "reqs/more.txt": "--requirement=../extra.txt\n",
        "extra.txt": "attrs\n",
        "reqs/pins.txt": "idna<4\n",
    })
    spec = read_spec(project)
    assert spec.python == "3.11" and not spec.python_was_number
    assert spec.build_dependencies == ("pip", "wheel")
    pins = project.directory / "reqs" / "pins.txt"
    assert spec.dependencies == ("six==1.16.0", "idna==3.7 ; python_version >= '3'", "attrs", f"-c {pins}")
    assert [c[0] for c in spec.constraints] == [str(pins)]
    assert spec.lock is None and spec.dropped == ()


def test_requirement_file_errors_name_the_file(tmp_path):
    with pytest.raises(EnvironmentBuildError, match="no such file") as missing:
        expand_requirements(["-r nope.txt"], tmp_path, "python_env.yaml: dependencies")
    assert "python_env.yaml: dependencies" in str(missing.value) and "relative to the project" in str(missing.value)
    (tmp_path / "a.txt").write_text("-r b.txt\n")
    (tmp_path / "b.txt").write_text("-r a.txt\n")
    with pytest.raises(EnvironmentBuildError, match="include each other"):
        expand_requirements(["-r a.txt"], tmp_path, "x")


@pytest.mark.parametrize("text, message", [
    ("python: '3.11'\ndependecies: [six]\n", "unknown key 'dependecies' (did you mean 'dependencies'?)"),
    ("dependencies: six\n", "dependencies: expected a list of requirement strings"),
    ("- six\n", "expected a mapping"),
    ("python: [3]\n", "python: expected a version"),
    ("python: '3.11\n", "invalid YAML"),
])
def test_malformed_python_env(tmp_path, text, message):
    project = load(tmp_path, {"python_env.yaml": text})
    with pytest.raises(ProjectError) as err:
        read_spec(project)
    assert message in str(err.value) and "python_env.yaml" in str(err.value)


def test_unquoted_version_is_flagged_in_the_error(tmp_path):
    project = load(tmp_path, {"python_env.yaml": "python: 3.10\n"})  # YAML: 3.1
    spec = read_spec(project)
    assert spec.python == "3.1" and spec.python_was_number
    with pytest.raises(EnvironmentBuildError) as err:
        resolve(project)
    assert "no Python 3.1 on this machine" in str(err.value) and 'quote it' in str(err.value)


def test_conda_yaml_keeps_python_pip_tools_and_pip_list(tmp_path):
    project = load(tmp_path, {"conda.yaml": """\
        name: x
        channels: [conda-forge]
        dependencies:
          - python=3.11.7
          - pip=23
          - setuptools>=60
          - numpy=1.26
          - conda-forge::libblas
          - pip:
            - six==1.16.0
            - -r requirements.txt
        """, "requirements.txt": "idna\n"})
    spec = read_spec(project)
    assert spec.python == "3.11.7"
    assert spec.build_dependencies == ("pip==23.*", "setuptools>=60")
    assert spec.dependencies == ("six==1.16.0", "idna")
    assert spec.dropped == ("numpy=1.26", "conda-forge::libblas")


def test_conda_python_range_is_refused(tmp_path):
    project = load(tmp_path, {"conda.yaml": "dependencies: [python<3.12]\n"})
    with pytest.raises(ProjectError, match="needs one Python version"):
        read_spec(project)


def test_key_follows_the_contents(tmp_path):
    files = {"python_env.yaml": f"python: '{RUNNING}'\ndependencies: [-r requirements.txt]\n",
             "requirements.txt": "six==1.16.0\n"}
    first = resolve(load(tmp_path, files))
    assert resolve(load(tmp_path, files)).key == first.key  # same spec, same environment
    (tmp_path / "proj" / "requirements.txt").write_text("six==1.17.0\n")
    changed = resolve(load(tmp_path, files | {"requirements.txt": "six==1.17.0\n"}))
    assert changed.key != first.key
    (tmp_path / "proj" / "uv.lock").write_text("version = 1\n")
    locked = resolve(load(tmp_path, files | {"requirements.txt": "six==1.17.0\n"}))
    assert locked.key != changed.key and locked.spec.lock is not None
    assert first.key_spec["manager"] == "virtualenv" and first.key_spec["python"].startswith(RUNNING + ".")
    assert first.summary.startswith(f"python {RUNNING}.") and "six==1.16.0" in first.summary


def test_describe_says_whether_it_is_cached(tmp_path, env_root):
    from mlexec_core.plugin.interfaces import Context

    project = load(tmp_path, {"python_env.yaml": f"python: '{RUNNING}'\n"})
    manager = VirtualenvManager(Context())
    assert manager.describe(project).endswith("no requirements; to be created)")
    key = resolve(project).key
    (env_root / f"virtualenv-{key}").mkdir(parents=True)
    (env_root / f"virtualenv-{key}" / ".mlexec-env.json").write_text("{}")
    assert manager.describe(project).endswith("cached)")


# -- interpreters ----------------------------------------------------------------------------


def _script(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def test_interpreters_from_path_and_pyenv_not_shims(tmp_path):
    root = tmp_path / "pyenv"
    in_pyenv = _script(root / "versions" / "3.97.2" / "bin" / "python3.97", "3.97.2")
    _script(root / "versions" / "3.97.1" / "bin" / "python3", "3.97.1")
    _script(root / "versions" / "2.7.18" / "bin" / "python2.7", "2.7.18")
    _script(root / "versions" / "myenv" / "bin" / "python3", "3.97.9")  # a pyenv-virtualenv: not a version
    _script(root / "shims" / "python3.96", "3.96.0")
    on_path = _script(tmp_path / "bin" / "python3.98", "3.98.0")
    _script(tmp_path / "bin" / "python3.98-config", "x")  # not an interpreter
    environ = {"PYENV_ROOT": str(root), "PATH": os.pathsep.join([str(root / "shims"), str(tmp_path / "bin")])}
    cache = tmp_path / "interpreters.json"
    found = interpreters.find_interpreters(environ, cache)
    assert found[0].origin == "mlexec" and found[0].version == "%d.%d.%d" % sys.version_info[:3]
    by_version = {i.version: i for i in found[1:]}
    assert set(by_version) == {"3.98.0", "3.97.1", "3.97.2"}
    assert by_version["3.98.0"].path == str(on_path) and by_version["3.98.0"].origin == "PATH"
    assert interpreters.choose(found, "3.97").path == str(in_pyenv)  # newest 3.97.*
    assert interpreters.choose(found, "3.97.1").version == "3.97.1"
    assert interpreters.choose(found, "3.96") is None  # only behind a shim
    assert interpreters.choose(found, None) is found[0]
    # a PATH interpreter's version is remembered by (size, mtime): not asked again while unchanged
    data = json.loads(cache.read_text())
    data[str(on_path)][2] = "3.98.7"
    cache.write_text(json.dumps(data))
    assert "3.98.7" in {i.version for i in interpreters.find_interpreters(environ, cache)}
    _script(on_path, "3.98.11")  # changed: asked again
    assert "3.98.11" in {i.version for i in interpreters.find_interpreters(environ, cache)}


@pytest.mark.parametrize("text, expected", [
    ("3.11", "3.11"), ("==3.11.7", "3.11.7"), ("3.11.*", "3.11"), ("3", "3"), (" 3.12 ", "3.12"),
    (">=3.9", None), ("latest", None), ("3.11.7.1", None),
])
def test_normalise_request(text, expected):
    assert interpreters.normalise_request(text) == expected
