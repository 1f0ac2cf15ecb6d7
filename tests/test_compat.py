"""MLproject files that `mlflow run` runs, as real repositories write them (issue 10).

Each fixture in ``tests/fixtures/compat/`` runs through the real CLI into a real
sqlite store: the arguments the command receives, the params logged and the
warning's wording are checked.  ``test_same_argv_and_params_as_mlflow_run`` runs
one of them with ``mlflow run`` itself and compares.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlexec_core.testing import assert_no_traceback

FIXTURES = Path(__file__).parent / "fixtures" / "compat"


@pytest.fixture
def fixtures(tmp_path) -> Path:
    """A copy of the fixtures (a run never writes into them, but a copy keeps git out of the picture)."""
    root = tmp_path / "compat"
    shutil.copytree(FIXTURES, root)
    return root


def run(mlexec, fixtures, tmp_path, name, *args, check=0):
    out = tmp_path / "argv.json"
    out.unlink(missing_ok=True)
    proc = mlexec("run", fixtures / name, "--env-manager", "local", *args, env={"OUT": str(out), "NO_COLOR": "1"},
                  check=check)
    assert_no_traceback(proc)
    argv = json.loads(out.read_text()) if out.exists() else None
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    return proc, argv, warnings


def test_a_missing_space_after_type_is_a_string_with_a_warning(mlexec, fixtures, tmp_path, store):
    _, argv, warnings = run(mlexec, fixtures, tmp_path, "missing-space", "-P", "gamma=not-a-float")
    assert argv == ["0.5", "0.1", "not-a-float"]  # strings, unchecked, as in MLflow
    assert warnings == [
        "warning: MLproject: entry_points.main.parameters.alpha: unknown key 'type:float' is ignored (did you mean "
        "'type: float'? YAML needs a space after the colon): the parameter has no type, so it is a string, as in "
        "MLflow",
        "warning: MLproject: entry_points.main.parameters.beta: unknown key 'type float' is ignored (did you mean "
        "'type: float'? YAML needs a space after the colon): the parameter has no type, so it is a string, as in "
        "MLflow",
        "warning: MLproject: entry_points.main.parameters.gamma.type: unknown type 'type:float': the parameter is a "
        "string, as in MLflow (did you mean 'type: float' under gamma:? mlexec checks string, int, float, bool, "
        "path, uri)",
    ]
    assert store.only_run().data.params == {"alpha": "0.5", "beta": "0.1", "gamma": "not-a-float"}


def test_unknown_docker_env_keys_warn_and_the_run_goes_on(mlexec, fixtures, tmp_path):
    proc = mlexec("run", fixtures / "docker-env-keys", "--dry-run", "--json", env={"NO_COLOR": "1"}, check=0)
    assert json.loads(proc.stdout)["command"] == "echo 2"
    assert [line for line in proc.stderr.splitlines() if line.startswith("warning: ")] == [
        "warning: MLproject: docker_env: unknown key 'namespace' is ignored, as MLflow ignores it",
        "warning: MLproject: docker_env: unknown key 'registry' is ignored, as MLflow ignores it",
    ]


def test_unknown_types_are_strings(mlexec, fixtures, tmp_path, store):
    _, argv, warnings = run(mlexec, fixtures, tmp_path, "unknown-types", "-P", "count=2.5")
    assert argv == ["a,b", "{}", "2.5", "x"]  # number is float's alias: 2.5 is checked and passes
    assert warnings == [
        "warning: MLproject: entry_points.main.parameters.names.type: unknown type 'list[str]': the parameter is a "
        "string, as in MLflow (mlexec checks string, int, float, bool, path, uri)",
        "warning: MLproject: entry_points.main.parameters.options.type: unknown type 'dict': the parameter is a "
        "string, as in MLflow (mlexec checks string, int, float, bool, path, uri)",
    ]


def test_an_invalid_default_warns_and_is_passed_as_mlflow_passes_it(mlexec, fixtures, tmp_path, store):
    _, argv, warnings = run(mlexec, fixtures, tmp_path, "invalid-default")
    assert argv == ["None", "fast", "later"]
    assert warnings[0] == (
        "warning: MLproject: entry_points.main.parameters.n.default: 'None' is not an int; it is passed as written "
        "('None'), as MLflow passes it (a value given with -P n=... is checked)")
    assert "entry_points.main.parameters.rate.default: 'fast' is not a float" in warnings[1]
    assert "entry_points.main.parameters.where.default: 'later' is not a URI" in warnings[2]
    assert store.only_run().data.params == {"n": "None", "rate": "fast", "where": "later"}
    # a value given with -P is still checked strictly: one error, no run
    proc, argv, _ = run(mlexec, fixtures, tmp_path, "invalid-default", "-P", "n=abc", check=2)
    assert "error: -P n: 'abc' is not an int" in proc.stderr and argv is None
    assert len(store.runs()) == 1


def test_yaml_defaults_are_rendered_with_str_and_user_values_as_typed(mlexec, fixtures, tmp_path, store):
    _, argv, warnings = run(mlexec, fixtures, tmp_path, "yaml-values")
    # Python's str() of the YAML value, as MLflow renders it; YAML 1.1 reads `no` as false, `1e-5` as a string
    assert argv == ["True", "False", "1e-05", "0.1", "1e-5", "16", "0.5"]
    assert warnings == []
    assert store.only_run().data.params == {"flag": "True", "quiet": "False", "lr": "1e-05", "momentum": "0.1",
                                            "decay": "1e-5", "width": "16", "ratio": "0.5"}
    # -P values reach the command exactly as typed: checking never changes them
    _, argv, _ = run(mlexec, fixtures, tmp_path, "yaml-values", "-P", "flag=True", "-P", "lr=1e-3",
                     "-P", "width=+7", "-P", "quiet=no")
    assert argv == ["True", "no", "1e-3", "0.1", "1e-5", "+7", "0.5"]
    proc, argv, _ = run(mlexec, fixtures, tmp_path, "yaml-values", "-P", "flag=maybe", check=2)
    assert "-P flag: 'maybe' is not a bool" in proc.stderr


def test_only_the_selected_entry_point_is_checked(mlexec, fixtures, tmp_path, store):
    _, argv, warnings = run(mlexec, fixtures, tmp_path, "broken-beside-good")
    assert argv == ["0.5"] and warnings == []  # nothing said about `broken` or `typo`
    proc, argv, _ = run(mlexec, fixtures, tmp_path, "broken-beside-good", "-e", "broken", check=2)
    assert "MLproject: entry_points.broken.parameters: expected a mapping of parameter names to types, got a list" \
        in proc.stderr and argv is None
    _, argv, warnings = run(mlexec, fixtures, tmp_path, "broken-beside-good", "-e", "typo")
    assert argv == ["{alpha}"]  # `paramters` is ignored, as in MLflow; the placeholder stays as written
    assert warnings[0] == ("warning: MLproject: entry_points.typo: unknown key 'paramters' is ignored (did you mean "
                           "'parameters'?), as MLflow ignores it")
    assert [r.info.status for r in store.runs()] == ["FINISHED", "FINISHED"]


def _git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_source_tags_of_a_directory_in_a_git_work_tree(mlexec, fixtures, tmp_path, store):
    """mlflow.source.name is file://<root>#<subdirectory>; a file:// remote is the repoURL as given."""
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(fixtures / "yaml-values", work / "projects" / "yaml-values")
    shutil.copy(fixtures / "argv.py", work / "projects" / "argv.py")
    _git("init", "-q", cwd=work)
    _git("remote", "add", "origin", origin.as_uri(), cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-qm", "x", cwd=work)
    out = tmp_path / "argv.json"
    mlexec("run", work / "projects" / "yaml-values", "--env-manager", "local", env={"OUT": str(out)}, check=0)
    tags = store.only_run().data.tags
    assert tags["mlflow.source.name"] == f"file://{work.resolve()}#projects/yaml-values"
    assert tags["mlflow.source.git.repoURL"] == f"file://{origin}"
    assert len(tags["mlflow.source.git.commit"]) == 40


@pytest.mark.slow
def test_same_argv_and_params_as_mlflow_run(mlexec, fixtures, tmp_path, store):
    """The yaml-values fixture with `mlflow run` itself: the same arguments and the same params."""
    _, ours, _ = run(mlexec, fixtures, tmp_path, "yaml-values", "-P", "flag=True", "-P", "lr=1e-3")
    out = tmp_path / "mlflow-argv.json"
    env = {**os.environ, "OUT": str(out), "MLFLOW_TRACKING_URI": store.uri}
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(fixtures / "yaml-values"), "--env-manager",
                           "local", "-P", "flag=True", "-P", "lr=1e-3"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == ours
    mine, theirs = sorted(store.runs(), key=lambda r: r.info.start_time)
    assert mine.data.params == theirs.data.params
    for tag in ("mlflow.source.name", "mlflow.source.type", "mlflow.project.entryPoint"):
        assert mine.data.tags[tag] == theirs.data.tags[tag], tag


@pytest.mark.slow
def test_git_work_tree_source_tags_as_mlflow_run(mlexec, fixtures, tmp_path, store):
    """A project in a subdirectory of a git work tree with a file:// remote: the same source tags as mlflow run."""
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    work = tmp_path / "work"
    shutil.copytree(fixtures / "yaml-values", work / "projects" / "yaml-values")
    shutil.copy(fixtures / "argv.py", work / "projects" / "argv.py")
    _git("init", "-q", cwd=work)
    _git("remote", "add", "origin", origin.as_uri(), cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-qm", "x", cwd=work)
    project = work / "projects" / "yaml-values"
    env = {**os.environ, "OUT": str(tmp_path / "argv.json"), "MLFLOW_TRACKING_URI": store.uri}
    mlexec("run", project, "--env-manager", "local", env={"OUT": env["OUT"]}, check=0)
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    mine, theirs = sorted(store.runs(), key=lambda r: r.info.start_time)
    for tag in ("mlflow.source.name", "mlflow.source.git.repoURL", "mlflow.source.git.commit"):
        assert mine.data.tags[tag] == theirs.data.tags[tag], tag


def _work_tree(fixtures, tmp_path, remote: bool):
    work = tmp_path / "work"
    shutil.copytree(fixtures / "yaml-values", work / "projects" / "yaml-values")
    shutil.copy(fixtures / "argv.py", work / "projects" / "argv.py")
    _git("init", "-q", cwd=work)
    if remote:
        origin = tmp_path / "origin.git"
        subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
        _git("remote", "add", "origin", origin.as_uri(), cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-qm", "x", cwd=work)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
    return work, commit


@pytest.mark.parametrize("remote", [False, True])
def test_a_file_uri_with_a_version_records_the_repo_url_mlflow_records(mlexec, fixtures, tmp_path, store, remote):
    """With --version, MLflow fetches the version from the repository's remote, and adds the URI as
    given (without #sub) as that remote when there is none: that is the repoURL it records."""
    work, commit = _work_tree(fixtures, tmp_path, remote)
    uri = f"{work.as_uri()}#projects/yaml-values"
    mlexec("run", uri, "--env-manager", "local", "-v", commit, env={"OUT": str(tmp_path / "argv.json")}, check=0)
    tags = store.only_run().data.tags
    assert tags["mlflow.source.git.repoURL"] == ((tmp_path / "origin.git").as_uri() if remote else work.as_uri())
    assert tags["mlflow.source.git.commit"] == commit


@pytest.mark.slow
def test_file_uri_with_a_version_source_tags_as_mlflow_run(mlexec, fixtures, tmp_path, store):
    work, commit = _work_tree(fixtures, tmp_path, remote=False)
    uri = f"{work.as_uri()}#projects/yaml-values"
    env = {**os.environ, "OUT": str(tmp_path / "argv.json"), "MLFLOW_TRACKING_URI": store.uri}
    mlexec("run", uri, "--env-manager", "local", "-v", commit, env={"OUT": env["OUT"]}, check=0)
    # (mlflow run adds a remote to the repository and checks the version out in it: it goes second)
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", uri, "--env-manager", "local", "-v", commit],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    mine, theirs = sorted(store.runs(), key=lambda r: r.info.start_time)
    for tag in ("mlflow.source.git.repoURL", "mlflow.source.git.commit"):
        assert mine.data.tags[tag] == theirs.data.tags[tag], tag
