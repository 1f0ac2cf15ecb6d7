"""The git facts a run of a local folder records, read from git's files without starting git:
they must agree with what git itself says, in every layout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mlexec_core.pipeline import source


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def _agree(directory: Path) -> tuple:
    directory = directory.resolve()
    read = source.git_info(directory)
    assert read == source._git_info_from_git(directory)
    return read


def test_git_facts_agree_with_git_in_every_layout(tmp_path, monkeypatch):
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_CEILING_DIRECTORIES"):
        monkeypatch.delenv(var, raising=False)
    repo = tmp_path / "repo"
    (repo / "sub" / ".dot").mkdir(parents=True)
    _git("init", "-q", "-b", "main", str(repo), cwd=tmp_path)
    assert _agree(repo) == (None, None, f"file://{repo.resolve()}")  # no commit yet
    assert _agree(repo / "sub" / ".dot")[2].endswith("#sub/.dot")
    _git("commit", "-q", "--allow-empty", "-m", "one", cwd=repo)
    _git("remote", "add", "origin", "https://example.invalid/org/repo.git", cwd=repo)
    commit, url, _ = _agree(repo / "sub")
    assert len(commit) == 40 and url == "https://example.invalid/org/repo.git"
    _git("pack-refs", "--all", cwd=repo)  # the branch only in packed-refs
    assert _agree(repo)[0] == commit
    _git("checkout", "-q", "--detach", cwd=repo)
    assert _agree(repo)[0] == commit
    _git("worktree", "add", "-q", str(tmp_path / "linked"), cwd=repo)  # .git is a file, refs in the common dir
    assert _agree(tmp_path / "linked")[1] == url
    assert _agree(tmp_path)[0] is None  # not in a work tree


@pytest.mark.parametrize("config", [
    '[include]\n\tpath = other.config\n',
    '[remote "origin"]\n\turl = "https://example.invalid/quoted.git"\n',
    '[remote "origin"]\n\turl = https://example.invalid/a.git ; a comment\n',
])
def test_what_only_git_reads_right_is_asked_of_git(tmp_path, config):
    repo = tmp_path / "repo"
    _git("init", "-q", str(repo), cwd=tmp_path)
    with open(repo / ".git" / "config", "a") as f:
        f.write(config)
    assert source._read_git(repo.resolve()) is source._ASK_GIT
    _agree(repo)
