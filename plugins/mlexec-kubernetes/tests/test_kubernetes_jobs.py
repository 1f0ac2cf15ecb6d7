"""End to end through the real CLI and the real ``kubernetes`` client, against the API
server double in conftest.py (pods, Job status and logs scripted by each test), with a
stand-in image builder; the MLflow store is real and checked afterwards."""

from __future__ import annotations

import signal
import subprocess
import threading


from mlexec_core.testing import MLEXEC, assert_no_traceback
from mlexec_k8s_double import failing

NS = "ml"


def succeed_with_logs(lines):
    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        for line in lines:
            c.log(ns, pod, line)
        c.finish_pod(ns, pod, 0)
        c.job_condition(ns, job, "Complete")

    return scenario


def test_success_streams_logs_and_records_the_run(mlexec, k8s_real_env, k8s_project, fake_cluster, store,
                                                  pod_runner):
    """A real pod (the pod runner's container on the Docker engine): its output, its arguments as a
    real shell received them, its exit status."""
    proj = k8s_project(command="python3 -c 'import sys; print(1, flush=True); print(sys.argv[1:])' "
                               "--lr {lr} --note {note}")
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "-P", "lr=0.01",
                  "-P", "note=it's a b", cwd=proj, env=k8s_real_env)
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    # the command arrives as the local shell would run it: each quoted value one argument, no quotes left
    assert "1\n['--lr', '0.01', '--note', \"it's a b\"]\n" in proc.stdout
    assert "succeeded" in proc.stderr

    [job] = fake_cluster.created_jobs()
    name = job["metadata"]["name"]
    assert name.startswith("demo-project-")
    assert job["metadata"]["namespace"] == NS
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["/bin/sh", "-c"] and len(container["command"]) == 3
    assert container["image"] == pod_runner.image  # the pushed image, by digest
    env = {e["name"]: e["value"] for e in container["env"]}

    run = store.only_run()
    assert run.info.status == "FINISHED"
    assert env["MLFLOW_RUN_ID"] == run.info.run_id
    assert env["MLFLOW_EXPERIMENT_ID"] == run.info.experiment_id
    tags = run.data.tags
    assert tags["mlflow.project.backend"] == "kubernetes"
    assert tags["mlexec.kubernetes.job"] == name
    assert tags["mlexec.kubernetes.namespace"] == NS
    assert tags["mlflow.docker.image.uri"] == pod_runner.image.split("@")[0]
    assert tags["mlflow.docker.image.id"].startswith("sha256:")
    # the pod cannot reach a sqlite file on this machine: said, not hidden
    assert "cannot log to it" in proc.stderr
    assert pod_runner.running() == []


def test_failure_reason_in_cli_and_tags(mlexec, k8s_env, k8s_project, fake_cluster, store):
    """OOMKilled here; every other reason through the Python API (test_kubernetes_api.py)."""
    fake_cluster.scenario, expected = failing("oom")
    proj = k8s_project()
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", cwd=proj, env=k8s_env)
    assert proc.returncode == 1, proc.stderr  # 137 is a signal's status, not passed on
    assert_no_traceback(proc)
    assert "starting\n" in proc.stdout
    job = fake_cluster.created_jobs()[0]["metadata"]["name"]
    run = store.only_run()
    # the CLI's last line says why, naming the Job and the image
    last = proc.stderr.strip().splitlines()[-1]
    assert f"=== Run {run.info.run_id} failed: the container ran out of memory (OOMKilled" in last
    assert f"Job {NS}/{job}, image registry.example.test/team/demo:" in last
    assert run.info.status == "FAILED"
    reason = run.data.tags["mlexec.kubernetes.failure-reason"]
    assert expected in reason and f"Job {NS}/{job}" in reason


def test_logs_stream_live(k8s_env, cli_env, k8s_project, fake_cluster, store):
    """The second line is written only after the CLI has printed the first."""
    first_seen = threading.Event()

    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "first line\n")
        first_seen.wait(60)
        c.log(ns, pod, "second line\n")
        c.finish_pod(ns, pod, 0)
        c.job_condition(ns, job, "Complete")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    proc = subprocess.Popen([*MLEXEC, "run", ".", "-b", "kubernetes", "-c", "backend_config.yaml"], cwd=proj,
                            env={**cli_env, **k8s_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first == "first line\n"
        first_seen.set()
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert rest == "second line\n"
    assert store.only_run().info.status == "FINISHED"


def test_ctrl_c_deletes_the_job_and_its_pods(k8s_env, cli_env, k8s_project, fake_cluster, store):
    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "training forever\n")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    proc = subprocess.Popen([*MLEXEC, "run", ".", "-b", "kubernetes", "-c", "backend_config.yaml"], cwd=proj,
                            env={**cli_env, **k8s_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "training forever\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    [(path, policy)] = fake_cluster.deleted_jobs()
    assert policy == "Foreground"
    assert not fake_cluster.pods and not fake_cluster.jobs
    run = store.only_run()
    assert run.info.status == "KILLED"


# -- errors before anything runs: one readable message, no run ------------------------------


def _fails_cleanly(proc, store, *needles):
    assert proc.returncode == 2, proc.stderr
    assert_no_traceback(proc)
    for needle in needles:
        assert needle in proc.stderr
    assert store.runs() == []


def test_no_kubeconfig(mlexec, k8s_env, k8s_project, store, tmp_path):
    proj = k8s_project()
    env = {**k8s_env, "KUBECONFIG": str(tmp_path / "nope")}
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", cwd=proj, env=env)
    _fails_cleanly(proc, store, "no kubeconfig found", "hint:")


def test_template_not_a_job(mlexec, k8s_env, k8s_project, store):
    proj = k8s_project("repository-uri: registry.example.test/x\nkube-job-template-path: tpl/job.yaml\n")
    (proj / "tpl").mkdir()
    (proj / "tpl" / "job.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", cwd=proj, env=k8s_env)
    _fails_cleanly(proc, store, "is a Pod (v1), not a Job", "job.yaml")


def test_dry_run_prints_the_manifest_without_the_cluster(mlexec, k8s_env, k8s_project, fake_cluster, store):
    import yaml

    proj = k8s_project("repository-uri: registry.example.test/team/demo\nnamespace: ml\n"
                       "resources: {cpu: 2, memory: 4Gi, nvidia.com/gpu: 1}\n")
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "--dry-run", cwd=proj,
                  env=k8s_env, check=0)
    assert not fake_cluster.requests
    text = proc.stdout[proc.stdout.index("# Job manifest"):]  # printed as YAML on stdout, after the plan
    manifest = yaml.safe_load(text)
    assert manifest["kind"] == "Job"
    assert manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "--dry-run", "--json",
                  cwd=proj, env=k8s_env, check=0)
    import json

    plan = json.loads(proc.stdout)
    assert plan["backend_plan"]["job_manifest"]["metadata"]["namespace"] == "ml"
    assert store.runs() == []


def test_exit_status_of_the_container_is_mlexecs(mlexec, k8s_real_env, k8s_project, fake_cluster, store,
                                                 pod_runner):
    proj = k8s_project(command="echo starting; exit 3")
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", cwd=proj, env=k8s_real_env)
    assert proc.returncode == 3, proc.stderr
    assert_no_traceback(proc)
    assert "starting\n" in proc.stdout
    assert "the command exited with status 3" in proc.stderr
    assert store.only_run().info.status == "FAILED"
