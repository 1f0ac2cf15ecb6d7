"""Resources: a full disk under MLEXEC_ENV_ROOT (a real, small tmpfs) and SIGTERM while uv
installs (uv's children stopped too).  Real uv, real installs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from virtualenv_helpers import env_dirs

from mlexec_core.testing import MLEXEC, assert_no_traceback, missing_infrastructure

MLPROJECT = """\
name: demo
python_env: python_env.yaml
entry_points:
  main:
    command: "python -c 'import six'"
"""
ENV = 'python: "%d.%d"\ndependencies:\n  - six==1.16.0\n' % sys.version_info[:2]


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs, mounted for the test and unmounted after it."""
    where = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        missing_infrastructure("root (to mount a tmpfs)", f"cannot mount a tmpfs here: {proc.stderr.strip()}",
                               how="run the tests as root", fail_in_ci=False)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(root, leave_bytes: int) -> None:
    """Fill the file system of ``root`` until about ``leave_bytes`` are free."""
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    with open(root / ".filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))


def test_disk_full_during_the_build_is_named_and_leaves_nothing(mlexec, project, store, tmpfs):
    root = tmpfs / "envs"
    root.mkdir()
    _fill(tmpfs, 64 * 1024)
    proj = project(MLPROJECT, {"python_env.yaml": ENV})
    proc = mlexec("run", proj, env={"MLEXEC_ENV_ROOT": str(root)})
    assert proc.returncode == 2, proc.stderr
    assert "no space left on the device under MLEXEC_ENV_ROOT" in proc.stderr
    assert str(root) in proc.stderr
    assert "mlexec env prune" in proc.stderr  # the hint says what to do
    assert env_dirs(root) == []  # nothing half-built
    assert store.runs() == []
    assert_no_traceback(proc)


def test_disk_full_after_the_installer_is_named_and_leaves_nothing(tmpfs):
    """The installer succeeded, then mlexec's own marker does not fit: the same clear error."""
    from mlexec_core.envcache import EnvironmentCache
    from mlexec_core.errors import EnvironmentBuildError

    root = tmpfs / "envs"
    cache = EnvironmentCache("virtualenv", root)

    def build(target):
        (target / "bin").mkdir()
        _fill(tmpfs, 0)  # what uv wrote took the last bytes

    with pytest.raises(EnvironmentBuildError) as caught:
        cache.ensure("k" * 16, build, summary="six")
    assert "no space left on the device under MLEXEC_ENV_ROOT" in caught.value.message
    (tmpfs / ".filler").unlink()
    assert env_dirs(root) == []


WRAPPER = """\
#!{python}
import os, subprocess, sys, time
if sys.argv[1:3] == ["pip", "install"]:
    child = subprocess.Popen(["sleep", "300"])  # like uv's build-backend child
    with open({marker!r}, "w") as f:
        f.write(f"{{os.getpid()}} {{child.pid}}")
    time.sleep(300)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


def test_sigterm_during_the_build_stops_the_installer_and_its_children(cli_env, project, store, env_root, tmp_path):
    from uv import find_uv_bin

    marker = tmp_path / "pids"
    uv = tmp_path / "uv-with-child"
    uv.write_text(WRAPPER.format(python=sys.executable, marker=str(marker), real=find_uv_bin()))
    uv.chmod(0o755)
    proj = project(MLPROJECT, {"python_env.yaml": ENV})
    proc = subprocess.Popen([*MLEXEC, "run", str(proj)], cwd=tmp_path, env={**cli_env, "MLEXEC_UV": str(uv)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() or len(marker.read_text().split()) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    pids = [int(p) for p in marker.read_text().split()]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "no run was created" in err
    assert "Traceback" not in err

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "the installer or its child outlived mlexec"
    assert store.runs() == []
    assert env_dirs(env_root) == []
