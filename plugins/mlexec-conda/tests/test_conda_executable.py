"""The executable engine, against a stand-in conda/micromamba script (no real conda can be installed here).

The stand-in records its arguments and creates the prefix (a ``uv venv`` when
python is asked for, so the pip: part has an interpreter to install into).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from mlexec_core.testing import MLEXEC, assert_no_traceback

CHECK = 'hello-standin && echo "prefix=$CONDA_PREFIX"'


def _prefix(proc) -> str:
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("prefix=")]
    return line[len("prefix="):]


def test_conda_on_path_creates_the_env_and_pip_part_goes_to_uv(mlexec, store, conda_project, conda_env, standin,
                                                                 wheel, env_root):
    conda = standin("conda")
    proj = conda_project(["conda-forge", "bioconda"], ["python=3.11", "numpy >=1.20"],
                         CHECK + " && greet", pip=["./wheels/greet-1.0-py3-none-any.whl"])
    wheel(proj / "wheels")
    env = {**conda_env, **conda.path_env()}
    proc = mlexec("run", proj, env=env, check=0)
    assert "hello from the stand-in" in proc.stdout
    assert "hello from pip greet 1.0" in proc.stdout  # the pip: list, installed by uv into the prefix
    prefix = _prefix(proc)
    (call,) = conda.calls()
    args = call["args"]
    assert args[:2] == ["env", "create"]
    assert args[args.index("--prefix") + 1] == prefix and os.path.dirname(prefix) == str(env_root)
    assert len(args) == 6 and args[4] == "--file" and args[5].endswith("environment.yml")
    # the file conda got: the channels and conda packages, without name and without the pip: list
    given = (env_root / os.path.basename(prefix) / "standin-environment.yml").read_text()
    assert "pip" not in given and "name" not in given
    assert "- conda-forge\n- bioconda\n" in given and "- python=3.11\n- numpy >=1.20\n" in given
    assert store.only_run().data.tags["mlflow.project.env"] == "conda"

    again = mlexec("run", proj, env=env, check=0)
    assert "reusing environment" in again.stderr
    assert len(conda.calls()) == 1  # no second solve
    assert _prefix(again) == prefix


def test_concurrent_first_runs_build_once(cli_env, store, conda_project, conda_env, standin):
    conda = standin("conda")
    proj = conda_project(["conda-forge"], ["leaf"], CHECK)
    env = {**cli_env, **conda_env, **conda.path_env(), "STANDIN_SLEEP": "2"}
    procs = [subprocess.Popen([*MLEXEC, "run", str(proj)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(conda.calls()) == 1
    assert len({_prefix(type("P", (), {"stdout": out})) for out, _ in outs}) == 1
    assert sum("creating environment" in err for _, err in outs) == 1
    assert sorted(r.info.status for r in store.runs()) == ["FINISHED", "FINISHED"]


def test_conda_failure_is_one_error_and_no_run(mlexec, store, conda_project, conda_env, standin, env_root):
    conda = standin("conda")
    proj = conda_project(["conda-forge"], ["nosuch"], CHECK)
    proc = mlexec("run", proj, env={**conda_env, **conda.path_env()}, check=2)
    assert_no_traceback(proc)
    assert "conda could not create the environment" in proc.stderr
    assert "nosuch" in proc.stderr and "PackagesNotFoundError" in proc.stderr
    assert store.runs() == []
    assert not env_root.exists() or not any(p.name.startswith("conda-") for p in env_root.iterdir())


def test_micromamba_named_by_mlexec_conda_exe(mlexec, conda_project, conda_env, standin, tmp_path):
    micromamba = standin("micromamba", folder=tmp_path / "elsewhere")
    proj = conda_project(["conda-forge"], ["leaf"], CHECK)
    mlexec("run", proj, env={**conda_env, **micromamba.env, "MLEXEC_CONDA_EXE": str(micromamba.exe)}, check=0)
    (call,) = micromamba.calls()
    assert call["exe"] == "micromamba"
    assert call["args"][:4] == ["create", "--yes", "--prefix", call["args"][3]]
    assert call["args"][4] == "--file"


def test_mlflow_conda_home_is_honoured(mlexec, conda_project, conda_env, standin, tmp_path):
    conda = standin("conda", folder=tmp_path / "miniconda" / "bin")
    proj = conda_project(["conda-forge"], ["leaf"], CHECK)
    env = {**conda_env, **conda.env, "MLEXEC_CONDA_EXE": "", "MLFLOW_CONDA_HOME": str(tmp_path / "miniconda")}
    proc = mlexec("run", proj, env=env, check=0)
    assert "hello from the stand-in" in proc.stdout and len(conda.calls()) == 1


def test_conda_exe_of_the_activated_shell_comes_before_path(mlexec, conda_project, conda_env, standin, tmp_path):
    """$CONDA_EXE (set by every conda-activated shell, and used by MLflow) wins over a conda on PATH."""
    on_path = standin("conda", folder=tmp_path / "on-path")
    shells = standin("micromamba", folder=tmp_path / "activated" / "bin")  # the two log to one file: told by name
    proj = conda_project(["conda-forge"], ["leaf"], CHECK)
    env = {**conda_env, **on_path.path_env(), "CONDA_EXE": str(shells.exe)}
    proc = mlexec("run", proj, env=env, check=0)
    assert "hello from the stand-in" in proc.stdout
    assert [call["exe"] for call in shells.calls()] == ["micromamba"]


def test_conda_exe_that_is_gone_is_one_error(mlexec, store, conda_project, conda_env, tmp_path):
    proj = conda_project(["conda-forge"], ["leaf"], CHECK)
    gone = tmp_path / "removed" / "bin" / "conda"
    proc = mlexec("run", proj, env={**conda_env, "MLEXEC_CONDA_EXE": "", "CONDA_EXE": str(gone)})
    assert proc.returncode == 2, proc.stderr
    assert f"CONDA_EXE={gone}: there is no such executable" in proc.stderr and "unset CONDA_EXE" in proc.stderr
    assert_no_traceback(proc)
    assert store.runs() == []


def test_engines_do_not_share_environments(mlexec, conda_project, conda_env, standin, channel):
    conda = standin("conda")
    proj = conda_project([channel], ["leaf"], 'echo "prefix=$CONDA_PREFIX"')
    by_rattler = _prefix(mlexec("run", proj, env=conda_env, check=0))
    by_conda = _prefix(mlexec("run", proj, env={**conda_env, **conda.path_env()}, check=0))
    assert by_rattler != by_conda and len(conda.calls()) == 1
    listed = json.loads(mlexec("env", "list", "--json", "--manager", "conda", env=conda_env, check=0).stdout)
    assert len(listed) == 2


def test_killed_build_leaves_nothing_ready_and_is_redone(mlexec, cli_env, store, conda_project, conda_env, standin,
                                                         env_root):
    conda = standin("conda")
    proj = conda_project(["conda-forge"], ["leaf"], CHECK)
    env = {**cli_env, **conda_env, **conda.path_env()}
    proc = subprocess.Popen([*MLEXEC, "run", str(proj)], env={**env, "STANDIN_SLEEP": "60"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(env_root.glob("conda-*/conda-meta")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # a crash half-way through conda's work
    proc.communicate(timeout=60)
    (half,) = env_root.glob("conda-*")
    assert json.loads(mlexec("env", "list", "--json", "--manager", "conda", env=env, check=0).stdout) == []  # not ready, not listed
    again = mlexec("run", proj, env=env, check=0)  # wiped and built again: the stand-in refuses existing prefixes
    assert "hello from the stand-in" in again.stdout and _prefix(again) == str(half)
    assert len(conda.calls()) == 2
    assert store.only_run().info.status == "FINISHED"  # the crashed attempt never created a run
