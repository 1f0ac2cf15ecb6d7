"""Issue 23 for conda: a run records its prefix as conda's explicit list, and `mlexec rerun`
builds that prefix again from the list, not from conda.yaml: a channel of our own (and a
package index of our own for the pip: part) changes under a project that does not pin."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from mlexec_core.testing import assert_no_traceback

COMMAND = "hello-demo && greet"


def run_id(proc) -> str:
    return proc.stderr.split("=== Run ", 1)[1].split()[0]


def recorded_lock(store, rid: str) -> str:
    run = store.client.get_run(rid)
    return Path(run.info.artifact_uri.replace("file://", ""), "mlexec", "environment.lock").read_text()


def publish(tools, channel: Path, index: Path, version: str, *, text: str | None = None) -> Path:
    """demo <version> in the conda channel (re-indexed) and greet <version> on the pip index."""
    path = tools.package(channel, "demo", version, files={
        "bin/hello-demo": text or f"#!/bin/sh\necho hello from demo {version}\n"})
    tools.index(channel)
    tools.wheel(index, "greet", version)
    return path


def conda_envs(env_root: Path) -> list[str]:
    return sorted(p.name for p in env_root.iterdir()) if env_root.exists() else []


@pytest.fixture
def moving(tmp_path, conda_project, conda_env, channel_tools):
    """A channel with python and demo 1.0, an index with greet 1.0, a project asking for both unpinned;
    the first item, ``publish(version, text=None)``, puts a new demo and greet there."""
    channel, index = tmp_path / "channel", tmp_path / "index"
    channel_tools.python(channel)
    first = publish(channel_tools, channel, index, "1.0")
    proj = conda_project([channel.as_uri()], ["python", "demo"], COMMAND, pip=["greet"])

    def again(version: str, text: str | None = None) -> Path:
        return publish(channel_tools, channel, index, version, text=text)

    return again, first, proj, {**conda_env, "UV_FIND_LINKS": str(index), "UV_NO_INDEX": "1"}


def test_the_lock_is_condas_explicit_list(mlexec, store, conda_project, channel, conda_env):
    proj = conda_project([channel], ["top"], "hello-top")
    rid = run_id(mlexec("run", proj, env=conda_env, check=0))
    lines = recorded_lock(store, rid).splitlines()
    assert lines[0].startswith("# platform: ") and lines[1] == "@EXPLICIT"
    urls = [line.split("#")[0] for line in lines[2:]]
    # dependencies first, as conda installs an explicit list in its order
    assert [u.rsplit("/", 1)[1] for u in urls] == ["leaf-1.0-0.tar.bz2", "mid-1.0-0.tar.bz2", "top-1.0-0.tar.bz2"]
    for line in lines[2:]:
        url, _, digest = line.partition("#sha256:")
        data = Path(url.replace("file://", "")).read_bytes()
        assert digest == hashlib.sha256(data).hexdigest()  # the channel file's own sha256
    record = store.client.get_run(rid)
    assert record.data.tags["mlflow.project.env"] == "conda"


def test_rerun_builds_the_recorded_prefix_not_todays(mlexec, store, env_root, moving):
    publish_new, _, proj, env = moving
    first = mlexec("run", proj, env=env, check=0)
    assert "hello from demo 1.0" in first.stdout and "hello from pip greet 1.0" in first.stdout
    lock = recorded_lock(store, run_id(first))
    assert "# pip: greet==1.0" in lock.splitlines()

    publish_new("2.0")  # published since: a fresh environment takes it
    for cached in env_root.glob("conda-*"):
        shutil.rmtree(cached)
    fresh = mlexec("run", proj, env=env, check=0)
    assert "hello from demo 2.0" in fresh.stdout and "hello from pip greet 2.0" in fresh.stdout

    dry = mlexec("rerun", run_id(first), "--dry-run", env=env, check=0)
    assert "conda-explicit lock of 2 conda packages and 1 pip packages" in dry.stdout
    assert "to be built" in dry.stdout
    again = mlexec("rerun", run_id(first), env=env, check=0)
    assert_no_traceback(again)
    assert "hello from demo 1.0" in again.stdout and "hello from pip greet 1.0" in again.stdout
    assert "from the recorded lock" in again.stderr
    rerun = store.client.get_run(run_id(again))
    assert rerun.data.tags["mlexec.rerunOf"] == run_id(first)
    assert recorded_lock(store, run_id(again)) == lock  # the same files, from the same URLs, as conda sees them
    twice = mlexec("rerun", run_id(first), env=env, check=0)
    assert "hello from demo 1.0" in twice.stdout and "reusing environment" in twice.stderr
    assert "cached" in mlexec("rerun", run_id(first), "--dry-run", env=env, check=0).stdout


@pytest.mark.parametrize("change", ["removed", "republished"])
def test_a_package_no_longer_as_recorded_is_one_error_before_any_run(mlexec, store, env_root, moving, change):
    publish_new, first_file, proj, env = moving
    first = mlexec("run", proj, env=env, check=0)
    if change == "removed":
        first_file.unlink()
        publish_new("2.0")
    else:  # the same file name with other contents
        publish_new("1.0", text="#!/bin/sh\necho not what the run had\n")
    for cached in env_root.glob("conda-*"):
        shutil.rmtree(cached)
    before = conda_envs(env_root)
    proc = mlexec("rerun", run_id(first), env=env, check=2)
    assert_no_traceback(proc)
    assert "can no longer be had as the run had them" in proc.stderr
    assert "demo-1.0-0.tar.bz2" in proc.stderr
    assert ("no such file" if change == "removed" else "contents changed since the run") in proc.stderr
    assert "python-" not in proc.stderr.split("can no longer", 1)[1].split("hint", 1)[0]  # only the one at fault
    assert len(store.runs()) == 1  # no run was created
    assert conda_envs(env_root) == before  # nothing half-built, no downloads left behind


def test_a_lock_of_another_platform_is_refused_before_anything_is_fetched(mlexec, store, env_root, moving):
    *_, proj, env = moving
    first = mlexec("run", proj, env=env, check=0)
    lock_path = Path(store.client.get_run(run_id(first)).info.artifact_uri.replace("file://", ""),
                     "mlexec", "environment.lock")
    text = lock_path.read_text()
    lock_path.write_text(re.sub(r"^# platform: .*$", "# platform: osx-arm64", text, flags=re.M).replace(
        "@EXPLICIT\n", "@EXPLICIT\nhttps://conda.anaconda.org/conda-forge/osx-arm64/libfoo-1.0-h0_0.conda"
                       "#sha256:" + "0" * 64 + "\n"))
    proc = mlexec("rerun", run_id(first), env=env, check=2)
    assert_no_traceback(proc)
    assert "made for osx-arm64" in proc.stderr and "libfoo-1.0-h0_0.conda" in proc.stderr
    assert len(store.runs()) == 1


def test_explicit_list_lines():
    from mlexec_conda.lock import entries, parse

    text = ("# platform: linux-64\n@EXPLICIT\n"
            "https://c.example/ch/noarch/a-1.0-0.tar.bz2#" + "a" * 32 + "\n"
            "https://c.example/ch/label/x/linux-64/b-2.1-h1_3.conda#sha256:" + "B" * 64 + "\n"
            "https://c.example/ch/noarch/c-3-0.conda#" + "c" * 64 + "\n"
            "https://c.example/ch/noarch/d-4-0.conda\n# pip: greet==1.0\n")
    a, b, c, d = entries(text)
    assert (a.md5, a.sha256, a.channel, a.subdir) == ("a" * 32, None, "https://c.example/ch", "noarch")
    assert (b.sha256, b.channel, b.stem) == ("b" * 64, "https://c.example/ch/label/x", "b-2.1-h1_3")
    assert c.sha256 == "c" * 64 and d.sha256 is None and d.md5 is None
    assert parse(text) == {"a": "1.0", "b": "2.1", "c": "3", "d": "4", "pip:greet": "1.0"}
    with pytest.raises(ValueError, match="neither an md5"):
        entries("@EXPLICIT\nhttps://c.example/ch/noarch/a-1.0-0.tar.bz2#nothex\n")
