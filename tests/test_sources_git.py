"""Git project URIs against real servers on loopback: git daemon and git's smart HTTP.

The repositories are made here: a submodule, an annotated tag, branches, 25
commits, a project in ``models/v1.2``.  Every run goes through the real CLI and
is checked in a real MLflow store.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlexec_core.testing.servers import SmartHTTP, free_port, git, git_daemon, has_git
from mlexec_core.testing import MLEXEC, assert_no_traceback, missing_infrastructure

pytestmark = pytest.mark.usefixtures("git_installed")


@pytest.fixture
def git_installed():
    if not has_git():
        missing_infrastructure("git", "git is not installed", how="apt-get install git")

ROOT_PROJECT = """\
name: srcdemo
entry_points:
  main:
    command: 'cat VERSION > "$OUT"; cat lib/SUB >> "$OUT"'
"""
SUB_PROJECT = """\
name: inner
entry_points:
  main:
    command: 'echo inner > "$OUT"; cat ../../VERSION >> "$OUT"'
"""
CACHE_CLI = ("import sys; from mlexec_core.cli.main import cli; from mlexec_core.cli.cache import cache\n"
             "'cache' in cli.commands or cli.add_command(cache)\ncli(prog_name='mlexec')")


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """``base/repo.git`` (with ``lib`` -> ``../sub.git``) and ``base/sub.git``; returns commits by name."""
    top = tmp_path_factory.mktemp("remotes")
    base = top / "base"
    base.mkdir()
    git("init", "-q", "--bare", "-b", "main", str(base / "sub.git"))
    sub = top / "sub-work"
    git("clone", "-q", str(base / "sub.git"), str(sub))
    (sub / "SUB").write_text("from-submodule\n")
    git("add", "SUB", cwd=sub)
    git("commit", "-qm", "sub", cwd=sub)
    git("push", "-q", "origin", "HEAD:main", cwd=sub)

    git("init", "-q", "--bare", "-b", "main", str(base / "repo.git"))
    work = top / "work"
    git("clone", "-q", str(base / "repo.git"), str(work))
    git("checkout", "-q", "-b", "main", cwd=work)
    (work / "MLproject").write_text(ROOT_PROJECT)
    (work / "models" / "v1.2").mkdir(parents=True)
    (work / "models" / "v1.2" / "MLproject").write_text(SUB_PROJECT)
    (work / "VERSION").write_text("1\n")
    git("submodule", "add", "-q", "../sub.git", "lib", cwd=work)
    git("add", ".", cwd=work)
    git("commit", "-qm", "1", cwd=work)
    commits = {"1": git("rev-parse", "HEAD", cwd=work)}
    for i in range(2, 26):
        (work / "VERSION").write_text(f"{i}\n")
        git("commit", "-qam", str(i), cwd=work)
        commits[str(i)] = git("rev-parse", "HEAD", cwd=work)
        if i == 3:
            git("tag", "-a", "v1", "-m", "release 1", cwd=work)
    git("checkout", "-q", "-b", "feature", cwd=work)
    (work / "VERSION").write_text("feature\n")
    git("commit", "-qam", "feature", cwd=work)
    commits["feature"] = git("rev-parse", "HEAD", cwd=work)
    git("push", "-q", "origin", "main", "feature", "--tags", cwd=work)
    git("checkout", "-q", "main", cwd=work)
    return base, commits


@pytest.fixture(scope="module")
def daemon(repos):
    with git_daemon(repos[0]) as url:
        yield url


@pytest.fixture
def env(tmp_path):
    (tmp_path / "tmpdir").mkdir()
    return {"MLEXEC_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmpdir"),
            "OUT": str(tmp_path / "out.txt")}


def out(tmp_path) -> list[str]:
    return (tmp_path / "out.txt").read_text().split()


def error_lines(proc) -> int:
    return sum(line.startswith("error:") for line in proc.stderr.splitlines())


def no_temp_left(tmp_path) -> None:
    assert list((tmp_path / "tmpdir").iterdir()) == []
    tmp = tmp_path / "cache" / ".tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def cache_cli(cli_env, env, *args):
    proc = subprocess.run([sys.executable, "-c", CACHE_CLI, "cache", *args], env={**cli_env, **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_daemon_tag_with_submodule_then_subdirectory(mlexec, daemon, repos, store, env, tmp_path):
    _, commits = repos
    uri = f"{daemon}/repo.git"
    proc = mlexec("run", uri, "-v", "v1", "--env-manager", "local", env=env, check=0)
    assert_no_traceback(proc)
    assert out(tmp_path) == ["3", "from-submodule"]  # the tag's commit, submodule checked out
    run = store.only_run()
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == commits["3"]
    assert tags["mlflow.source.git.repoURL"] == uri
    assert tags["mlflow.source.name"] == uri
    assert "mlflow.source.git.branch" not in tags  # a tag, not a branch

    # a dot in a subdirectory name is fine (MLflow refuses it); same commit: the checkout is reused
    proc = mlexec("run", f"{uri}#models/v1.2", "-v", "v1", "--env-manager", "local", env=env, check=0)
    assert out(tmp_path) == ["inner", "3"]
    tags = store.runs()[0].data.tags
    # the URI as given (needs _run_tags to prefer Source.uri for git sources), or today the repository URL
    assert tags["mlflow.source.name"] == f"{uri}#models/v1.2"
    trees = [e for e in json.loads(cache_cli({}, env, "list", "--json").stdout) if e["kind"] == "tree"]
    assert len(trees) == 1 and trees[0]["name"].endswith(commits["3"])
    no_temp_left(tmp_path)


def test_smart_http_branch_default_branch_and_old_commits(mlexec, repos, store, env, tmp_path):
    base, commits = repos
    with SmartHTTP(base) as server:
        uri = f"{server.url()}/repo.git"
        mlexec("run", uri, "-v", "feature", "--env-manager", "local", env=env, check=0)
        assert out(tmp_path) == ["feature", "from-submodule"]
        mlexec("run", uri, "--env-manager", "local", env=env, check=0)
        assert out(tmp_path)[0] == "25"
        # old commits: a depth-1 fetch (MLflow) cannot reach these
        mlexec("run", uri, "-v", commits["2"], "--env-manager", "local", env=env, check=0)
        assert out(tmp_path)[0] == "2"
        mlexec("run", uri, "-v", commits["4"][:8], "--env-manager", "local", env=env, check=0)
        assert out(tmp_path)[0] == "4"
    runs = {r.data.tags["mlflow.source.git.commit"]: r for r in store.runs()}
    assert set(runs) == {commits["feature"], commits["25"], commits["2"], commits["4"]}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert runs[commits["feature"]].data.tags["mlflow.source.git.branch"] == "feature"
    assert "mlflow.source.git.branch" not in runs[commits["25"]].data.tags
    no_temp_left(tmp_path)


def test_a_commit_already_cached_costs_no_network(mlexec, repos, env, tmp_path):
    base, commits = repos
    with SmartHTTP(base) as server:
        uri = f"{server.url()}/repo.git"
        mlexec("run", uri, "-v", commits["7"], "--env-manager", "local", env=env, check=0)
        assert out(tmp_path)[0] == "7"
        before = len(server.requests)
        assert before > 0
        mlexec("run", uri, "-v", commits["7"], "--env-manager", "local", env=env, check=0)
        mlexec("run", uri, "-v", commits["7"][:10], "--env-manager", "local", env=env, check=0)
        assert out(tmp_path)[0] == "7"
        assert len(server.requests) == before  # not a single request
        # a branch costs one ls-remote, and no fetch when its commit is cached
        mlexec("run", uri, "-v", "feature", "--env-manager", "local", env=env, check=0)
        after_first = list(server.requests)
        mlexec("run", uri, "-v", "feature", "--env-manager", "local", env=env, check=0)
        second = server.requests[len(after_first):]
        assert len(second) <= 2 and len(second) < len(after_first) - before


@pytest.mark.parametrize("case", ["unknown-ref", "unreachable", "unreachable-ssh", "unreachable-scp", "missing-subdir",
                                  "dotdot", "bad-scheme"])
def test_bad_input_is_one_error_before_any_run(mlexec, daemon, store, env, tmp_path, case):
    uri = f"{daemon}/repo.git"
    args = {
        "unknown-ref": (uri, "-v", "no-such-branch"),
        "unreachable": (f"git://127.0.0.1:{free_port()}/repo.git",),
        "unreachable-ssh": (f"ssh://git:pw-in-ssh@127.0.0.1:{free_port()}/org/repo.git",),
        "unreachable-scp": ("git@host.invalid:org/repo.git",),
        "missing-subdir": (f"{uri}#models/v9", "-v", "v1"),
        "dotdot": (f"{uri}#../etc",),
        "bad-scheme": ("s3://bucket/project",),
    }[case]
    proc = mlexec("run", *args, "--env-manager", "local", env=env)
    assert proc.returncode == 2, proc.stderr
    assert_no_traceback(proc)
    assert error_lines(proc) == 1, proc.stderr
    expected = {"unknown-ref": "not a branch, tag or commit", "unreachable": "failed for",
                "unreachable-ssh": "failed for ssh://git@127.0.0.1:", "unreachable-scp": "failed for git@host.invalid",
                "missing-subdir": "no subdirectory 'models/v9'", "dotdot": "must be a relative path",
                "bad-scheme": "unknown URI scheme"}[case]
    assert expected in proc.stderr
    if case == "unknown-ref":
        assert "branches: feature, main; tags: v1" in proc.stderr
    assert "pw-in-ssh" not in proc.stderr
    assert store.runs() == []
    no_temp_left(tmp_path)
    cache = tmp_path / "cache"
    if case.startswith("unreachable") or case == "bad-scheme":  # nothing half-made in the cache either
        assert not (cache / "git").exists() or list((cache / "git").iterdir()) == []


def test_password_never_shows(mlexec, repos, store, env, tmp_path):
    base, _ = repos
    secret = "s3cr%40t-pw"  # percent-encoded '@' inside
    with SmartHTTP(base, auth=("alice", "s3cr@t-pw")) as server:
        uri = f"http://alice:{secret}@127.0.0.1:{server.port}/repo.git"
        proc = mlexec("run", uri, "-v", "v1", "--env-manager", "local", env=env, check=0)
        assert out(tmp_path) == ["3", "from-submodule"]  # the submodule on the same host got the credentials
        bad = mlexec("run", uri.replace(secret, "wrong-pw"), "-v", "v1", "--env-manager", "local", env=env)
        dry = mlexec("run", uri, "-v", "v1", "--dry-run", "--json", "--env-manager", "local", env=env, check=0)
    assert bad.returncode == 2 and "error:" in bad.stderr
    assert_no_traceback(bad)
    for text in (proc.stdout, proc.stderr, bad.stdout, bad.stderr, dry.stdout, dry.stderr):
        for form in ("s3cr", "wrong-pw"):
            assert form not in text
    run = store.only_run()
    assert all("s3cr" not in v for v in run.data.tags.values())
    assert run.data.tags["mlflow.source.git.repoURL"] == f"http://127.0.0.1:{server.port}/repo.git"
    # nor in any file of the cache (mirror and checkout configs included)
    found = subprocess.run(["grep", "-rl", "s3cr", str(tmp_path / "cache")], capture_output=True, text=True)
    assert found.stdout == ""


def test_local_git_directory_with_version_leaves_the_work_tree_alone(mlexec, repos, store, env, tmp_path):
    base, commits = repos
    work = tmp_path / "mywork"
    git("clone", "-q", str(base / "repo.git"), str(work))
    git("-C", str(work), "-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init")
    (work / "VERSION").write_text("uncommitted edit\n")
    (work / "scratch.txt").write_text("untracked\n")
    status_before = git("status", "--porcelain", cwd=work)
    head_before = git("rev-parse", "HEAD", cwd=work)
    index_before = (work / ".git" / "index").read_bytes()

    mlexec("run", "mywork#models/v1.2", "-v", "v1", "--env-manager", "local", env=env, check=0)
    assert out(tmp_path) == ["inner", "3"]
    mlexec("run", str(work / "models" / "v1.2"), "-v", commits["5"][:7], "--env-manager", "local", env=env,
           check=0)
    assert out(tmp_path) == ["inner", "5"]
    mlexec("run", "mywork", "-v", "HEAD", "--env-manager", "local", env=env, check=0)
    assert out(tmp_path) == ["25", "from-submodule"]  # what is committed, not the edit in the work tree
    assert git("status", "--porcelain", cwd=work) == status_before
    assert git("rev-parse", "HEAD", cwd=work) == head_before
    assert (work / ".git" / "index").read_bytes() == index_before
    assert (work / "VERSION").read_text() == "uncommitted edit\n"
    commits_seen = sorted(r.data.tags["mlflow.source.git.commit"] for r in store.runs())
    assert commits_seen == sorted([commits["3"], commits["5"], commits["25"]])
    no_temp_left(tmp_path)


def test_file_uri_to_a_bare_repository(mlexec, repos, store, env, tmp_path):
    base, _ = repos
    uri = (base / "repo.git").as_uri()
    mlexec("run", uri, "-v", "main", "--env-manager", "local", env=env, check=0)
    assert out(tmp_path) == ["25", "from-submodule"]
    tags = store.only_run().data.tags
    assert tags["mlflow.source.git.repoURL"] == uri and tags["mlflow.source.git.branch"] == "main"


def test_concurrent_first_runs_share_one_checkout(repos, daemon, cli_env, env, tmp_path, store):
    uri = f"{daemon}/repo.git"
    procs = []
    for i in range(3):
        procs.append(subprocess.Popen(
            [*MLEXEC, "run", uri, "-v", "v1", "--env-manager", "local"],
            env={**cli_env, **env, "OUT": str(tmp_path / f"out{i}.txt")}, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    for i in range(3):
        assert (tmp_path / f"out{i}.txt").read_text().split() == ["3", "from-submodule"]
    entries = json.loads(cache_cli({}, env, "list", "--json").stdout)
    assert sorted(e["kind"] for e in entries) == ["git", "tree"]
    assert all(r.info.status == "FINISHED" for r in store.runs()) and len(store.runs()) == 3
    no_temp_left(tmp_path)


def test_describe_a_git_subdirectory(mlexec, daemon, env):
    proc = mlexec("describe", f"{daemon}/repo.git#models/v1.2", "--json", env=env, check=0)
    assert json.loads(proc.stdout)["name"] == "inner"
