"""`mlexec run` end to end: the real CLI, a real MLflow sqlite store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlexec_core.testing import MLEXEC, assert_no_traceback, wait_until

PRINT_ENV = (
    "import json, os, sys; json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(), "
    "'env': {k: v for k, v in os.environ.items() if k.startswith('MLFLOW_')} }, open(os.environ['OUT'], 'w'))"
)

PROJECT = f"""
name: demo
entry_points:
  main:
    parameters:
      alpha: float
      epochs: {{type: int, default: 3}}
      name: {{type: string, default: "a b"}}
      flag: {{type: bool, default: false}}
    command: "python -c \\"{PRINT_ENV}\\" {{alpha}} {{epochs}} {{name}} {{flag}}"
  fail:
    command: "echo failing >&2; exit 3"
"""


@pytest.fixture
def demo(project, tmp_path):
    return project(PROJECT)


def read_out(tmp_path):
    return json.loads((tmp_path / "out.json").read_text())


def test_successful_run_is_tracked(mlexec, demo, store, tmp_path):
    out = tmp_path / "out.json"
    proc = mlexec("run", demo, "-P", "alpha=0.5", "-P", "name=x; rm -rf /", "-P", "extra=1 2",
                  "--env-manager", "local", env={"OUT": str(out)}, check=0)
    assert_no_traceback(proc)
    seen = read_out(tmp_path)
    assert seen["argv"] == ["0.5", "3", "x; rm -rf /", "False", "--extra", "1 2"]  # str() of YAML false, as MLflow
    assert seen["cwd"] == str(demo)
    run = store.only_run()
    assert run.info.status == "FINISHED"
    assert seen["env"]["MLFLOW_RUN_ID"] == run.info.run_id
    assert seen["env"]["MLFLOW_TRACKING_URI"] == store.uri
    assert seen["env"]["MLFLOW_EXPERIMENT_ID"] == run.info.experiment_id == "0"
    # plain values, not their shell-quoted form (MLflow logs "'x; rm -rf /'")
    assert run.data.params == {"alpha": "0.5", "epochs": "3", "name": "x; rm -rf /", "flag": "False",
                               "extra": "1 2"}
    tags = run.data.tags
    assert tags["mlflow.source.type"] == "PROJECT"
    assert tags["mlflow.source.name"] == str(demo)
    assert tags["mlflow.project.entryPoint"] == "main"
    assert tags["mlflow.project.backend"] == "local"
    assert tags["mlflow.project.env"] == "local"
    assert tags["mlflow.runName"] == run.info.run_name
    assert "mlflow.source.git.commit" not in tags
    assert run.info.run_id in proc.stderr and "succeeded" in proc.stderr


def test_failing_command_fails_the_run(mlexec, demo, store):
    proc = mlexec("run", demo, "-e", "fail", "--env-manager", "local")
    assert proc.returncode == 3  # the command's own status (mlflow run exits 1)
    assert "failing" in proc.stderr and "exited with status 3" in proc.stderr
    assert_no_traceback(proc)
    assert store.only_run().info.status == "FAILED"


@pytest.mark.parametrize(
    "args, message",
    [
        (["-P", "alpha=abc"], "-P alpha: 'abc' is not a float"),
        (["-P", "alpha=1", "-P", "epochs=2.5"], "-P epochs: '2.5' is not an int"),
        (["-P", "alpha=1", "-P", "flag=maybe"], "-P flag: 'maybe' is not a bool"),
        ([], "entry point 'main' needs a value for alpha"),
        (["-P", "alpha"], "-P 'alpha' must be NAME=VALUE"),
        (["-P", "alpha=1", "-P", "alpha=2"], "-P alpha is given twice"),
        (["-P", "alpha=1", "-P", "bad;key=1"], "-P 'bad;key': parameter names may hold"),
        (["-P", "alpha=1", "-P", "a/../b=1"], "-P 'a/../b': MLflow refuses names that change as a path"),
        (["-P", "alpha=1", "-P", "/abs=1"], "-P '/abs': MLflow refuses names"),
        (["-P", "alpha=1", "-e", "nope"], "unknown entry point 'nope'"),
        (["-P", "alpha=1", "-b", "nosuch"], "unknown backend 'nosuch'"),
        (["-P", "alpha=1", "--env-manager", "lcoal"], "unknown environment manager 'lcoal' (--env-manager)"),
        (["-P", "alpha=1", "--experiment-name", "a", "--experiment-id", "1"], "not both"),
        (["-P", "alpha=1", "-c", "{not json"], "--backend-config (inline JSON): not valid JSON"),
        (["-P", "alpha=1", "-c", "not json"], "neither a file nor inline JSON"),
        (["-P", "alpha=1", "-c", '{"a": 1}'], "backend 'local' takes no configuration"),
        (["-P", "alpha=1", "-v", "main"], "--version 'main' needs a git project"),
        (["-P", "alpha=1", "--experiment-id", "999"], "no experiment with id '999'"),
    ],
)
def test_bad_input_is_one_clear_error_and_no_run(mlexec, demo, store, args, message):
    proc = mlexec("run", demo, "--env-manager", "local", *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stderr.startswith("error:")
    assert_no_traceback(proc)
    assert store.runs() == []


def test_unknown_backend_suggests_close_name(mlexec, demo):
    proc = mlexec("run", demo, "-P", "alpha=1", "--env-manager", "lcoal")
    assert "did you mean 'local'?" in proc.stderr


def test_missing_project_directory(mlexec, tmp_path, store):
    proc = mlexec("run", tmp_path / "nowhere")
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    assert store.runs() == []


def test_path_and_uri_parameters(mlexec, project, store, tmp_path):
    proj = project(f"""
        name: p
        entry_points:
          main:
            parameters:
              data: path
              cfg: {{type: path, default: conf/settings.yaml}}
              dest: {{type: uri, default: "s3://bucket/out"}}
            command: "python -c \\"{PRINT_ENV}\\" {{data}} {{cfg}} {{dest}}"
    """, {"conf/settings.yaml": "a: 1\n"})
    caller = tmp_path / "caller"
    (caller / "d").mkdir(parents=True)
    out = tmp_path / "out.json"
    mlexec("run", proj, "-P", "data=d", "--env-manager", "local", cwd=caller, env={"OUT": str(out)}, check=0)
    # a user value resolves against the caller's directory, a default against the project
    assert read_out(tmp_path)["argv"] == [str(caller / "d"), str(proj / "conf/settings.yaml"), "s3://bucket/out"]
    assert store.only_run().data.params["data"] == str(caller / "d")

    missing = mlexec("run", proj, "-P", "data=nope", "--env-manager", "local", cwd=caller)
    assert missing.returncode == 2 and f"no such file or directory: {caller / 'nope'}" in missing.stderr
    bad_uri = mlexec("run", proj, "-P", "data=d", "-P", "dest=rel/path", "--env-manager", "local", cwd=caller)
    assert bad_uri.returncode == 2 and "-P dest: 'rel/path' is not a URI" in bad_uri.stderr
    assert len(store.runs()) == 1


def test_literal_braces_in_command(mlexec, project, store):
    proj = project("""
        entry_points:
          main:
            parameters: {n: int}
            command: "python -c \\"print({'a': {n}})\\""
    """)
    proc = mlexec("run", proj, "-P", "n=2", "--env-manager", "local", check=0)
    assert "{'a': 2}" in proc.stdout


def test_undeclared_placeholder_is_left_and_warned(mlexec, project):
    proj = project("""
        entry_points:
          main:
            command: "echo {y}"
    """)
    proc = mlexec("run", proj, "-P", "y=1", "--env-manager", "local", check=0)
    assert proc.stdout.strip() == "{y} --y 1"
    assert "{y} in entry point 'main' is not a declared parameter" in proc.stderr


def test_script_entry_points_without_declaration(mlexec, project, store, tmp_path):
    proj = project(None, {
        "train.py": "import sys; print('py', sys.argv[1:])\n",
        "job.sh": 'echo "sh $@"\n',
    })
    py = mlexec("run", proj, "-e", "train.py", "-P", "foo=1", "--env-manager", "local", check=0)
    assert "py ['--foo', '1']" in py.stdout
    sh = mlexec("run", proj, "-e", "job.sh", "-P", "k=a b", "--env-manager", "local", env={"SHELL": "/bin/sh"},
                check=0)
    assert "sh --k a b" in sh.stdout
    missing = mlexec("run", proj, "-e", "nope.py", "--env-manager", "local")
    assert missing.returncode == 2 and "no such script" in missing.stderr
    assert [r.data.tags["mlflow.project.entryPoint"] for r in store.runs()] == ["job.sh", "train.py"]


def test_python_env_project_needs_a_manager(mlexec, project, store):
    proj = project("name: p\npython_env: python_env.yaml\nentry_points: {main: {command: 'echo ran'}}\n",
                   {"python_env.yaml": "python: '3.11'\ndependencies: [six]\n"})
    proc = mlexec("run", proj, env={"MLEXEC_DISABLE_PLUGINS": "virtualenv"})
    assert proc.returncode == 2
    assert "no environment manager for a python environment (python_env.yaml) is installed" in proc.stderr
    assert "--env-manager local" in proc.stderr
    assert store.runs() == []
    ok = mlexec("run", proj, "--env-manager", "local", check=0)
    assert "ran" in ok.stdout


def test_project_without_env_runs_locally_by_default(mlexec, project, store):
    proj = project("entry_points: {main: {command: 'echo hello'}}\n")
    proc = mlexec("run", proj, env={"MLEXEC_DISABLE_PLUGINS": "virtualenv"}, check=0)
    assert proc.stdout.strip() == "hello"


def test_experiment_name_and_run_name(mlexec, demo, store, tmp_path):
    mlexec("run", demo, "-P", "alpha=1", "--env-manager", "local", "--experiment-name", "tuning",
           "--run-name", "first try", env={"OUT": str(tmp_path / "out.json")}, check=0)
    run = store.only_run()
    assert store.client.get_experiment(run.info.experiment_id).name == "tuning"
    assert run.info.run_name == "first try" and run.data.tags["mlflow.runName"] == "first try"
    # the existing experiment is found again by name
    mlexec("run", demo, "-P", "alpha=2", "--env-manager", "local", "--experiment-name", "tuning",
           env={"OUT": str(tmp_path / "out.json")}, check=0)
    assert {r.info.experiment_id for r in store.runs()} == {run.info.experiment_id}


def test_run_id_attaches_to_existing_run(mlexec, demo, store, tmp_path):
    existing = store.client.create_run("0")
    mlexec("run", demo, "-P", "alpha=1", "--env-manager", "local", "--run-id", existing.info.run_id,
           env={"OUT": str(tmp_path / "out.json")}, check=0)
    run = store.only_run()
    assert run.info.run_id == existing.info.run_id and run.info.status == "FINISHED"
    assert run.data.params["alpha"] == "1"
    assert read_out(tmp_path)["env"]["MLFLOW_RUN_ID"] == existing.info.run_id


def test_git_commit_is_tagged(mlexec, demo, store, tmp_path):
    git = ["git", "-C", str(demo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    # a token given as the user name, the usual CI form
    subprocess.run([*git, "remote", "add", "origin", "https://ghp_TOKEN123@example.invalid/org/demo.git"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    mlexec("run", demo, "-P", "alpha=1", "--env-manager", "local", env={"OUT": str(tmp_path / "out.json")}, check=0)
    tags = store.only_run().data.tags
    assert tags["mlflow.source.git.commit"] == commit
    assert tags["mlflow.source.git.repoURL"] == "https://example.invalid/org/demo.git"
    assert tags["mlflow.source.name"] == f"file://{demo.resolve()}"  # the work tree root, as mlflow run records it
    assert "ghp_TOKEN123" not in json.dumps(tags)


def test_dry_run_creates_nothing(mlexec, demo, store):
    proc = mlexec("run", demo, "-P", "alpha=0.5", "--env-manager", "local", "--dry-run", "--json", check=0)
    plan = json.loads(proc.stdout)
    assert plan["entry_point"] == "main" and plan["env_manager"] == "local" and plan["backend"] == "local"
    assert plan["command"].endswith("0.5 3 'a b' False")
    assert {p["name"]: p["value"] for p in plan["parameters"]} == {"alpha": "0.5", "epochs": "3", "name": "a b",
                                                                   "flag": "False"}
    text = mlexec("run", demo, "-P", "alpha=0.5", "--env-manager", "local", "--dry-run", check=0)
    assert "dry run" in text.stdout and "alpha" in text.stdout
    assert store.runs() == []


def test_tracking_disabled_runs_untracked(mlexec, project, store):
    proj = project("entry_points: {main: {command: 'echo run=$MLFLOW_RUN_ID'}}\n")
    proc = mlexec("run", proj, "--env-manager", "local", env={"MLEXEC_DISABLE_PLUGINS": "mlflow"}, check=0)
    assert proc.stdout.strip() == "run="
    assert store.runs() == []


def test_default_store_is_sqlite_in_working_directory(mlexec, project, tmp_path, mlflow_client_cls):
    """No MLFLOW_TRACKING_URI: mlflow.db in the caller's directory, created by MLflow on first use."""
    proj = project("entry_points: {main: {command: 'echo $MLFLOW_TRACKING_URI'}}\n")
    caller = tmp_path / "caller"
    caller.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env["XDG_CACHE_HOME"] = str(tmp_path / ".cache")
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run([*MLEXEC, "run", str(proj), "--env-manager", "local"], cwd=caller, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"sqlite:///{caller / 'mlflow.db'}"
    runs = mlflow_client_cls(f"sqlite:///{caller / 'mlflow.db'}").search_runs(["0"])
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_piped_output_is_plain(mlexec, demo, tmp_path):
    proc = mlexec("run", demo, "-P", "alpha=1", "--env-manager", "local", env={"OUT": str(tmp_path / "o.json")},
                  check=0)
    assert "\x1b[" not in proc.stderr and "\x1b[" not in proc.stdout


# -- stopping ------------------------------------------------------------------------------

SLEEPER = """
name: sleeper
entry_points:
  main:
    command: "sh -c 'sleep 300 & echo $! > child.pid; wait' & echo $$ > shell.pid; wait"
  stubborn:
    command: "trap '' TERM INT; echo $$ > shell.pid; sleep 300 & echo $! > child.pid; wait; wait"
"""


def _wait_for(path: Path, timeout: float = 30) -> int:
    """The pid written in ``path``, once it is there."""
    text = wait_until(lambda: path.exists() and path.read_text().strip(), timeout, f"{path}", interval=0.05)
    return int(text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_dead(pid: int, timeout: float = 30) -> bool:
    return wait_until(lambda: not _alive(pid), timeout, f"process {pid} to end", interval=0.05)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_stops_the_whole_group_and_marks_killed(project, cli_env, store, signum, code):
    proj = project(SLEEPER)
    proc = subprocess.Popen([*MLEXEC, "run", str(proj), "--env-manager", "local"], env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = _wait_for(proj / "child.pid")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert _wait_dead(child), "the grandchild survived"
    assert "killed" in err
    assert_no_traceback(proc := subprocess.CompletedProcess([], code, out, err))
    assert store.only_run().info.status == "KILLED"


def test_stubborn_job_is_killed_after_the_timeout(project, cli_env, store):
    proj = project(SLEEPER)
    proc = subprocess.Popen([*MLEXEC, "run", str(proj), "-e", "stubborn", "--env-manager", "local"],
                            env={**cli_env, "MLEXEC_STOP_TIMEOUT": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shell_pid = _wait_for(proj / "shell.pid")
    child = _wait_for(proj / "child.pid")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert _wait_dead(shell_pid) and _wait_dead(child)
    assert store.only_run().info.status == "KILLED"


def test_run_ended_by_the_job_keeps_its_status(mlexec, project, store):
    """As in MLflow: a job that ends its own run (mlflow.end_run) keeps the status it set."""
    script = (
        "import os, sqlite3\n"
        "db = sqlite3.connect(os.environ['MLFLOW_TRACKING_URI'][len('sqlite:///'):])\n"
        "db.execute(\"UPDATE runs SET status='FAILED', end_time=1 WHERE run_uuid=?\", (os.environ['MLFLOW_RUN_ID'],))\n"
        "db.commit()\n"
    )
    proj = project("entry_points: {main: {command: 'python end.py'}}\n", {"end.py": script})
    mlexec("run", proj, "--env-manager", "local", check=0)
    assert store.only_run().info.status == "FAILED"


def test_failure_reason_is_tagged(mlexec, demo, store):
    mlexec("run", demo, "-e", "fail", "--env-manager", "local")
    assert store.only_run().data.tags["mlexec.failureReason"] == "the command exited with status 3"


def test_the_run_header_comes_before_the_commands_first_line(project, store, cli_env, tmp_path):
    """As in MLflow, the header is printed once the run exists and before the job starts, so in
    one stream (a terminal, or `2>&1`) a quick command's output never comes before it."""
    proj = project('entry_points: {main: {command: "echo first-line"}}\n')
    both = tmp_path / "both.txt"
    with open(both, "wb") as f:
        proc = subprocess.run([*MLEXEC, "run", str(proj), "--env-manager", "local"], cwd=tmp_path, env=cli_env,
                              stdout=f, stderr=subprocess.STDOUT, timeout=120)
    lines = both.read_text().splitlines()
    assert proc.returncode == 0, lines
    header = next(i for i, line in enumerate(lines) if line.startswith("=== Run ") and ": echo first-line" in line)
    assert header < lines.index("first-line") < next(i for i, line in enumerate(lines) if "succeeded ===" in line)


LONG = "\n".join(["name: long", "entry_points:", "  main:", "    parameters:",
                  *[f"      p{i}: string" for i in range(25)],
                  "    command: \"echo " + " ".join(f"{{p{i}}}" for i in range(25)) + " | wc -c\""])


@pytest.mark.parametrize("extra", [[], ["--dry-run"], ["--dry-run", "--json"]])
def test_a_command_longer_than_the_system_accepts_is_refused_before_the_run_exists(mlexec, project, store,
                                                                                  tmp_path, extra):
    """25 values of 6,000 characters, each within MLflow's limit: the command is 150,000 bytes,
    more than Linux lets one argument be, and `bash -c COMMAND` would fail with E2BIG."""
    proj = project(LONG)
    values = [f"-Pp{i}={'x' * 6000}" for i in range(25)]
    store.runs()
    before = set(os.listdir(tmp_path / ".tmp")) if (tmp_path / ".tmp").exists() else set()
    proc = mlexec("run", proj, *values, "--env-manager", "local", *extra, check=2)
    assert proc.returncode == 2, proc.stderr
    assert_no_traceback(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "entry point 'main' is 150,0" in errors[0] and "131,071 bytes" in errors[0]
    assert "MAX_ARG_STRLEN" in errors[0] and "p0 (6,000 characters)" in errors[0]
    assert "a file" in proc.stderr  # the hint
    assert proc.stdout == ""
    assert store.runs() == []
    after = set(os.listdir(tmp_path / ".tmp")) if (tmp_path / ".tmp").exists() else set()
    assert after <= before


def test_a_command_just_within_the_limit_runs(mlexec, project, store):
    proj = project(LONG)
    # 25 values and 25 spaces and "echo " and " | wc -c": as long as one argument may be
    size = 131071 - len("echo ") - 24 - len(" | wc -c")
    values = [f"-Pp{i}={'y' * (size // 25 + (1 if i < size % 25 else 0))}" for i in range(25)]
    proc = mlexec("run", proj, *values, "--env-manager", "local", check=0)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(size + 24 + 1)  # the values, the spaces between them, echo's newline
    assert store.only_run().info.status == "FINISHED"


def test_a_sweep_refuses_a_child_whose_command_is_too_long_before_any_run(mlexec, project, store):
    proj = project(LONG)
    values = [f"-Pp{i}={'x' * 6000}" for i in range(24)]
    proc = mlexec("sweep", proj, *values, "-P", f"p24=short,{'z' * 6000}", "--env-manager", "local", check=2)
    assert proc.returncode == 2, proc.stderr
    assert_no_traceback(proc)
    assert "MAX_ARG_STRLEN" in proc.stderr
    assert store.runs() == []


def test_a_failed_command_fails_its_run_even_after_mlflows_exit_handler_ended_it(mlexec, project, store):
    """MLflow's client ends an active run FINISHED when the job's process exits, whatever its exit
    status, and `mlflow run` then keeps that status: a crashed training script reads as finished.
    mlexec knows the command failed: the run is FAILED (a status the job set deliberately, FAILED
    or KILLED, still stands: test_run_ended_by_the_job_keeps_its_status)."""
    proj = project("entry_points: {main: {command: '$PYTHON crash.py'}}\n",
                   {"crash.py": "import mlflow, sys\nmlflow.log_metric('loss', 0.5)\nsys.exit(3)\n"})
    mlexec("run", proj, "--env-manager", "local", env={"PYTHON": sys.executable}, check=3)
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert run.data.metrics == {"loss": 0.5}
    assert run.data.tags["mlexec.failureReason"] == "the command exited with status 3"
