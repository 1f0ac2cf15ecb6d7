"""The source cache: `mlexec cache list/prune`, in-use protection, crash leftovers; URI parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mlexec_core.errors import UsageError
from mlexec_core.pipeline.source import fetch, split_subdirectory
from mlexec_core.testing.servers import git, has_git
from mlexec_core.sources.cache import SourceCache, cache_root
from mlexec_core.sources.urls import credential_config, is_scp_like, redact, scrub, secrets_of, strip_credentials
from mlexec_core.testing import ROOT, missing_infrastructure

CACHE_CLI = ("import sys; from mlexec_core.cli.main import cli; from mlexec_core.cli.cache import cache\n"
             "'cache' in cli.commands or cli.add_command(cache)\ncli(prog_name='mlexec')")
needs_git = pytest.mark.usefixtures("git_installed")


@pytest.fixture
def git_installed():
    if not has_git():
        missing_infrastructure("git", "git is not installed", how="apt-get install git")


def test_split_subdirectory():
    assert split_subdirectory("https://h/r.git#models/v1.2") == ("https://h/r.git", "models/v1.2")
    assert split_subdirectory("'./p#a/b/'") == ("./p", "a/b")
    assert split_subdirectory("p#") == ("p", None)
    for bad in ("p#../x", "p#a/../../x", "p#/etc", "p#a\\..\\b"):
        with pytest.raises(UsageError, match="relative path inside"):
            split_subdirectory(bad)


def test_redaction():
    assert redact("https://u:p%40ss@h:8/r.git#x") == "https://h:8/r.git#x"
    assert redact("https://ghp_TOKEN@h/r.git") == "https://h/r.git"  # a token as the user name
    assert redact("https://h/p.zip?X-Amz-Signature=S#sub") == "https://h/p.zip#sub"  # presigned
    assert redact("ssh://git:pw@h/r.git") == "ssh://git@h/r.git"  # ssh keeps its user
    assert redact("git@github.com:o/r.git") == "git@github.com:o/r.git"
    assert strip_credentials("https://u:p@h/r.git") == "https://h/r.git"
    assert strip_credentials("ssh://git:p@h:22/r.git") == "ssh://git@h:22/r.git"  # ssh keeps its user
    assert secrets_of("https://u:p%40ss@h/r") == ["p%40ss", "p@ss"]
    assert scrub("fatal: https://u:p%40ss@h/r and p@ss", secrets_of("https://u:p%40ss@h/r")) == \
        "fatal: https://h/r and ***"
    assert "ghp_TOKEN" in secrets_of("https://ghp_TOKEN@h/r.git")
    assert credential_config("https://u:p@h:8/r.git") == {"url.https://u:p@h:8/.insteadOf": "https://h:8/"}
    assert is_scp_like("git@github.com:org/repo.git") and is_scp_like("host:repo")
    assert not is_scp_like("./dir") and not is_scp_like("C:\\x") and not is_scp_like("https://h/r")


def test_cache_root(tmp_path):
    assert cache_root({"MLEXEC_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "mlexec" / "sources"


def test_failed_build_leaves_nothing_and_crash_leftovers_are_cleared(tmp_path):
    cache = SourceCache(tmp_path)

    def fails(path):
        (path / "half").write_text("x")
        raise UsageError("nope")

    with pytest.raises(UsageError):
        cache.ensure("trees/k/abc", fails, {})
    assert not (tmp_path / "trees" / "k" / "abc").exists() and list((tmp_path / ".tmp").iterdir()) == []
    # what a killed process left: a dead pid's temporary directory
    stale = tmp_path / ".tmp" / "trees_k_abc-999999999-deadbeef"
    stale.mkdir()
    path, built = cache.ensure("trees/k/abc", lambda p: (p / "ok").write_text("x"), {"summary": "s"})
    assert built and (path / "ok").is_file() and not stale.exists()
    assert cache.ensure("trees/k/abc", fails, {}) == (path, False)


def _cli(cli_env, env, *args):
    return subprocess.run([sys.executable, "-c", CACHE_CLI, "cache", *args], env={**cli_env, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def local_repo(tmp_path):
    repo = tmp_path / "repo"
    git("init", "-q", "-b", "main", str(repo))
    (repo / "MLproject").write_text("name: r\nentry_points:\n  main:\n    command: 'true'\n")
    git("add", ".", cwd=repo)
    git("commit", "-qm", "1", cwd=repo)
    git("tag", "v1", cwd=repo)
    return repo


@needs_git
def test_cache_list_and_prune(mlexec, cli_env, local_repo, tmp_path, store):
    env = {"MLEXEC_CACHE_DIR": str(tmp_path / "cache")}
    mlexec("run", "repo", "-v", "v1", "--env-manager", "local", env=env, check=0)
    entries = json.loads(_cli(cli_env, env, "list", "--json").stdout)
    assert sorted(e["kind"] for e in entries) == ["git", "tree"]
    assert all(e["summary"].startswith(str(local_repo)) and not e["in_use"] for e in entries)
    table = _cli(cli_env, env, "list").stdout
    assert str(tmp_path / "cache") in table and "tree" in table

    kept = _cli(cli_env, env, "prune", "--older-than", "1d")
    assert "0 cache entries removed" in kept.stderr
    dry = _cli(cli_env, env, "prune", "--all", "--dry-run")
    assert dry.stdout.count("would remove") == 2
    assert len(json.loads(_cli(cli_env, env, "list", "--json").stdout)) == 2
    gone = _cli(cli_env, env, "prune", "--all", "--kind", "tree")
    assert "1 cache entry removed" in gone.stderr
    assert [e["kind"] for e in json.loads(_cli(cli_env, env, "list", "--json").stdout)] == ["git"]
    _cli(cli_env, env, "prune", "--all")
    assert json.loads(_cli(cli_env, env, "list", "--json").stdout) == []
    bad = _cli(cli_env, env, "prune")
    assert bad.returncode == 2 and "--older-than AGE or --all" in bad.stderr
    # and the next run simply fetches again
    mlexec("run", "repo", "-v", "v1", "--env-manager", "local", env=env, check=0)


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from mlexec_core.pipeline.source import fetch
    print(fetch(sys.argv[1], "v1", Path(sys.argv[2])).directory, flush=True)
    time.sleep(120)
""")


@needs_git
def test_prune_keeps_a_checkout_in_use(cli_env, local_repo, tmp_path):
    env = {"MLEXEC_CACHE_DIR": str(tmp_path / "cache")}
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(root=str(ROOT)))
    holder = subprocess.Popen([sys.executable, str(script), str(local_repo), str(tmp_path)],
                              env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    try:
        directory = holder.stdout.readline().strip()
        assert directory
        proc = _cli(cli_env, env, "prune", "--all")
        assert "in use by a run, kept" in proc.stderr
        assert os.path.isdir(directory)
    finally:
        holder.kill()
        holder.wait()
    _cli(cli_env, env, "prune", "--all")
    assert not os.path.isdir(directory)


@needs_git
def test_version_on_a_directory_outside_git(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(UsageError, match="not in git"):
        fetch("plain", "v1", tmp_path)


KILLED_BUILDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from mlexec_core.sources.cache import SourceCache
    def build(path):
        (path / "half").write_text("x")
        print("building", flush=True)
        time.sleep(60)
    SourceCache(Path(sys.argv[1])).ensure("trees/k/abc", build, {{}})
""")


def test_a_killed_build_leaves_nothing_that_looks_ready(tmp_path):
    script = tmp_path / "builder.py"
    script.write_text(KILLED_BUILDER.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "building"
    proc.kill()
    proc.wait()
    cache = SourceCache(tmp_path / "cache")
    assert not (tmp_path / "cache" / "trees" / "k" / "abc").exists()
    assert cache.entries() == []
    path, built = cache.ensure("trees/k/abc", lambda p: (p / "ok").write_text("x"), {})
    assert built and sorted(p.name for p in path.iterdir()) == ["ok"]
    assert list((tmp_path / "cache" / ".tmp").iterdir()) == []  # the killed build's leftovers are gone
