"""conda.yaml parsing, cache keys and engine selection (no environments built)."""

from __future__ import annotations

import pytest

from mlexec_core.errors import EnvironmentBuildError

from mlexec_conda.engines import ExecutableEngine, RattlerEngine, channel_urls, describe_solver_error, find_engine
from mlexec_conda.spec import parse_conda_yaml


def _write(tmp_path, text):
    path = tmp_path / "conda.yaml"
    path.write_text(text)
    return path


def _parse(tmp_path, text):
    return parse_conda_yaml(_write(tmp_path, text))


def test_parse_full_file(tmp_path):
    spec = _parse(tmp_path, """
name: demo
channels: [conda-forge, defaults]
dependencies:
  - python=3.11
  - "numpy   >=1.20 "
  - 7zip
  - pip:
      - requests>=2
      - -r requirements.txt
variables: {A: "1", B: 2}
""")
    assert spec.name == "demo" and spec.channels == ("conda-forge", "defaults")
    assert spec.dependencies == ("python=3.11", "numpy >=1.20", "7zip")
    assert spec.pip == ("requests>=2", "-r requirements.txt")
    assert spec.variables == {"A": "1", "B": "2"}


def test_key_ignores_layout_name_and_order_of_packages(tmp_path):
    a = _parse(tmp_path, "name: a\nchannels: [x]\ndependencies: [b, a, {pip: [q, p]}]\n")
    b = _parse(tmp_path, "dependencies:\n - a\n - pip: [p, q]\n - '  b'\nchannels:\n - x\nname: other\n")
    assert a.key_data() == b.key_data()
    c = _parse(tmp_path, "channels: [y, x]\ndependencies: [a, b, {pip: [p, q]}]\n")
    assert c.key_data() != a.key_data()  # channel order is priority


@pytest.mark.parametrize("text, key", [
    ("channels: conda-forge\n", "channels"),
    ("dependencies: numpy\n", "dependencies"),
    ("dependencies: [numpy, {pipx: [a]}]\n", "dependencies[1]"),
    ("dependencies: [{pip: requests}]\n", "dependencies[0].pip"),
    ("variables: [A]\n", "variables"),
    ("- just a list\n", "expected a mapping"),
    ("dependencies: [a\n", "conda.yaml:2:1: invalid YAML"),
    ("dependencies: [!!int 08]\n", "invalid YAML: 08 is not a valid !!int value"),
    ("variables: {A: [1]}\n", "variables.A: expected a variable name and a string value"),
])
def test_malformed_file_names_the_key(tmp_path, text, key):
    with pytest.raises(EnvironmentBuildError) as err:
        _parse(tmp_path, text)
    assert key in str(err.value) and str(tmp_path / "conda.yaml") in str(err.value)


def test_channel_urls(tmp_path):
    from rattler import Channel

    forge = Channel("conda-forge").base_url.rstrip("/")
    assert channel_urls(("conda-forge", "nodefaults", "file:///srv/chan/", str(tmp_path))) == {
        "conda-forge": forge, "file:///srv/chan/": "file:///srv/chan", str(tmp_path): tmp_path.as_uri()}
    assert channel_urls(()) == {"conda-forge": forge}

    defaults = parse_conda_yaml(_write(tmp_path, "channels: [defaults]\ndependencies: [a]\n"))
    with pytest.raises(EnvironmentBuildError, match="'defaults'.*not available to the built-in rattler engine"):
        RattlerEngine().validate(defaults)
    ExecutableEngine("/x/conda").validate(defaults)  # conda knows its defaults


def test_solver_error_names_the_packages():
    text = ("Cannot solve the request because of: top * cannot be installed because there are no viable options:\n"
            "└─ top 1.0 would require\n   └─ leaf <2, for which no candidates were found.\n")
    assert describe_solver_error(text, ("top", "leaf >=2")).startswith(
        "cannot solve the environment: nothing satisfies leaf <2 (conflicts with leaf >=2 in the file)")
    assert "nothing satisfies nosuch >=1.2\n" in describe_solver_error(
        "Cannot solve the request because of: No candidates were found for nosuch >=1.2.\n")


def _exe(folder, name):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_engine_selection_order(tmp_path):
    path_dir = tmp_path / "path"
    assert isinstance(find_engine({"PATH": str(path_dir)}), RattlerEngine)
    _exe(path_dir, "micromamba")
    assert find_engine({"PATH": str(path_dir)}).flavour == "micromamba"
    _exe(path_dir, "conda")
    assert find_engine({"PATH": str(path_dir)}).flavour == "conda"  # conda first, as MLflow
    home = tmp_path / "home"
    conda = _exe(home / "bin", "conda")
    mamba = _exe(home / "bin", "mamba")
    assert find_engine({"PATH": str(path_dir), "MLFLOW_CONDA_HOME": str(home)}).executable == str(conda)
    assert find_engine({"PATH": str(path_dir), "MLFLOW_CONDA_HOME": str(home),
                        "MLFLOW_CONDA_CREATE_ENV_CMD": "mamba"}).executable == str(mamba)
    assert isinstance(find_engine({"PATH": str(path_dir), "MLEXEC_CONDA_EXE": "rattler"}), RattlerEngine)
    assert find_engine({"PATH": "", "MLEXEC_CONDA_EXE": str(mamba)}).name == "mamba"


@pytest.mark.parametrize("environ, hint", [
    ({"MLEXEC_CONDA_EXE": "nosuch-conda"}, "MLEXEC_CONDA_EXE"),
    ({"MLFLOW_CONDA_HOME": "/nonexistent"}, "MLFLOW_CONDA_HOME"),
    ({"MLFLOW_CONDA_CREATE_ENV_CMD": "nosuch-mamba"}, "MLFLOW_CONDA_CREATE_ENV_CMD"),
])
def test_engine_misconfiguration_is_a_user_error(environ, hint):
    with pytest.raises(EnvironmentBuildError, match=hint):
        find_engine({"PATH": "", **environ})


def test_commands_per_flavour(tmp_path):
    prefix, file = tmp_path / "p", tmp_path / "env.yml"
    assert ExecutableEngine("/x/conda").command(prefix, file) == [
        "/x/conda", "env", "create", "--prefix", str(prefix), "--file", str(file)]
    assert ExecutableEngine("/x/mamba").command(prefix, file)[1:3] == ["env", "create"]
    assert ExecutableEngine("/x/micromamba").command(prefix, file)[1:3] == ["create", "--yes"]
