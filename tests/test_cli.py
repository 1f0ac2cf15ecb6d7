"""describe, plugins, --env-file, terminal vs piped output, and the example project."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

from mlexec_core.testing import MLEXEC, ROOT, assert_no_traceback

DESCRIBED = """
name: described
python_env: python_env.yaml
entry_points:
  main:
    parameters:
      alpha: float
      epochs: {type: int, default: 3, description: passes over the data}
    command: "python train.py {alpha} {epochs}"
  evaluate:
    command: "python eval.py"
"""


def test_describe_json(mlexec, project):
    proj = project(DESCRIBED, {"python_env.yaml": "python: '3.11'\n"})
    data = json.loads(mlexec("describe", proj, "--json", check=0).stdout)
    assert data["name"] == "described"
    assert data["environment"]["kind"] == "python"
    main, evaluate = data["entry_points"]
    assert main["name"] == "main" and evaluate["name"] == "evaluate"
    assert main["parameters"] == [
        {"name": "alpha", "type": "float", "default": None, "required": True, "description": None},
        {"name": "epochs", "type": "int", "default": "3", "required": False, "description": "passes over the data"},
    ]


def test_describe_plain_table(mlexec, project):
    proj = project(DESCRIBED, {"python_env.yaml": "python: '3.11'\n"})
    out = mlexec("describe", proj, check=0).stdout
    assert "environment: python (python_env.yaml)" in out
    assert "main\tpython train.py {alpha} {epochs}\talpha\tfloat\t(required)" in out
    assert "\t\tepochs\tint\t3" in out


def test_describe_bad_project_is_one_error(mlexec, project):
    proj = project("entry_points: {main: {parameters: {a: float}}}\n")
    proc = mlexec("describe", proj)
    assert proc.returncode == 2 and "entry_points.main.command: required key is missing" in proc.stderr
    assert_no_traceback(proc)


def test_describe_unknown_type_is_a_warning(mlexec, project):
    proj = project("entry_points: {main: {command: x, parameters: {a: {type: flaot}}}}\n")
    proc = mlexec("describe", proj, "--json")
    assert proc.returncode == 0, proc.stderr
    assert ("entry_points.main.parameters.a.type: unknown type 'flaot': the parameter is a string, as in MLflow "
            "(did you mean 'float'?") in proc.stderr
    assert json.loads(proc.stdout)["entry_points"][0]["parameters"][0]["type"] == "flaot"  # as written, as MLflow


def test_an_unknown_type_is_reported_as_declared_and_treated_as_a_string(mlexec, project, store):
    """`type: list[int]` (seen in a public project): MLflow keeps the declared name and passes
    the value as a string; describe and --dry-run show the name as written."""
    proj = project("entry_points: {main: {command: 'echo {ids}', parameters: {ids: {type: 'list[int]', "
                   "default: '[1, 2]'}}}}\n")
    described = mlexec("describe", proj, "--json", check=0)
    assert json.loads(described.stdout)["entry_points"][0]["parameters"][0]["type"] == "list[int]"
    assert "unknown type 'list[int]'" in described.stderr
    assert "\tids\tlist[int]\t[1, 2]" in mlexec("describe", proj, check=0).stdout
    plan = json.loads(mlexec("run", proj, "-P", "ids=[3, x]", "--env-manager", "local", "--dry-run", "--json",
                             check=0).stdout)
    assert plan["parameters"] == [{"name": "ids", "type": "list[int]", "value": "[3, x]", "source": "user"}]
    ran = mlexec("run", proj, "-P", "ids=[3, x]", "--env-manager", "local", check=0)
    assert ran.stdout == "[3, x]\n"


def test_describe_shows_the_warnings_a_run_shows(mlexec, project, store):
    """The lenient cases (an unknown top-level key, another entry point's typo or odd default) are warned
    about by describe on stderr, exactly as a run of that entry point warns; stdout stays clean JSON."""
    proj = project("""\
        bogus: 1
        entry_points:
          main: {command: 'true'}
          other:
            parameters:
              a: {type: float, default: abc}
              b: {tpye: int}
            command: 'echo {a} {b}'
        """)
    described = mlexec("describe", proj, "--json", check=0)
    warnings = [line for line in described.stderr.splitlines() if line.startswith("warning:")]
    assert any("unknown key 'bogus'" in w for w in warnings)
    assert any("entry_points.other.parameters.a.default: 'abc' is not a float" in w for w in warnings)
    assert any("entry_points.other.parameters.b: unknown key 'tpye'" in w for w in warnings)
    json.loads(described.stdout)
    ran = mlexec("run", proj, "-e", "other", "-P", "b=1", "--env-manager", "local", check=0)
    assert [line for line in ran.stderr.splitlines() if line.startswith("warning:")] == warnings

def test_env_file(mlexec, project, tmp_path, store):
    proj = project("entry_points: {main: {command: 'echo $GREETING'}}\n")
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport GREETING='hello there'\n")
    proc = mlexec("--env-file", env_file, "run", proj, "--env-manager", "local", check=0)
    assert proc.stdout.strip() == "hello there"


def run_in_pty(args: list[str], env: dict[str, str]) -> str:
    """Run the CLI with stdout and stderr on a pseudo-terminal, as a user sees it."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*MLEXEC, *args], stdin=follower, stdout=follower, stderr=follower, env=env,
                            cwd=ROOT)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


def test_terminal_gets_rich_tables_and_colour(cli_env):
    env = {**cli_env, "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    screen = run_in_pty(["plugins"], env)
    assert "┃" in screen or "│" in screen  # a drawn table, not tab-separated lines
    assert "\x1b[" in screen


def test_no_color_on_a_terminal(cli_env, project):
    env = {**cli_env, "TERM": "xterm-256color", "NO_COLOR": "1", "COLUMNS": "160"}
    proj = project("entry_points: {main: {command: x, parameters: {a: float}}}\n")
    screen = run_in_pty(["run", str(proj), "--env-manager", "local", "-P", "a=zz"], env)
    assert "is not a float" in screen
    assert "\x1b[31m" not in screen and "\x1b[1;31m" not in screen and "\x1b[36m" not in screen


def test_help_lists_mlflow_options(mlexec):
    out = mlexec("run", "--help", check=0).stdout
    for option in ("--entry-point", "--version", "--param-list", "--docker-args", "--experiment-name",
                   "--experiment-id", "--backend", "--backend-config", "--env-manager", "--storage-dir",
                   "--run-id", "--run-name", "--build-image", "--dry-run"):
        assert option in out


def test_example_project_end_to_end(mlexec, store, tmp_path):
    """The README's example: real scikit-learn fit, metrics logged from the job into the store."""
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = mlexec("run", ROOT / "examples" / "wine-elasticnet", "--env-manager", "local", "-P", "alpha=0.3",
                  env=env, timeout=600, check=0)
    assert "ElasticNet(alpha=0.3" in proc.stdout
    run = store.only_run()
    assert run.info.status == "FINISHED"
    assert run.data.params["alpha"] == "0.3" and run.data.params["l1_ratio"] == "0.1"
    assert 0 < run.data.metrics["rmse"] < 2 and "r2" in run.data.metrics
    artifacts = [a.path for a in store.client.list_artifacts(run.info.run_id)]
    assert artifacts == ["coefficients.json", "mlexec"]
    log = Path(store.client.download_artifacts(run.info.run_id, "mlexec/output.log", str(tmp_path)))
    assert "ElasticNet(alpha=0.3" in log.read_text()


DEMO_ENV_PLUGIN = '''
from mlexec_core.envcache import EnvironmentCache, spec_key
from mlexec_core.plugin import Registration, hookimpl
from mlexec_core.plugin.interfaces import EnvironmentManager, PreparedEnvironment


class DemoEnv(EnvironmentManager):
    @property
    def cache(self):
        return EnvironmentCache(self.name)

    def prepare(self, plan):
        def build(path):
            self.context.reporter.info("creating environment")
            (path / "bin").mkdir()
            (path / "bin" / "greet").write_text("#!/bin/sh\\necho hello from $1\\n")
            (path / "bin" / "greet").chmod(0o755)
        path, built = self.cache.ensure(spec_key({"v": plan.entry_point.command}), build, summary="greet")
        if not built:
            self.context.reporter.info("reusing environment")
        return PreparedEnvironment(name="demoenv", path_prepend=(str(path / "bin"),))

    def list_environments(self):
        return self.cache.list()

    def remove_environment(self, info):
        return self.cache.remove(info)


@hookimpl
def mlexec_environment_managers():
    return [Registration(kind="env-manager", name="demoenv", path=DemoEnv, handles={"none"})]
'''


def test_env_list_and_prune(mlexec, project, tmp_path, cli_env):
    site = tmp_path / "site"
    dist = site / "mlexec_demoenv-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlexec-demoenv\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mlexec]\ndemoenv = demo_env_plugin\n")
    (site / "demo_env_plugin.py").write_text(DEMO_ENV_PLUGIN)
    env = {"PYTHONPATH": f"{site}:{cli_env['PYTHONPATH']}", "MLEXEC_ENV_ROOT": str(tmp_path / "envs")}
    proj = project("entry_points: {main: {command: 'greet mlexec'}}\n")

    first = mlexec("run", proj, "--env-manager", "demoenv", env=env, check=0)
    assert first.stdout.strip() == "hello from mlexec" and "creating environment" in first.stderr
    second = mlexec("run", proj, "--env-manager", "demoenv", env=env, check=0)
    assert "reusing environment" in second.stderr and "creating" not in second.stderr

    listed = [e for e in json.loads(mlexec("env", "list", "--json", env=env, check=0).stdout)
              if e["manager"] == "demoenv"]  # other installed plugins may list theirs
    assert [(e["summary"], e["in_use"]) for e in listed] == [("greet", False)]
    assert listed[0]["size_bytes"] > 0
    table = mlexec("env", "list", env=env, check=0).stdout
    assert "demoenv\tdemoenv-" in table and "just now" in table

    assert "unknown environment manager 'nope'" in mlexec("env", "list", "--manager", "nope", env=env).stderr
    bad_age = mlexec("env", "prune", "--older-than", "-3d", env=env)
    assert bad_age.returncode == 2 and "expected a positive number" in bad_age.stderr
    assert "--older-than AGE or --all" in mlexec("env", "prune", env=env).stderr
    kept = mlexec("env", "prune", "--older-than", "1d", "--manager", "demoenv", env=env, check=0)
    assert "0 environments removed" in kept.stderr
    dry = mlexec("env", "prune", "--all", "--dry-run", "--manager", "demoenv", env=env, check=0)
    assert "would remove demoenv-" in dry.stdout
    assert len(json.loads(mlexec("env", "list", "--json", "--manager", "demoenv", env=env, check=0).stdout)) == 1
    pruned = mlexec("env", "prune", "--all", "--manager", "demoenv", env=env, check=0)
    assert "removed demoenv-" in pruned.stdout and "1 environment removed" in pruned.stderr
    assert json.loads(mlexec("env", "list", "--json", "--manager", "demoenv", env=env, check=0).stdout) == []
    assert not any(p.name.startswith("demoenv-") for p in (tmp_path / "envs").iterdir())


def test_env_file_that_is_not_text_is_one_error(mlexec, tmp_path):
    fifo = tmp_path / "fifo.env"
    os.mkfifo(fifo)
    (tmp_path / "nul.env").write_bytes(b"A=\x00b\n")
    (tmp_path / "bin.env").write_bytes(b"A=\xff\n")
    for name, message in (("fifo.env", "is a FIFO, not a regular env file"), ("nul.env", "contains a NUL character"),
                          ("bin.env", "is not UTF-8 text")):
        proc = mlexec("--env-file", tmp_path / name, "plugins")
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert_no_traceback(proc)
