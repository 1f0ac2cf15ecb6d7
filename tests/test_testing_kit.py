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


SKIPPING_SUITE = '''
import pytest

from mlexec_core.testing import missing_infrastructure


@pytest.fixture(scope="session")
def cluster():
    missing_infrastructure("Test cluster", "no controller answers", how="run as root: bash make-cluster.sh")


@pytest.mark.parametrize("n", range(3))
def test_on_the_cluster(cluster, n):
    pass


def test_needs_a_tool():
    missing_infrastructure("Some tool", "the tool is not installed", how="apt-get install some-tool")


def test_plain():
    pass
'''


def _run_suite(tmp_path, env):
    import os
    import subprocess
    import sys

    from mlexec_core.testing import ROOT

    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "conftest.py").write_text('pytest_plugins = ["mlexec_core.testing"]\n')
    (tmp_path / "suite" / "test_skipping.py").write_text(SKIPPING_SUITE)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "MLEXEC_TEST_SETUP_FAILED", "PYTEST_ADDOPTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "suite"], cwd=tmp_path,
        env={**base, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")])), **env},
        capture_output=True, text=True, timeout=120)


def test_the_run_ends_by_naming_what_was_missing_and_the_setups_that_failed(tmp_path):
    log = tmp_path / "setup.log"
    log.write_text("make-cluster: starting the controller\nfatal: CLUSTER NAME MISMATCH\n")
    proc = _run_suite(tmp_path, {"MLEXEC_TEST_SETUP_FAILED": f"make-cluster.sh\t1\t{log}\n"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "1 passed, 4 skipped" in lines[-1]
    start = next(i for i, line in enumerate(lines) if "missing infrastructure" in line)
    summary = lines[start + 1:-1]  # the section, up to pytest's closing line
    assert summary == [
        "make-cluster.sh failed before the tests (exit 1); the tests that need what it provides skipped. "
        "Its last lines:",
        "    make-cluster: starting the controller",
        "    fatal: CLUSTER NAME MISMATCH",
        f"    (all of its output: {log})",
        "Test cluster: 3 tests skipped (no controller answers)",
        "    to get it: run as root: bash make-cluster.sh",
        "Some tool: 1 test skipped (the tool is not installed)",
        "    to get it: apt-get install some-tool",
    ], proc.stdout


def test_a_run_with_nothing_missing_has_no_summary_and_ci_fails_instead_of_skipping(tmp_path):
    proc = _run_suite(tmp_path, {"CI": "true"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 passed, 3 errors" in proc.stdout.splitlines()[-1], proc.stdout
    assert "no controller answers (CI is set, so this is an error: run as root: bash make-cluster.sh)" \
        in proc.stdout
    assert "missing infrastructure" not in proc.stdout
