"""Every run records what it ran (issue 23, item 1): ``mlexec/run.json``, the code's patch or
snapshot, tags saying whether the code was committed.  The real CLI, a real store, real git."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from mlexec_core.reproduce import REDACTED, redact_config
from mlexec_core.testing import assert_no_traceback

MLPROJECT = """
name: record
entry_points:
  main:
    parameters: {alpha: float, epochs: {type: int, default: 3}, name: {type: string, default: a b}}
    command: "python3 train.py {alpha} {epochs}"
"""


def artifacts(store, run) -> Path:
    return Path(run.info.artifact_uri.replace("file://", ""))


def record(store, run) -> dict:
    return json.loads((artifacts(store, run) / "mlexec" / "run.json").read_text())


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout


def test_a_directory_run_records_its_parameters_command_and_files(mlexec, project, store):
    folder = project(MLPROJECT, files={"train.py": "print('trained')\n", "data/x.csv": "1,2\n"})
    (folder / "mlruns").mkdir()  # what runs write into a project is not its code
    (folder / "mlruns" / "noise").write_text("x")
    proc = mlexec("run", folder, "--env-manager", "local", "-P", "alpha=0.5", "-P", "extra=1", check=0)
    assert_no_traceback(proc)
    run = store.only_run()
    got = record(store, run)
    assert got["entry_point"] == "main" and got["command"] == "python3 train.py 0.5 3 --extra 1"
    assert got["parameters"]["alpha"] == {"value": "0.5", "type": "float", "source": "user"}
    assert got["parameters"]["epochs"] == {"value": "3", "type": "int", "source": "default"}
    assert got["extra_parameters"] == {"extra": "1"}
    assert got["backend"] == "local" and got["env_manager"] == "local"
    assert got["mlexec"]["plugins"]["mlexec"] and got["python"]["version"]
    assert sorted(got["source"]["files"]) == ["MLproject", "data/x.csv", "train.py"]
    assert run.data.tags["mlexec.source.digest"] == got["source"]["digest"]
    with tarfile.open(fileobj=io.BytesIO((artifacts(store, run) / "mlexec" / "source.tar.gz").read_bytes())) as tar:
        assert sorted(tar.getnames()) == ["MLproject", "data/x.csv", "train.py"]
        assert tar.extractfile("train.py").read() == b"print('trained')\n"


def test_the_digest_changes_with_the_code_only(mlexec, project, store):
    folder = project(MLPROJECT, files={"train.py": "print(1)\n"})
    mlexec("run", folder, "--env-manager", "local", "-P", "alpha=1", check=0)
    mlexec("run", folder, "--env-manager", "local", "-P", "alpha=2", check=0)  # its own mlflow.db, __pycache__ ...
    (folder / "train.py").write_text("print(2)\n")
    mlexec("run", folder, "--env-manager", "local", "-P", "alpha=3", check=0)
    digests = {r.data.params["alpha"]: r.data.tags["mlexec.source.digest"] for r in store.runs()}
    assert digests["1"] == digests["2"] != digests["3"]


def test_over_the_snapshot_cap_only_the_digest_is_kept(mlexec, project, store, cli_env):
    folder = project(MLPROJECT, files={"train.py": "x = 1\n" * 1000})
    proc = mlexec("run", folder, "--env-manager", "local", "-P", "alpha=1", check=0,
                  env={**cli_env, "MLEXEC_SNAPSHOT_CAP": "1K"})
    assert "over MLEXEC_SNAPSHOT_CAP (1K): only their digest is recorded" in proc.stderr, proc.stderr
    run = store.only_run()
    assert not (artifacts(store, run) / "mlexec" / "source.tar.gz").exists()
    assert record(store, run)["source"]["digest"].startswith("sha256:")


def test_a_dirty_work_tree_is_recorded_as_a_patch_that_reproduces_it(mlexec, project, store, tmp_path):
    folder = project(MLPROJECT, files={"train.py": "print('committed')\n", ".gitignore": "ignored.txt\n"})
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "first")
    commit = git(folder, "rev-parse", "HEAD").strip()
    mlexec("run", folder, "--env-manager", "local", "-P", "alpha=1", check=0)
    clean = store.only_run()
    assert clean.data.tags["mlexec.source.dirty"] == "false"
    assert not (artifacts(store, clean) / "mlexec" / "source.patch").exists()

    (folder / "train.py").write_text("print('edited')\n")
    (folder / "new.py").write_text("NEW = 1\n")
    (folder / "ignored.txt").write_text("never recorded\n")
    mlexec("run", folder, "--env-manager", "local", "-P", "alpha=2", check=0)
    [dirty] = [r for r in store.runs() if r.data.params["alpha"] == "2"]
    assert dirty.data.tags["mlexec.source.dirty"] == "true"
    got = record(store, dirty)
    assert got["source"]["commit"] == commit and got["source"]["dirty"] is True
    patch = artifacts(store, dirty) / "mlexec" / "source.patch"
    assert b"ignored.txt" not in patch.read_bytes() and b"mlflow.db" not in patch.read_bytes()
    # the user's index is untouched: new.py is still untracked
    assert "?? new.py" in git(folder, "status", "--porcelain")
    # a clean checkout of the commit, with the patch applied, is the tree the run ran from
    copy = tmp_path / "copy"
    subprocess.run(["git", "clone", "-q", str(folder), str(copy)], check=True)
    git(copy, "checkout", "-q", commit)
    git(copy, "apply", str(patch))
    assert (copy / "train.py").read_text() == "print('edited')\n"
    assert (copy / "new.py").read_text() == "NEW = 1\n"


def test_secrets_in_a_backend_config_are_never_recorded():
    config = {"namespace": "ml", "token": "s3cr3t", "auth": {"password": "p", "user": "u"},
              "env": [{"API_KEY": "k"}], "service-account": "runner", "private-key-file": "/k"}
    got = redact_config(config)
    assert got["namespace"] == "ml" and got["service-account"] == "runner"
    assert got["token"] == got["auth"] == got["private-key-file"] == REDACTED
    assert got["env"] == [{"API_KEY": REDACTED}]
    assert "s3cr3t" not in json.dumps(got) and "\"k\"" not in json.dumps(got)


def test_mlexec_record_off_records_nothing(mlexec, project, store, cli_env):
    folder = project(MLPROJECT, files={"train.py": "print(1)\n"})
    mlexec("run", folder, "--env-manager", "local", "-P", "alpha=1", check=0, env={**cli_env, "MLEXEC_RECORD": "off"})
    run = store.only_run()
    assert not (artifacts(store, run) / "mlexec" / "run.json").exists()
    assert "mlexec.record" not in run.data.tags and "mlexec.source.digest" not in run.data.tags


CONFIGURED = '''
"""A third-party backend that takes a config (with a secret in it) and runs locally."""
from mlexec_core.builtins.local import LocalBackend
from mlexec_core.plugin import Registration, hookimpl


class ConfiguredBackend(LocalBackend):
    def parse_config(self, config, base_dir):
        return dict(config)


@hookimpl
def mlexec_backends():
    return [Registration(kind="backend", name="configured", path=ConfiguredBackend)]
'''


def test_a_secret_in_a_backend_config_never_reaches_the_artifacts(mlexec, project, store, cli_env, tmp_path):
    site = tmp_path / "site"
    dist = site / "mlexec_configured-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlexec-configured\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mlexec]\nconfigured = demo_configured\n")
    (site / "demo_configured.py").write_text(CONFIGURED)
    env = {**cli_env, "PYTHONPATH": f"{site}:{cli_env['PYTHONPATH']}"}
    folder = project(MLPROJECT, files={"train.py": "print(1)\n"})
    config = tmp_path / "config.yaml"
    config.write_text("queue: gpu\napi_token: tok-3141592653\nregistry:\n  password: pw-2718281828\n  user: me\n")
    mlexec("run", folder, "-b", "configured", "-c", str(config), "--env-manager", "local", "-P", "alpha=1",
           env=env, check=0)
    run = store.only_run()
    got = record(store, run)
    assert got["backend"] == "configured"
    assert got["backend_config"] == {"queue": "gpu", "api_token": REDACTED,
                                     "registry": {"password": REDACTED, "user": "me"}}
    assert got["mlexec"]["plugins"]["mlexec-configured"] == "1.0"
    for path in artifacts(store, run).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"tok-3141592653" not in data and b"pw-2718281828" not in data, path
    assert not any("3141592653" in v for v in run.data.tags.values())
    # a rerun asks for the config again rather than run without its secrets
    again = mlexec("rerun", run.info.run_id, env=env, check=2)
    assert "had secrets that were not recorded (api_token, registry.password)" in again.stderr, again.stderr
    mlexec("rerun", run.info.run_id, "-c", str(config), env=env, check=0)


def test_each_child_of_a_sweep_records_what_it_ran(mlexec, project, store):
    folder = project(MLPROJECT, files={"train.py": "print(1)\n"})
    mlexec("sweep", folder, "--env-manager", "local", "-P", "alpha=1,2,3", check=0)
    children = [r for r in store.runs() if r.data.tags.get("mlexec.sweep") != "parent"]
    assert len(children) == 3
    assert sorted(record(store, r)["parameters"]["alpha"]["value"] for r in children) == ["1", "2", "3"]
    assert len({r.data.tags["mlexec.source.digest"] for r in children}) == 1
