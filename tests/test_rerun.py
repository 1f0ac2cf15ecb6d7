"""``mlexec rerun RUN_ID`` (issue 23, items 3 and 4): the recorded run again as it was, from
its record; what cannot be had again is one clear error before any run exists.  The real CLI,
a real store, real git."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlexec_core.reproduce.rerun import Recorded, rerun_options
from mlexec_core.testing import assert_no_traceback

JOB = "import sys\nprint('code says', open('version.txt').read().strip(), 'lr', sys.argv[1])\n"
MLPROJECT = f"""
name: rerun
entry_points:
  main:
    parameters: {{lr: {{type: float, default: 0.1}}}}
    command: "{sys.executable} job.py {{lr}}"
"""


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout


def run_id(proc) -> str:
    return proc.stderr.split("=== Run ", 1)[1].split()[0]


def said(proc) -> str:
    return next(line for line in proc.stdout.splitlines() if line.startswith("code says"))


def test_a_dirty_work_tree_is_rerun_with_its_uncommitted_changes(mlexec, project, store):
    folder = project(MLPROJECT, files={"job.py": JOB, "version.txt": "committed\n"})
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "first")
    (folder / "version.txt").write_text("uncommitted edit\n")
    first = mlexec("run", folder, "--env-manager", "local", "-P", "lr=0.5", check=0)
    assert said(first) == "code says uncommitted edit lr 0.5"
    git(folder, "checkout", "--", ".")  # the edit is gone from the work tree
    (folder / "version.txt").write_text("a later edit\n")
    again = mlexec("rerun", run_id(first), check=0)
    assert_no_traceback(again)
    assert said(again) == "code says uncommitted edit lr 0.5"  # the code the run ran, not the tree's
    new = store.client.get_run(run_id(again))
    assert new.data.tags["mlexec.rerunOf"] == run_id(first)
    assert new.data.params["lr"] == "0.5" and new.data.tags["mlexec.source.dirty"] == "true"
    assert "mlexec.rerun.overrides" not in new.data.tags
    assert (folder / "version.txt").read_text() == "a later edit\n"  # the user's tree is left alone


def test_an_override_changes_one_thing_and_is_recorded(mlexec, project, store):
    folder = project(MLPROJECT, files={"job.py": JOB, "version.txt": "v1\n"})
    first = mlexec("run", folder, "--env-manager", "local", "-P", "lr=0.5", check=0)
    again = mlexec("rerun", run_id(first), "-P", "lr=0.7", check=0)
    assert said(again) == "code says v1 lr 0.7"
    new = store.client.get_run(run_id(again))
    assert new.data.tags["mlexec.rerun.overrides"] == "-P lr=0.7"
    bad = mlexec("rerun", run_id(first), "-P", "lr=fast", check=2)  # typed, as mlexec run: before any run
    assert_no_traceback(bad)
    assert "lr" in bad.stderr and len(store.runs()) == 2


def test_a_folder_changed_since_the_run_is_refused_naming_the_files(mlexec, project, store):
    folder = project(MLPROJECT, files={"job.py": JOB, "version.txt": "v1\n"})
    first = mlexec("run", folder, "--env-manager", "local", check=0)
    same = mlexec("rerun", run_id(first), check=0)  # unchanged: runs in place
    assert said(same) == "code says v1 lr 0.1"
    (folder / "version.txt").write_text("v2\n")
    (folder / "notes.md").write_text("new\n")
    refused = mlexec("rerun", run_id(first), check=2)
    assert_no_traceback(refused)
    assert f"the code in {folder} changed since run {run_id(first)}" in refused.stderr
    assert "~ version.txt" in refused.stderr and "+ notes.md" in refused.stderr
    assert "--from-snapshot" in refused.stderr and len(store.runs()) == 2  # no run was created
    snap = mlexec("rerun", run_id(first), "--from-snapshot", check=0)
    assert said(snap) == "code says v1 lr 0.1"
    now = mlexec("rerun", run_id(first), "--allow-changed-code", check=0)
    assert said(now) == "code says v2 lr 0.1"


def test_a_commit_that_is_gone_is_one_error_before_any_run(mlexec, project, store, tmp_path):
    folder = project(MLPROJECT, files={"job.py": JOB, "version.txt": "v1\n"})
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "first")
    first = mlexec("run", folder, "--env-manager", "local", check=0)
    commit = git(folder, "rev-parse", "HEAD").strip()
    git(folder, "commit", "-q", "--amend", "-m", "rewritten")  # history rewritten, the old commit pruned
    git(folder, "reflog", "expire", "--expire=now", "--all")
    git(folder, "gc", "-q", "--prune=now")
    proc = mlexec("rerun", run_id(first), check=2)
    assert_no_traceback(proc)
    assert f"commit {commit} is no longer in the repository {folder}" in proc.stderr
    assert len(store.runs()) == 1


def test_a_run_without_a_record_says_so_and_what_to_run_instead(mlexec, project, store):
    folder = project(MLPROJECT, files={"job.py": JOB, "version.txt": "v1\n"})
    client = store.client
    run = client.create_run("0", tags={"mlflow.source.name": str(folder), "mlflow.project.entryPoint": "main",
                                       "mlflow.project.env": "local"})
    client.log_param(run.info.run_id, "lr", "0.3")
    client.set_terminated(run.info.run_id)
    proc = mlexec("rerun", run.info.run_id, check=2)
    assert_no_traceback(proc)
    assert f"run {run.info.run_id} has no mlexec record" in proc.stderr
    assert f"mlexec run {folder} -P lr=0.3 --env-manager local" in proc.stderr
    unknown = mlexec("rerun", "0" * 32, check=2)
    assert_no_traceback(unknown)
    assert "no run with id" in unknown.stderr


def test_a_recorded_secret_is_not_there_to_reuse():
    record = {"source": {"kind": "git", "uri": "https://example.invalid/x.git", "commit": "abc"},
              "entry_point": "main", "parameters": {}, "backend": "kubernetes",
              "backend_config": {"namespace": "ml", "token": "<redacted>"}, "env_manager": "docker"}
    with pytest.raises(Exception, match=r"had secrets that were not recorded \(token\)"):
        rerun_options(Recorded("r1", record, None, None, None))
    options, _ = rerun_options(Recorded("r1", record, None, None, None), backend_config="cfg.yaml")
    assert options.backend_config == "cfg.yaml" and options.tags["mlexec.rerun.overrides"] == "-c"


def test_dry_run_shows_what_is_reused_and_creates_nothing(mlexec, project, store):
    folder = project(MLPROJECT, files={"job.py": JOB, "version.txt": "v1\n"})
    first = mlexec("run", folder, "--env-manager", "local", check=0)
    proc = mlexec("rerun", run_id(first), "--dry-run", check=0)
    assert f"code: {folder}, unchanged since the run" in proc.stdout
    assert len(store.runs()) == 1
