"""docker_env projects run through the real CLI, on a real Docker engine, tracked in a real MLflow store."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import threading
import time

import pytest

from mlexec_core.testing import MLEXEC, assert_no_traceback

BB = "image: mlexec-test/busybox:1"


def test_image_project_runs_in_the_container_with_only_what_belongs_there(
        mlexec, docker_project, store, busybox_image, engine):
    proj = docker_project(
        f"""
        {BB}
        environment: [["GREETING", "hello"], "MLEXEC_TEST_COPIED"]
        """,
        """
        main:
          parameters: {n: {type: int, default: 1}, who: string}
          command: "echo $GREETING {who} n={n}; echo cwd=$(pwd); ls; env | sort"
        """,
        files={"data.txt": "x"},
    )
    proc = mlexec("run", proj, "-P", "who=world", "-P", "n=4",
                  env={"MLEXEC_TEST_COPIED": "copied", "MLEXEC_TEST_HOST_ONLY": "secret"}, check=0)
    out = proc.stdout
    assert "hello world n=4" in out
    assert "cwd=/mlflow/projects/code" in out
    assert "data.txt" in out and "MLproject" in out  # the project is mounted
    assert "MLEXEC_TEST_COPIED=copied" in out
    assert "MLEXEC_TEST_HOST_ONLY" not in out  # the host's environment stays on the host
    run = store.only_run()
    assert f"MLFLOW_RUN_ID={run.info.run_id}" in out
    assert f"MLFLOW_EXPERIMENT_ID={run.info.experiment_id}" in out
    assert "MLFLOW_TRACKING_URI=sqlite:////mlflow/tracking/mlflow.db" in out
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["mlflow.project.env"] == "docker"
    assert tags["mlflow.docker.image.uri"] == busybox_image
    assert tags["mlflow.docker.image.id"] == engine.image(busybox_image)["Id"]
    assert run.data.params == {"n": "4", "who": "world"}
    assert_no_traceback(proc)


def test_exit_status_decides_the_run(mlexec, docker_project, store, busybox_image, tmp_path):
    proj = docker_project(BB, 'main: {command: "echo to-stdout; echo to-stderr >&2; exit 3"}')
    proc = mlexec("run", proj)
    assert proc.returncode == 3, proc.stderr  # the command's own status, from the container
    assert "to-stderr" in proc.stderr and "to-stdout" in proc.stdout
    assert "exited with status 3" in proc.stderr
    run = store.only_run()
    assert run.info.status == "FAILED"
    kept = store.client.download_artifacts(run.info.run_id, "mlexec/output.log", str(tmp_path))
    assert sorted(open(kept).read().splitlines()) == ["to-stderr", "to-stdout"]  # kept with the run
    assert_no_traceback(proc)


def test_a_cached_run_talks_to_the_daemon_without_http_client(mlexec, docker_project, store, busybox_image):
    # the engine's own HTTP/1.1 client over the unix socket: all of a long output, the status, no http.client
    proj = docker_project(BB, 'main: {command: "seq 1 30000; echo done >&2; exit 4"}')
    proc = mlexec("run", proj, env={"PYTHONPROFILEIMPORTTIME": "1"}, check=4)
    assert proc.stdout.splitlines() == [str(i) for i in range(1, 30001)]
    assert "done" in proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "mlexec_docker.engine" in imported and "http.client" not in imported
    assert store.only_run().info.status == "FAILED"


def test_docker_args_become_container_options(mlexec, docker_project, busybox_image):
    proj = docker_project(BB, 'main: {command: "df -k /dev/shm | tail -1; echo flag=$FLAG; id -u"}')
    proc = mlexec("run", proj, "-A", "shm-size=64m", "-A", "memory=256m", "-A", "env=FLAG=on",
                  "-A", "user=1234", check=0)
    assert " 65536 " in proc.stdout  # 64 MB of /dev/shm
    assert "flag=on" in proc.stdout
    assert proc.stdout.strip().endswith("1234")


def test_volumes_are_mounted_relative_to_the_project(mlexec, docker_project, busybox_image, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from-the-host")
    proj = docker_project(f"""
        {BB}
        volumes: ["../shared:/data", "{shared}:/abs:ro"]
        """, 'main: {command: "cat /data/in.txt; echo; cat /abs/in.txt"}')
    proc = mlexec("run", proj, check=0)
    assert proc.stdout.count("from-the-host") == 2


def test_tracking_from_inside_the_container_lands_in_the_host_store(
        mlexec, docker_project, store, python_image, tmp_path):
    # Real MLflow in the container: the python test image has none (nothing can be installed
    # offline), so the host's own site-packages (same CPython 3.11, same glibc) are mounted
    # read-only and put on PYTHONPATH.  MLflow then logs through the rewritten
    # MLFLOW_TRACKING_URI (the mounted sqlite store) and the run's mounted artifact folder.
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    experiment = store.client.create_experiment("in-docker", artifact_location=str(tmp_path / "artifacts"))
    script = """
        import os, mlflow
        mlflow.log_metric("acc", 0.93)
        mlflow.log_text("made in a container", "note.txt")
        print("logged to", os.environ["MLFLOW_TRACKING_URI"], "with mlflow", mlflow.__version__)
    """
    proj = docker_project(
        f"""
        image: mlexec-test/python:3.11
        volumes: ["{site}:/opt/host-site-packages:ro"]
        environment: [["PYTHONPATH", "/opt/host-site-packages"]]
        """,
        'main: {command: "python3 log_metric.py"}',
        files={"log_metric.py": script},
    )
    proc = mlexec("run", proj, "--experiment-name", "in-docker", check=0)
    assert "logged to sqlite:////mlflow/tracking/mlflow.db with mlflow" in proc.stdout
    run = store.only_run()
    assert run.info.experiment_id == experiment
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"acc": 0.93}
    note = tmp_path / "artifacts" / run.info.run_id / "artifacts" / "note.txt"
    assert note.read_text() == "made in a container"


def test_the_mounted_project_is_the_live_directory(mlexec, docker_project, busybox_image):
    proj = docker_project(BB, 'main: {command: "echo written > out.txt"}')
    mlexec("run", proj, check=0)
    assert (proj / "out.txt").read_text() == "written\n"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_and_removes_the_container_and_marks_killed(
        docker_project, cli_env, store, busybox_image, engine, signum, code):
    proj = docker_project(BB, 'main: {command: "echo started; sleep 60"}')
    proc = subprocess.Popen([*MLEXEC, "run", str(proj)], env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # the container's first line: it is running
    assert first.strip() == "started"
    run_id = None
    deadline = time.monotonic() + 30
    while run_id is None and time.monotonic() < deadline:
        running = engine.containers("mlexec.run-id")
        mine = [c for c in running if c["Labels"].get("mlexec.project") == (proj / "MLproject").read_text().split()[1]]
        run_id = mine[0]["Labels"]["mlexec.run-id"] if mine else None
        time.sleep(0.1)
    assert run_id, "the container was not found while running"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "killed" in err
    assert_no_traceback(subprocess.CompletedProcess([], code, out, err))
    run = store.only_run()
    assert run.info.run_id == run_id
    assert run.info.status == "KILLED"
    assert engine.containers(f"mlexec.run-id={run_id}") == []


def test_interrupt_during_the_build_leaves_no_run_and_no_build_container(
        docker_project, cli_env, store, busybox_image):
    proj = docker_project("dockerfile: Dockerfile", 'main: {command: "true"}',
                          files={"Dockerfile": "FROM mlexec-test/busybox:1\nRUN echo slow-step && sleep 60\n"})
    proc = subprocess.Popen([*MLEXEC, "run", str(proj)], env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "RUN echo slow-step" in line:
            break
    time.sleep(1)  # the step's container is running now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "no run was created" in err
    assert store.runs() == []
    # no_leftovers (through docker_project) checks that the daemon removed the build's container


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"tracking-server-reached"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_http_tracking_server_on_localhost_is_reachable_from_the_container(
        engine, busybox_image, no_leftovers, tmp_path, capfd):
    # A real MLflow server takes over a minute to start on these machines, so a small HTTP
    # server on the host's loopback stands in for it; what is tested is that the container
    # reaches the host's 127.0.0.1 at the unchanged MLFLOW_TRACKING_URI.
    from mlexec_core.plugin.interfaces import CommandSpec
    from mlexec_docker.launcher import ContainerLauncher

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        launcher = ContainerLauncher(engine, busybox_image, project="http-test", mount_code=str(tmp_path),
                                     binds=[], environment={}, config={}, host_config={})
        spec = CommandSpec(command='wget -qO- "$MLFLOW_TRACKING_URI/health"; echo; echo "uri=$MLFLOW_TRACKING_URI"',
                           cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": "r1"})
        execution = launcher.start(spec)
        try:
            assert execution.wait() == 0
        finally:
            execution.cleanup()
    finally:
        server.shutdown()
    out = capfd.readouterr().out
    assert "tracking-server-reached" in out
    assert f"uri={uri}" in out
    assert engine.containers("mlexec.run-id=r1") == []
