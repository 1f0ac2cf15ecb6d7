"""MLproject loading: everything MLflow's format has, and errors with key paths."""

from __future__ import annotations

import warnings

import pytest

from mlexec_core.testing import make_project
from mlexec_core.errors import ProjectError
from mlexec_core.project.loader import ProjectWarning, load_project
from mlexec_core.project.model import EnvKind, EnvVar, ParamType


def load(tmp_path, text, files=None, name="MLproject"):
    return load_project(make_project(tmp_path / "p", text, files, name))


def error(tmp_path, text, files=None) -> str:
    with pytest.raises(ProjectError) as info:
        load(tmp_path, text, files)
    return str(info.value)


FULL = """
name: wine
python_env: python_env.yaml
entry_points:
  main:
    parameters:
      alpha: float
      l1_ratio: {type: float, default: 0.1}
      epochs: {type: int, default: 5}
      data: {type: path, default: data}
      out: {type: uri, default: "file:///tmp/x"}
      verbose: {type: bool, default: true}
      label: {default: wine}
    command: "python train.py {alpha} {l1_ratio}"
  validate:
    command: "python validate.py"
"""


def test_full_project(tmp_path):
    project = load(tmp_path, FULL, {"python_env.yaml": "python: '3.11'\n"})
    assert project.name == "wine"
    assert project.environment.kind is EnvKind.PYTHON
    assert project.environment.file == project.directory / "python_env.yaml"
    assert list(project.entry_points) == ["main", "validate"]
    params = project.entry_points["main"].parameters
    assert params["alpha"].type is ParamType.FLOAT and params["alpha"].required
    assert params["l1_ratio"].default == "0.1" and not params["l1_ratio"].required
    assert params["epochs"].default == "5"
    assert params["data"].type is ParamType.PATH and params["data"].default == "data"
    assert params["verbose"].default == "True"  # str() of the YAML value, as MLflow renders it
    assert params["label"].type is ParamType.STRING and params["label"].default == "wine"


@pytest.mark.parametrize("name", ["MLproject", "mlproject", "MLProject", "MLPROJECT"])
def test_file_found_case_insensitively(tmp_path, name):
    project = load(tmp_path, "name: x\nentry_points: {main: {command: echo}}\n", name=name)
    assert project.name == "x" and project.mlproject.name == name


def test_conventions_python_env_before_conda(tmp_path):
    both = load(tmp_path, "name: x\n", {"python_env.yaml": "python: '3.11'\n", "conda.yaml": "name: c\n"})
    assert both.environment.kind is EnvKind.PYTHON and both.environment.origin == "convention"


def test_convention_conda(tmp_path):
    project = load(tmp_path, "name: x\n", {"conda.yaml": "name: c\n"})
    assert project.environment.kind is EnvKind.CONDA and project.environment.file.name == "conda.yaml"


def test_no_mlproject_at_all(tmp_path):
    d = make_project(tmp_path / "bare", None, {"train.py": "print(1)\n", "python_env.yaml": "python: '3.11'\n"})
    project = load_project(d)
    assert project.mlproject is None and project.entry_points == {}
    assert project.environment.kind is EnvKind.PYTHON
    assert project.display_name == "bare"


def test_nothing_declared(tmp_path):
    assert load(tmp_path, "name: x\n").environment.kind is EnvKind.NONE


def test_docker_env(tmp_path):
    project = load(tmp_path, """
        name: d
        docker_env:
          image: python:3.11
          volumes: ["/tmp/data:/data"]
          environment: ["HOME", ["MODE", "train"], ["N", 3]]
        entry_points: {main: {command: "python x.py"}}
    """)
    docker = project.environment.docker
    assert project.environment.kind is EnvKind.DOCKER
    assert docker.image == "python:3.11" and docker.volumes == ("/tmp/data:/data",)
    assert docker.environment == (EnvVar("HOME"), EnvVar("MODE", "train"), EnvVar("N", "3"))


def test_docker_env_dockerfile_extension(tmp_path):
    project = load(tmp_path, """
        name: d
        docker_env: {dockerfile: Dockerfile, context: ., args: {BASE: x}}
        entry_points: {main: {command: "true"}}
    """, {"Dockerfile": "FROM scratch\n"})
    assert project.environment.docker.dockerfile == "Dockerfile"
    assert project.environment.docker.args == {"BASE": "x"}


@pytest.mark.parametrize(
    "text, files, expected",
    [
        ("name: x\ndocker_env: {volumes: []}\n", None, "docker_env: needs an image"),
        ("name: x\ndocker_env: {dockerfile: Nope}\n", None, "docker_env.dockerfile: the file 'Nope' does not exist"),
        ("name: x\ndocker_env: {image: a, environment: [[1, 2, 3]]}\n", None,
         'docker_env.environment[0]: expected "NAME"'),
        ("name: x\npython_env: missing.yaml\n", None, "python_env: the file 'missing.yaml' does not exist"),
        ("name: x\nconda_env: c.yaml\npython_env: p.yaml\n", {"c.yaml": "", "p.yaml": ""},
         "one environment, but this one has conda_env, python_env"),
        ("name: x\nentry_points:\n  main:\n    parameters: [a]\n    command: x\n", None,
         "entry_points.main.parameters: expected a mapping of parameter names to types, got a list"),
        ("name: x\nentry_points:\n  main:\n    parameters: {a: 5}\n    command: x\n", None,
         "entry_points.main.parameters.a: expected a type name or a mapping with type and default, got int"),
        ("name: x\ndocker_env: {image: a, volumes: a}\n", None, "docker_env.volumes: expected a list of strings"),
        ("name: x\ndocker_env: [a]\n", None, "docker_env: expected a mapping with image"),
        ("name: [x]\n", None, "name: expected a string, got a list"),
        ("name: x\npython_env: [a]\n", None, "python_env: expected the name of a file in the project"),
        ("name: x\nentry_points:\n  main: {}\n", None, "entry_points.main.command: required key is missing"),
        ("name: x\nentry_points:\n  main: {command: [a, b]}\n", None,
         "entry_points.main.command: expected a string, got a list"),
        ("name: x\nentry_points: [main]\n", None, "entry_points: "),
        ("name: [x\n", None, "MLproject:2:1: invalid YAML"),
        ("!!int 08\n", None, "MLproject:1:1: invalid YAML: 08 is not a valid !!int value"),
        ("name: !!bool maybe\n", None, "MLproject:1:7: invalid YAML: maybe is not a valid !!bool value"),
        ("a: " + "[" * 400 + "]" * 400 + "\n", None, "nested more than 64 levels deep"),
        ('name: "a\\0b"\n', None, "name: the value contains a NUL character"),
        ('name: "\\ud800"\n', None, "a lone surrogate"),
        ("- a\n- b\n", None, "expected a mapping at the top level"),
    ],
)
def test_errors_name_the_key(tmp_path, text, files, expected):
    message = error(tmp_path, text, files)
    assert expected in message
    assert "MLproject" in message  # the file is named


def test_unknown_top_level_key_warns(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        project = load(tmp_path, "nmae: x\nentry_points: {main: {command: echo}}\n")
    assert project.name is None
    assert any("unknown key 'nmae' is ignored (did you mean 'name'?)" in str(w.message) for w in caught
               if issubclass(w.category, ProjectWarning))


def test_type_aliases(tmp_path):
    project = load(tmp_path, "entry_points:\n  main:\n    parameters: {a: str, b: integer, c: boolean}\n"
                             "    command: x\n")
    params = project.entry_points["main"].parameters
    assert [p.type for p in params.values()] == [ParamType.STRING, ParamType.INT, ParamType.BOOL]


def test_empty_file_is_a_project_without_entry_points(tmp_path):
    project = load(tmp_path, "")
    assert project.entry_points == {} and project.name is None
