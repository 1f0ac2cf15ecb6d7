"""The shared environment cache: content keys, one build under concurrency, no half-built leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mlexec_core.envcache import READY, EnvironmentCache, env_root, spec_key
from mlexec_core.testing import ROOT


def test_spec_key_ignores_key_order_and_changes_with_content():
    assert spec_key({"a": 1, "b": [1, 2]}) == spec_key({"b": [1, 2], "a": 1})
    assert spec_key({"a": 1}) != spec_key({"a": 2})


def test_env_root(tmp_path):
    assert env_root({"MLEXEC_ENV_ROOT": str(tmp_path)}) == tmp_path
    assert env_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "mlexec" / "envs"


def test_build_once_then_hit(tmp_path):
    cache = EnvironmentCache("demo", tmp_path)
    calls = []

    def build(path):
        calls.append(path)
        (path / "bin").mkdir()

    path, built = cache.ensure("k1", build, summary="demo env")
    assert built and path == tmp_path / "demo-k1" and (path / "bin").is_dir()
    assert calls[0] != path  # built elsewhere, renamed into place
    again, built_again = cache.ensure("k1", build)
    assert again == path and not built_again and len(calls) == 1
    (info,) = cache.list()
    assert info.name == "demo-k1" and info.summary == "demo env" and info.in_use  # this process uses it


@pytest.mark.parametrize("relocatable", [True, False])
def test_failed_build_leaves_nothing(tmp_path, relocatable):
    cache = EnvironmentCache("demo", tmp_path)

    def build(path):
        (path / "half").write_text("x")
        raise RuntimeError("installer said no")

    with pytest.raises(RuntimeError, match="installer said no"):
        cache.ensure("k", build, relocatable=relocatable)
    assert not cache.is_ready("k")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks"]


BUILDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from mlexec_core.envcache import EnvironmentCache
    root, key, log, delay, relocatable = sys.argv[1:6]
    def build(path):
        with open(log, "a") as f:
            f.write(f"build {{path}}\\n")
        (path / "started").write_text("x")
        time.sleep(float(delay))
        (path / "done").write_text("x")
    path, built = EnvironmentCache("demo", Path(root)).ensure(key, build, relocatable=relocatable == "1")
    print(path, built, (path / "done").exists())
""")


def _builder(tmp_path, key, delay, relocatable="1"):
    script = tmp_path / "builder.py"
    script.write_text(BUILDER.format(root=str(ROOT)))
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "envs"), key, str(tmp_path / "log"),
                             str(delay), relocatable], stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("relocatable", ["1", "0"])
def test_concurrent_first_use_builds_once(tmp_path, relocatable):
    procs = [_builder(tmp_path, "same", 1.0, relocatable) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len((tmp_path / "log").read_text().splitlines()) == 1
    assert sorted(o[1] for o in outs) == ["False", "True"]  # one built, one waited and reused
    assert all(o[2] == "True" for o in outs)  # both saw a complete environment


@pytest.mark.parametrize("relocatable", ["1", "0"])
def test_killed_build_is_not_taken_for_ready(tmp_path, relocatable):
    proc = _builder(tmp_path, "k", 60, relocatable)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list((tmp_path / "envs").rglob("started")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no cleanup at all: the worst case
    proc.wait()
    cache = EnvironmentCache("demo", tmp_path / "envs")
    assert not cache.is_ready("k") and cache.list() == []
    retry = _builder(tmp_path, "k", 0, relocatable)
    path, built, done = retry.communicate(timeout=60)[0].split()
    assert built == "True" and done == "True"
    assert [p.name for p in (tmp_path / "envs").iterdir() if not p.name.startswith(".locks")] == ["demo-k"]


def test_remove_skips_environment_in_use(tmp_path):
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from mlexec_core.envcache import EnvironmentCache
        EnvironmentCache("demo", Path({str(tmp_path / 'envs')!r})).ensure("busy", lambda p: None)
        print("ready", flush=True)
        time.sleep(60)
    """))
    user = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert user.stdout.readline().strip() == "ready"
        cache = EnvironmentCache("demo", tmp_path / "envs")
        cache.ensure("idle", lambda p: None)
        infos = {i.name: i for i in EnvironmentCache("demo", tmp_path / "envs").list()}
        assert infos["demo-busy"].in_use
        assert cache.remove(infos["demo-busy"]) is False and cache.is_ready("busy")
    finally:
        user.kill()
        user.wait()
    assert cache.remove(infos["demo-busy"]) is True and not cache.is_ready("busy")
    assert json.loads((tmp_path / "envs" / "demo-idle" / READY).read_text())["manager"] == "demo"
    assert os.path.isdir(tmp_path / "envs" / "demo-idle")


def test_a_prune_in_progress_cannot_pull_a_ready_environment_from_under_a_run(tmp_path):
    """The run marks the environment in use before it looks: it waits for a prune that is
    removing it, then builds it again, instead of running in a directory being deleted."""
    import threading

    from mlexec_core.cachefs import exclusive, unused

    cache = EnvironmentCache("demo", tmp_path)
    cache.ensure("k", lambda p: (p / "bin").mkdir())
    # A prune holds the locks, as EnvironmentCache.remove does, while this process has not used "k" yet.
    other = EnvironmentCache("demo", tmp_path)
    import mlexec_core.cachefs as cachefs

    cachefs._held.pop(str(cache._lock_path("k", "use"))).close()  # forget this process's own use
    result = {}
    with exclusive(other._lock_path("k", "build")), unused(other._lock_path("k", "use")) as free:
        assert free
        runner = threading.Thread(target=lambda: result.update(
            zip(("path", "built"), EnvironmentCache("demo", tmp_path).ensure("k", lambda p: (p / "bin").mkdir()))))
        runner.start()
        runner.join(0.5)
        assert runner.is_alive()  # waiting for the prune
        import shutil

        shutil.rmtree(other.path_for("k"))
    runner.join(30)
    assert result["built"] is True and (result["path"] / "bin").is_dir()
