"""The test kit itself (mlexec_core.testing): helpers fail helpfully, and tests keep to their own folder."""

from __future__ import annotations

import pytest

from mlexec_core.testing import wait_until


def test_wait_until_returns_the_first_true_value():
    values = iter([0, "", "found"])
    assert wait_until(lambda: next(values), 5, "a value", interval=0) == "found"


def test_wait_until_computes_a_callable_message_only_on_failure():
    calls = []

    def what():
        calls.append(1)
        return "the child (it said: boom)"

    assert wait_until(lambda: True, 1, what) is True
    assert calls == []  # never computed when nothing failed
    with pytest.raises(AssertionError, match=r"timed out waiting for the child \(it said: boom\)"):
        wait_until(lambda: False, 0.2, what, interval=0.05)
    assert calls == [1]


def test_wait_until_names_a_plain_string():
    with pytest.raises(AssertionError, match="timed out waiting for 3 pid files"):
        wait_until(lambda: None, 0, "3 pid files")


def test_the_cli_keeps_its_caches_and_temporary_files_in_the_test_folder(mlexec, project, cli_env, tmp_path):
    proj = project("entry_points: {main: {command: 'echo tmp=$TMPDIR'}}\n")
    proc = mlexec("run", proj, "--env-manager", "local", check=0)
    assert f"tmp={tmp_path / '.tmp'}" in proc.stdout  # the job's temporary files too
    assert cli_env["XDG_CACHE_HOME"] == str(tmp_path / ".cache")
    assert list((tmp_path / ".cache" / "mlexec" / "parsed").iterdir()), "the MLproject's parse was not cached here"
    assert not list((tmp_path / ".tmp").iterdir())  # the output log's temporary file is gone
