"""The built-in rattler engine, end to end: real solves and installs from a local file:// channel,
through the real CLI, into a real MLflow store."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from mlexec_core.testing import MLEXEC, assert_no_traceback

CHAIN = 'hello-top && hello-mid && hello-leaf && echo "prefix=$CONDA_PREFIX"'


def _no_environment(env_root) -> bool:
    return not env_root.exists() or not any(p.name.startswith("conda-") for p in env_root.iterdir())


def _prefix(proc) -> str:
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("prefix=")]
    return line[len("prefix="):]


def test_dependency_chain_installed_and_activated(mlexec, store, conda_project, channel, conda_env, env_root):
    proj = conda_project([channel], ["top"], CHAIN)
    proc = mlexec("run", proj, env=conda_env, check=0)
    # top needs mid and leaf <2; mid needs leaf: all three are on PATH, leaf at 1.0
    assert "hello from top 1.0" in proc.stdout
    assert "hello from mid 1.0" in proc.stdout
    assert "hello from leaf 1.0" in proc.stdout
    prefix = _prefix(proc)
    assert os.path.dirname(prefix) == str(env_root) and os.path.basename(prefix).startswith("conda-")
    assert sorted(f.split("-")[0] for f in os.listdir(os.path.join(prefix, "conda-meta")) if f.endswith(".json")) \
        == ["leaf", "mid", "top"]
    run = store.only_run()
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.env"] == "conda"
    assert "creating environment" in proc.stderr


def test_version_pins(mlexec, store, conda_project, channel, conda_env):
    newest = conda_project([channel], ["leaf"], "hello-leaf", where="newest")
    pinned = conda_project([channel], ["leaf =1.0"], "hello-leaf", where="pinned")
    assert "hello from leaf 2.0" in mlexec("run", newest, env=conda_env, check=0).stdout
    assert "hello from leaf 1.0" in mlexec("run", pinned, env=conda_env, check=0).stdout
    assert sorted(r.info.status for r in store.runs()) == ["FINISHED", "FINISHED"]


def test_unknown_package_fails_before_the_run(mlexec, store, conda_project, channel, conda_env, env_root):
    proj = conda_project([channel], ["leaf", "nosuch >=1"], "hello-leaf")
    proc = mlexec("run", proj, env=conda_env, check=2)
    assert_no_traceback(proc)
    assert "nosuch" in proc.stderr and "conda.yaml" in proc.stderr
    assert store.runs() == []
    assert json.loads(mlexec("env", "list", "--json", "--manager", "conda", env=conda_env, check=0).stdout) == []


def test_conflicting_pins_name_the_package(mlexec, store, conda_project, channel, conda_env, env_root):
    proj = conda_project([channel], ["top", "leaf >=2"], "hello-top")
    proc = mlexec("run", proj, env=conda_env, check=2)
    assert_no_traceback(proc)
    assert "cannot solve the environment" in proc.stderr
    assert "leaf" in proc.stderr
    assert store.runs() == []
    assert _no_environment(env_root)


def test_invalid_spec_names_it(mlexec, store, conda_project, channel, conda_env, env_root):
    proj = conda_project([channel], ["leaf >=>=1"], "hello-leaf")
    proc = mlexec("run", proj, env=conda_env, check=2)
    assert_no_traceback(proc)
    assert "leaf >=>=1" in proc.stderr and "not a valid conda package spec" in proc.stderr
    assert store.runs() == []
    assert _no_environment(env_root)


def test_unreachable_channel_is_reported(mlexec, store, conda_project, conda_env, env_root):
    # conda-forge maps to its public URL, which these machines cannot reach; the timeout guards against a hang
    proj = conda_project(["conda-forge"], ["leaf"], "hello-leaf")
    proc = mlexec("run", proj, env=conda_env, check=2, timeout=90)
    assert_no_traceback(proc)
    assert "conda-forge" in proc.stderr and "unreachable" in proc.stderr
    assert store.runs() == []
    assert _no_environment(env_root)


def test_silent_channel_times_out(mlexec, store, conda_project, conda_env, env_root):
    """A server that accepts connections and never answers: an error after MLEXEC_CONDA_TIMEOUT, not a hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept_forever():
        try:
            while True:
                held.append(server.accept())
        except OSError:  # closed at the end of the test
            pass

    threading.Thread(target=accept_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/chan"
    try:
        proj = conda_project([url], ["leaf"], "hello-leaf")
        proc = mlexec("run", proj, env={**conda_env, "MLEXEC_CONDA_TIMEOUT": "2"}, check=2, timeout=100)
    finally:
        server.close()
    assert_no_traceback(proc)
    assert f"channel {url} is unreachable" in proc.stderr and "timed out" in proc.stderr
    assert store.runs() == []
    assert _no_environment(env_root)


def test_missing_local_channel_is_reported(mlexec, store, conda_project, conda_env, tmp_path, env_root):
    proj = conda_project([(tmp_path / "nowhere").as_uri()], ["leaf"], "hello-leaf")
    proc = mlexec("run", proj, env=conda_env, check=2)
    assert_no_traceback(proc)
    assert "nowhere" in proc.stderr and "unreachable" in proc.stderr
    assert store.runs() == []
    assert _no_environment(env_root)


def test_cache_hit_ignores_whitespace_key_order_and_name(mlexec, store, conda_project, channel, conda_env):
    proj = conda_project([channel], ["top"], CHAIN)
    first = mlexec("run", proj, env=conda_env, check=0)
    assert "solving" in first.stderr
    again = mlexec("run", proj, env=conda_env, check=0)
    assert "reusing environment" in again.stderr and "solving" not in again.stderr
    # the same spec written differently: other key order, spacing, comments and name
    (proj / "conda.yaml").write_text(
        f"# rewritten\ndependencies:\n    -   top    # the chain\n\nchannels: [ '{channel}' ]\nname:   other\n"
    )
    rewritten = mlexec("run", proj, env=conda_env, check=0)
    assert "reusing environment" in rewritten.stderr and "solving" not in rewritten.stderr
    assert _prefix(first) == _prefix(again) == _prefix(rewritten)
    # a real change is a new environment
    (proj / "conda.yaml").write_text(f"channels: ['{channel}']\ndependencies: [top, mid]\n")
    changed = mlexec("run", proj, env=conda_env, check=0)
    assert "solving" in changed.stderr and _prefix(changed) != _prefix(first)
    assert [r.info.status for r in store.runs()] == ["FINISHED"] * 4


def test_env_list_and_prune(mlexec, conda_project, channel, conda_env, env_root):
    mlexec("run", conda_project([channel], ["top"], "hello-top"), env=conda_env, check=0)
    mlexec("run", conda_project([channel], ["leaf =1.0"], "hello-leaf", where="p2"), env=conda_env, check=0)
    listed = json.loads(mlexec("env", "list", "--json", "--manager", "conda", env=conda_env, check=0).stdout)
    assert sorted(e["summary"] for e in listed) == ["leaf =1.0", "top"]
    assert all(e["manager"] == "conda" and os.path.isdir(e["path"]) for e in listed)
    pruned = mlexec("env", "prune", "--all", "--manager", "conda", env=conda_env, check=0)
    assert "2 environments removed" in pruned.stderr + pruned.stdout
    assert json.loads(mlexec("env", "list", "--json", "--manager", "conda", env=conda_env, check=0).stdout) == []
    assert _no_environment(env_root)


def test_pip_section_installed_with_uv(mlexec, store, conda_project, channel, conda_env, wheel):
    command = 'greet && python -c "import sys; print(\'prefix=\' + sys.prefix)"'
    proj = conda_project([channel], ["python", "leaf"], command, pip=["./wheels/greet-1.0-py3-none-any.whl"])
    wheel(proj / "wheels")
    proc = mlexec("run", proj, env=conda_env, check=0)
    assert "hello from pip greet 1.0" in proc.stdout
    assert _prefix(proc).startswith(conda_env["MLEXEC_ENV_ROOT"])
    assert store.only_run().info.status == "FINISHED"


def _compiled(source) -> bool:
    """``source`` has a ``.pyc`` (of the Python running the tests, the stand-in python's) that matches it."""
    pyc = importlib.util.cache_from_source(str(source))
    if not os.path.isfile(pyc):
        return False
    with open(pyc, "rb") as f:
        header = f.read(16)
    st = os.stat(source)
    return (int.from_bytes(header[4:8], "little") & 1 == 1  # hash-based, SOURCE_DATE_EPOCH set
            or (int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
                and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF))


def test_site_packages_compiled_at_build_when_python_writes_no_bytecode(mlexec, store, conda_project, channel,
                                                                      conda_env, wheel):
    command = 'python -c "import sys, pymod, greet; print(\'value\', pymod.VALUE); print(\'prefix=\' + sys.prefix)"'
    proj = conda_project([channel], ["python", "pymod"], command, pip=["./wheels/greet-1.0-py3-none-any.whl"])
    wheel(proj / "wheels")
    # the command imports both packages, but with PYTHONDONTWRITEBYTECODE=1 it can write no .pyc itself
    proc = mlexec("run", proj, env={**conda_env, "PYTHONDONTWRITEBYTECODE": "1"}, check=0)
    assert_no_traceback(proc)
    assert "value 42" in proc.stdout  # the file that does not compile failed nothing
    assert store.only_run().info.status == "FINISHED"
    site = os.path.join(_prefix(proc), "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    assert _compiled(os.path.join(site, "pymod", "__init__.py"))  # a conda package, linked by rattler
    assert _compiled(os.path.join(site, "greet.py"))  # the pip: part, installed by uv
    assert not os.path.exists(importlib.util.cache_from_source(os.path.join(site, "pymod", "tests", "data", "py2_only.py")))


def test_pip_failure_leaves_no_environment(mlexec, store, conda_project, channel, conda_env, env_root):
    proj = conda_project([channel], ["python"], "true", pip=["./missing-1.0-py3-none-any.whl"])
    proc = mlexec("run", proj, env=conda_env, check=2)
    assert_no_traceback(proc)
    assert "pip" in proc.stderr and "missing-1.0" in proc.stderr
    assert store.runs() == []
    assert _no_environment(env_root)


def test_pip_without_python_is_explained(mlexec, store, conda_project, channel, conda_env, env_root):
    proj = conda_project([channel], ["leaf"], "true", pip=["requests"])
    proc = mlexec("run", proj, env=conda_env, check=2)
    assert "needs python" in proc.stderr
    assert store.runs() == []
    assert _no_environment(env_root)


def test_activation_scripts_and_variables(mlexec, conda_project, channel, conda_env):
    proj = conda_project([channel], ["activated"],
                         'echo "script=$ACTIVATED_BY_SCRIPT var=$FROM_YAML env=$CONDA_DEFAULT_ENV"',
                         extra="variables:\n  FROM_YAML: hello\n")
    proc = mlexec("run", proj, env=conda_env, check=0)
    assert "script=yes var=hello env=" + conda_env["MLEXEC_ENV_ROOT"] in proc.stdout


def test_failing_command_fails_the_run(mlexec, store, conda_project, channel, conda_env):
    proc = mlexec("run", conda_project([channel], ["leaf"], "hello-leaf && exit 3"), env=conda_env)
    assert proc.returncode != 0 and "hello from leaf 2.0" in proc.stdout
    assert store.only_run().info.status == "FAILED"


def test_python_env_project_with_conda_manager_is_refused(mlexec, store, project, conda_env):
    proj = project("entry_points:\n  main:\n    command: 'true'\n", {"python_env.yaml": "python: '3.11'\n"})
    proc = mlexec("run", proj, "--env-manager", "conda", env=conda_env, check=2)
    assert_no_traceback(proc)
    assert "conda" in proc.stderr
    assert store.runs() == []


def test_ctrl_c_stops_the_job_in_an_activated_env(cli_env, store, conda_project, channel, conda_env):
    proj = conda_project([channel], ["activated"], 'sleep 120 & echo $! > child.pid; wait')
    proc = subprocess.Popen([*MLEXEC, "run", str(proj)], env={**cli_env, **conda_env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = proj / "child.pid"
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    for _ in range(200):
        if not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the job's child survived Ctrl-C")
    assert store.only_run().info.status == "KILLED"
