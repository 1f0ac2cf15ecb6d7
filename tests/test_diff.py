"""``mlexec diff RUN_A RUN_B`` (issue 23, item 5): what differs between two runs, only that.
The real CLI on a real sqlite store, with runs made by ``mlexec run`` (and by MLflow itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlexec_core.reproduce.diff import describe_block, patch_blocks
from mlexec_core.testing import assert_no_traceback

MLPROJECT = """
name: compared
entry_points:
  main:
    parameters: {alpha: {type: float, default: 0.5}, name: {type: string, default: x}}
    command: "$PYTHON train.py {alpha}"
"""
#: Logs the metric ``rmse`` (alpha * 2) and ``constant`` (always 1).
TRAIN = ("import sys, mlflow\n"
         "mlflow.log_metric('rmse', float(sys.argv[1]) * 2)\n"
         "mlflow.log_metric('constant', 1.0)\n")


def git(folder, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture
def run(mlexec, store):
    """``run(project, *args)``: ``mlexec run`` it (local environment), and return the new run's id."""

    def start(folder, *args: str, check: int = 0) -> str:
        before = {r.info.run_id for r in store.runs()}
        mlexec("run", folder, "--env-manager", "local", *args, env={"PYTHON": sys.executable}, check=check)
        [new] = [r.info.run_id for r in store.runs() if r.info.run_id not in before]
        return new

    return start


def diff_json(mlexec, a: str, b: str) -> dict:
    proc = mlexec("diff", a, b, "--json", check=0)
    assert_no_traceback(proc)
    return json.loads(proc.stdout)


def rows(result: dict, section: str) -> dict[str, tuple]:
    """``key -> (a, b)`` of one section of ``mlexec diff --json`` (empty when it is not there)."""
    for found in result["sections"]:
        if found["name"] == section:
            return {r["key"]: (r["a"], r["b"]) for r in found["rows"]}
    return {}


def test_parameters_and_final_metrics_that_differ_and_only_those(mlexec, project, run):
    folder = project(MLPROJECT, files={"train.py": TRAIN})
    a = run(folder, "-P", "alpha=0.5")
    b = run(folder, "-P", "alpha=1.5")
    result = diff_json(mlexec, a, b)
    assert result["a"]["run_id"] == a and result["b"]["run_id"] == b and result["a"]["record"] is True
    assert rows(result, "parameters") == {"alpha": ("0.5", "1.5")}  # name=x on both: not shown
    assert rows(result, "metrics") == {"rmse": (1.0, 3.0)}  # constant on both: not shown
    assert rows(result, "backend")["command"][1].endswith("train.py 1.5")
    assert not rows(result, "files") and not rows(result, "packages") and not rows(result, "mlexec")

    plain = mlexec("diff", a, b, check=0)  # piped: plain lines, no table, no colour codes
    assert_no_traceback(plain)
    assert "# Parameters" in plain.stdout.splitlines()
    assert "alpha 0.5 -> 1.5" in plain.stdout.splitlines()
    assert "rmse 1.0 -> 3.0" in plain.stdout.splitlines()
    assert "constant" not in plain.stdout and "name " not in plain.stdout
    assert "\x1b[" not in plain.stdout and "┃" not in plain.stdout and "│" not in plain.stdout


def test_a_metric_only_one_run_logged_is_added_or_removed(mlexec, project, run):
    folder = project(MLPROJECT, files={"train.py": TRAIN})
    a = run(folder)
    (folder / "train.py").write_text(TRAIN + "mlflow.log_metric('extra', 7.0)\n")
    b = run(folder)
    plain = mlexec("diff", a, b, check=0).stdout.splitlines()
    assert "+ extra 7.0" in plain
    assert "- extra 7.0" in mlexec("diff", b, a, check=0).stdout.splitlines()
    # a plain directory: its files are compared by content
    assert rows(diff_json(mlexec, a, b), "files").keys() == {"train.py"}


def test_a_dirty_work_tree_against_a_clean_one_names_the_changed_files(mlexec, project, run, store):
    folder = project(MLPROJECT, files={"train.py": TRAIN, "util.py": "X = 1\n"})
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "first")
    clean = run(folder)
    (folder / "util.py").write_text("X = 2\n")
    dirty = run(folder)
    result = diff_json(mlexec, clean, dirty)
    assert rows(result, "code") == {"dirty": (False, True)}
    assert rows(result, "files") == {"util.py": ("no uncommitted change", "edited (+1 -1)")}
    plain = mlexec("diff", clean, dirty, check=0).stdout.splitlines()
    assert "util.py no uncommitted change -> edited (+1 -1)" in plain

    # two dirty runs: only the files whose changes differ between the two patches
    (folder / "new.py").write_text("NEW = 1\n")
    dirtier = run(folder)
    assert rows(diff_json(mlexec, dirty, dirtier), "files") == {"new.py": ("no uncommitted change", "new file (+1)")}
    assert "util.py" not in mlexec("diff", dirty, dirtier, check=0).stdout

    # a patch that cannot be read: said, and no file is reported changed for want of it
    [lost] = [r for r in store.runs() if r.info.run_id == dirtier]
    (Path(lost.info.artifact_uri.replace("file://", "")) / "mlexec" / "source.patch").unlink()
    result = diff_json(mlexec, dirty, dirtier)
    assert any("mlexec/source.patch could not be read" in n and dirtier in n for n in result["notes"])
    assert not rows(result, "files")


def test_patch_blocks_split_a_git_patch_by_file():
    patch = (b"diff --git a/x y.py b/x y.py\nindex 1..2 100644\n--- a/x y.py\n+++ b/x y.py\n@@ -1 +1,2 @@\n"
             b"-a\n+b\n+c\n"
             b"diff --git a/old.py b/new.py\nsimilarity index 90%\nrename from old.py\nrename to new.py\n"
             b"diff --git a/gone.txt b/gone.txt\ndeleted file mode 100644\nindex 1..0\n--- a/gone.txt\n"
             b"+++ /dev/null\n@@ -1,2 +0,0 @@\n-1\n-2\n"
             b"diff --git \"a/t\\303\\251.py\" \"b/t\\303\\251.py\"\nnew file mode 100644\n--- /dev/null\n"
             b"+++ \"b/t\\303\\251.py\"\n@@ -0,0 +1 @@\n+z\n")
    blocks = patch_blocks(patch)
    assert list(blocks) == ["x y.py", "new.py", "gone.txt", "té.py"]
    assert [describe_block(b) for b in blocks.values()] == [
        "edited (+2 -1)", "renamed from old.py", "deleted (-2)", "new file (+1)"]
    assert b"".join(blocks.values()) == patch


def test_identical_runs_say_so(mlexec, project, run):
    # (a command of milliseconds: two runs' durations never differ by the second that would count)
    folder = project("entry_points:\n  main:\n    parameters: {alpha: float}\n    command: 'echo {alpha}'\n")
    a = run(folder, "-P", "alpha=2")
    b = run(folder, "-P", "alpha=2")
    proc = mlexec("diff", a, b, check=0)
    assert_no_traceback(proc)
    assert proc.stdout.strip() == f"no differences between {a} and {b}"
    result = diff_json(mlexec, a, b)
    assert result["identical"] is True and result["sections"] == [] and result["notes"] == []
    assert mlexec("diff", a, a, check=0).stdout.strip() == f"no differences between {a} and {a}"


def test_status_differs(mlexec, project, run):
    folder = project(MLPROJECT, files={"train.py": TRAIN})
    ok = run(folder)
    (folder / "train.py").write_text(TRAIN + "raise SystemExit(3)\n")
    failed = run(folder, check=3)
    result = diff_json(mlexec, ok, failed)
    assert rows(result, "run")["status"] == ("FINISHED", "FAILED")
    assert result["b"]["status"] == "FAILED"


def test_an_unknown_run_is_one_clear_error(mlexec, project, run, store):
    folder = project(MLPROJECT, files={"train.py": TRAIN})
    a = run(folder)
    for args in ((a, "0123456789abcdef0123456789abcdef"), ("nope", a)):
        proc = mlexec("diff", *args, check=2)
        assert_no_traceback(proc)
        missing = args[1] if args[0] == a else args[0]
        assert f"no run with id {missing!r}" in proc.stderr, proc.stderr
        assert proc.stdout == ""


def test_a_run_without_a_record_is_compared_on_what_mlflow_keeps(mlexec, project, run, store):
    folder = project(MLPROJECT, files={"train.py": TRAIN})
    ours = run(folder, "-P", "alpha=0.5")
    client = store.client  # a run made by another tool (or by mlexec before runs kept records)
    other = client.create_run("0", tags={"mlflow.project.entryPoint": "train", "mlflow.source.git.commit": "abc123"})
    theirs = other.info.run_id
    for key, value in (("alpha", "0.5"), ("name", "y")):
        client.log_param(theirs, key, value)
    client.log_metric(theirs, "rmse", 1.0)
    client.log_metric(theirs, "rmse", 2.0, step=1)  # the latest value is the one compared
    client.set_terminated(theirs, "FINISHED")

    result = diff_json(mlexec, ours, theirs)
    assert result["b"]["record"] is False
    assert result["notes"] == [f"run {theirs} has no mlexec record (made by `mlflow run`, another tool, or before "
                               "mlexec kept records): only what MLflow keeps is compared"]
    assert rows(result, "parameters") == {"name": ("x", "y")}
    assert rows(result, "metrics") == {"rmse": (1.0, 2.0), "constant": (1.0, None)}
    assert rows(result, "backend")["entry_point"] == ("main", "train")
    assert rows(result, "code")["commit"] == (None, "abc123")
    # nothing of the record is compared with nothing: no packages, no versions, no files
    assert not {"packages", "mlexec", "files"} & {s["name"] for s in result["sections"]}

    proc = mlexec("diff", ours, theirs, check=0)
    assert_no_traceback(proc)
    assert proc.stderr.count("has no mlexec record") == 1 and theirs in proc.stderr
    assert "name x -> y" in proc.stdout.splitlines() and "- constant 1.0" in proc.stdout.splitlines()


@pytest.mark.slow
def test_a_run_of_mlflow_run_against_an_mlexec_run(mlexec, project, run, store, cli_env, tmp_path):
    folder = project(MLPROJECT, files={"train.py": TRAIN})
    ours = run(folder, "-P", "alpha=0.5")
    env = {**cli_env, "PYTHON": sys.executable}
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(folder), "--env-manager", "local",
                           "-P", "alpha=1.5"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [theirs] = [r.info.run_id for r in store.runs() if r.info.run_id != ours]
    result = diff_json(mlexec, ours, theirs)
    assert result["notes"] and theirs in result["notes"][0] and ours not in result["notes"][0]
    assert rows(result, "parameters") == {"alpha": ("0.5", "1.5")}
    assert rows(result, "metrics") == {"rmse": (1.0, 3.0)}
    # the tags both set alike (the entry point, the backend, the source) do not differ, and a tag
    # only mlexec sets (mlflow.project.env, which `mlflow run` leaves out for a local environment)
    # is not a difference
    assert {s["name"] for s in result["sections"]} - {"run"} == {"parameters", "metrics"}, result


def test_on_a_terminal_each_section_is_a_table(project, run, cli_env, tmp_path):
    """Under a pseudo-terminal, as a user sees it: a rich table per section, no colour with NO_COLOR."""
    import pty

    folder = project(MLPROJECT, files={"train.py": TRAIN})
    a = run(folder, "-P", "alpha=0.5")
    b = run(folder, "-P", "alpha=1.5")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mlexec_core", "diff", a, b], stdin=slave, stdout=slave,
                            stderr=slave, cwd=tmp_path, env={**cli_env, "NO_COLOR": "1", "COLUMNS": "200",
                                                             "TERM": "xterm"})
    os.close(slave)
    out = bytearray()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out.extend(data)
    os.close(master)
    assert proc.wait(60) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "Traceback" not in text
    assert "Parameters" in text and "Metrics (latest values)" in text and f"a: {a[:12]}" in text
    assert "┃" in text or "│" in text  # tables, not the plain lines
    assert "alpha 0.5 -> 1.5" not in text
    assert not [code for code in ("\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[36m") if code in text]  # no colours


def test_a_record_that_cannot_be_read_is_said_once_and_mlflow_s_data_still_compared(mlexec, project, run, store):
    folder = project(MLPROJECT, files={"train.py": TRAIN})
    a = run(folder, "-P", "alpha=0.5")
    b = run(folder, "-P", "alpha=1.5")
    [broken] = [r for r in store.runs() if r.info.run_id == b]
    (Path(broken.info.artifact_uri.replace("file://", "")) / "mlexec" / "run.json").write_text("{not json")
    result = diff_json(mlexec, a, b)
    assert result["b"]["record"] is False
    assert any(n.startswith(f"run {b}: its record mlexec/run.json could not be read") for n in result["notes"])
    assert rows(result, "parameters") == {"alpha": ("0.5", "1.5")}
    assert "backend" not in {s["name"] for s in result["sections"]}  # the tags agree; the command is unknown


def _start_server(tmp_path, template_db) -> tuple[subprocess.Popen, str]:
    """A real ``mlflow server`` on loopback that proxies artifacts (``mlflow-artifacts:/`` URIs)."""
    import time
    import urllib.request

    from mlexec_core.testing import free_port

    db = tmp_path / "server.db"
    db.write_bytes(template_db.read_bytes())
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                             "--port", str(port), "--backend-store-uri", f"sqlite:///{db}",
                             "--artifacts-destination", str(tmp_path / "served-artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240  # the server imports all of mlflow: slow on a busy machine
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_through_a_tracking_server_the_record_is_downloaded_and_the_download_removed(
        mlexec, project, tmp_path, template_db, cli_env):
    server, uri = _start_server(tmp_path, template_db)
    try:
        env = {"MLFLOW_TRACKING_URI": uri, "PYTHON": sys.executable}
        folder = project(MLPROJECT, files={"train.py": TRAIN, "util.py": "X = 1\n"})
        git(folder, "init", "-q")
        git(folder, "add", "-A")
        git(folder, "commit", "-qm", "first")
        ids = []
        for _ in range(2):
            proc = mlexec("run", folder, "--env-manager", "local", env=env, check=0)
            ids.append(proc.stderr.split("=== Run ", 1)[1].split()[0])
            (folder / "util.py").write_text("X = 2\n")
        proc = mlexec("diff", *ids, "--json", env=env, check=0)
        assert_no_traceback(proc)
        result = json.loads(proc.stdout)
        assert result["a"]["record"] is result["b"]["record"] is True
        assert rows(result, "files") == {"util.py": ("no uncommitted change", "edited (+1 -1)")}
        assert not list(Path(cli_env["TMPDIR"]).glob("mlexec-diff-*"))  # the downloads are gone
        missing = mlexec("diff", ids[0], "0123456789abcdef0123456789abcdef", env=env, check=2)
        assert_no_traceback(missing)
        assert "no run with id '0123456789abcdef0123456789abcdef'" in missing.stderr, missing.stderr
    finally:
        _stop(server)


def test_records_compare_backend_config_resources_environment_and_versions_key_by_key():
    """What runs on a cluster or in a container records (no cluster here: two records as written)."""
    from mlexec_core.reproduce.diff import RunData, compare, text_lines

    def record(namespace: str, gpus: str, image: str, docker: str, plugin: str) -> dict:
        return {"format": 1, "source": {"kind": "git-uri", "commit": "c1", "dirty": False},
                "entry_point": "main", "command": "python train.py", "backend": "kubernetes",
                "backend_config": {"namespace": namespace, "token": "<redacted>", "labels": {"team": "ml"}},
                "env_manager": "docker", "resources": {"gpus": gpus, "memory": "4G"},
                "docker_args": [["shm-size", docker]],
                "environment": {"name": "docker", "kind": "docker-image", "packages": {},
                                "details": {"image_id": image, "image": "repo/x:1"}},
                "mlexec": {"version": "0.1.0", "plugins": {"mlexec-kubernetes": plugin, "mlexec-docker": "0.1.0"}},
                "python": {"version": "3.11.7"}, "platform": {"system": "Linux"}}

    a = RunData(run_id="a" * 32, status="FINISHED", record=record("ml", "1", "sha256:aaa", "1g", "0.1.0"))
    b = RunData(run_id="b" * 32, status="FINISHED", record=record("prod", "2", "sha256:bbb", "2g", "0.2.0"))
    result = compare(a, b)
    got = {s.name: {r.key: (r.a, r.b) for r in s.rows} for s in result.sections}
    assert got == {
        "backend": {"config.namespace": ("ml", "prod"), "resources.gpus": ("1", "2"),
                    "docker_args": ("--shm-size 1g", "--shm-size 2g")},
        "environment": {"image_id": ("sha256:aaa", "sha256:bbb")},
        "mlexec": {"plugins.mlexec-kubernetes": ("0.1.0", "0.2.0")},
    }
    assert "config.namespace ml -> prod" in text_lines(result)
    same = compare(a, a)
    assert same.identical and text_lines(same) == [f"no differences between {a.run_id} and {a.run_id}"]
