"""What keeps `mlexec run` lean, seen from outside: a second run of an unchanged project
does not import PyYAML (its MLproject comes from the parse cache), a changed or warned-about
file is read again, and the fast exit still flushes everything and keeps the status."""

from __future__ import annotations

import re


def _imports(proc) -> set[str]:
    return {m[1].strip() for m in re.finditer(r"import time:\s+\d+ \|\s+\d+ \|(.*)", proc.stderr)}


def test_a_second_run_of_an_unchanged_project_does_not_parse_yaml(mlexec, project, store, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    proj = project("entry_points:\n  main:\n    parameters: {n: {type: int, default: 1}}\n    command: 'echo n={n}'\n")
    first = mlexec("run", proj, "--env-manager", "local", env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, check=0)
    assert "yaml" in _imports(first)
    second = mlexec("run", proj, "--env-manager", "local", "-P", "n=2", env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
                    check=0)
    assert "yaml" not in _imports(second)
    assert "n=2" in second.stdout
    assert len(list((tmp_path / "cache" / "mlexec" / "parsed").iterdir())) == 1

    (proj / "MLproject").write_text("entry_points:\n  main:\n    command: 'echo changed'\n")
    third = mlexec("run", proj, "--env-manager", "local", env=env, check=0)
    assert "changed" in third.stdout
    assert [r.info.status for r in store.runs()] == ["FINISHED"] * 3


def test_a_file_with_a_warning_warns_on_every_run(mlexec, project, store, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    proj = project("entry_points:\n  main:\n    command: 'echo one'\n  main:\n    command: 'echo two'\n")
    for _ in range(2):
        proc = mlexec("run", proj, "--env-manager", "local", env=env, check=0)
        assert "duplicate key 'main'" in proc.stderr
        assert "two" in proc.stdout


def test_a_broken_cache_is_a_miss(mlexec, project, store, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    proj = project("entry_points:\n  main:\n    command: 'echo fine'\n")
    mlexec("run", proj, "--env-manager", "local", env=env, check=0)
    [slot] = (tmp_path / "cache" / "mlexec" / "parsed").iterdir()
    slot.write_bytes(b"\x00not marshal")
    assert "fine" in mlexec("run", proj, "--env-manager", "local", env=env, check=0).stdout


def test_the_fast_exit_keeps_the_status_and_the_output(mlexec, project, store):
    proj = project("entry_points:\n  main:\n    command: 'seq 1 20000; exit 7'\n")
    proc = mlexec("run", proj, "--env-manager", "local", check=7)
    assert proc.stdout.splitlines()[-1] == "20000"
    assert "failed" in proc.stderr.splitlines()[-1]
    assert mlexec("--help", check=0).stdout.startswith("Usage: mlexec")


def test_a_no_op_run_does_not_import_what_it_does_not_use(mlexec, project, store, tmp_path):
    proj = project("entry_points:\n  main:\n    command: 'echo quiet'\n")
    proc = mlexec("run", proj, "--env-manager", "local", env={"PYTHONPROFILEIMPORTTIME": "1"}, check=0)
    assert "quiet" in proc.stdout
    # the host name, the live-log folder, the shell lookup and the run name need none of these
    assert not {"socket", "tempfile", "shutil", "random"} & _imports(proc), proc.stderr[-6000:]
    # a sqlite store is written directly: MLflow's client and its bounded-call machinery stay unloaded
    assert not {"mlexec_core.builtins.mlflow.client", "contextvars"} & _imports(proc), proc.stderr[-6000:]
    [run] = store.runs()
    assert run.info.status == "FINISHED" and run.info.run_name.count("-") == 2
