"""Detached cluster runs through the real CLI and the real ``kubernetes`` client, against the
API server double (pods, Job status and logs scripted by each test): submitted with
``--detach``, then followed, attached, cancelled and repaired from other mlexec processes.
The MLflow store is real and read back with MlflowClient."""

from __future__ import annotations

import subprocess
import threading

from mlexec_core.testing import MLEXEC, assert_no_traceback

NS = "ml"


def _detached(mlexec, k8s_env, proj, store):
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "--detach", cwd=proj, env=k8s_env)
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    run = store.only_run() if len(store.runs()) == 1 else max(store.runs(), key=lambda r: r.info.start_time)
    assert run.info.status == "RUNNING"
    assert f"mlexec attach {run.info.run_id}" in proc.stderr
    assert run.data.tags["mlexec.detached"] == "true"
    return run.info.run_id


def test_detached_run_is_followed_and_attached_from_other_mlexec_processes(mlexec, k8s_env, cli_env, k8s_project,
                                                                           fake_cluster, store):
    go = threading.Event()

    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "epoch 1\n")
        go.wait(120)
        c.log(ns, pod, "epoch 2\n")
        c.finish_pod(ns, pod, 0)
        c.job_condition(ns, job, "Complete")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    run_id = _detached(mlexec, k8s_env, proj, store)
    assert fake_cluster.wait_for(lambda c: any(c.logs.values()), 30)

    so_far = mlexec("logs", run_id, env=k8s_env, check=0)
    assert "epoch 1" in so_far.stdout and "epoch 2" not in so_far.stdout
    assert store.client.get_run(run_id).info.status == "RUNNING"  # logs only looks

    nothing = mlexec("runs", "repair", env=k8s_env, check=0)  # the Job is alive: the run stays
    assert run_id not in nothing.stdout
    assert store.client.get_run(run_id).info.status == "RUNNING"

    attach = subprocess.Popen([*MLEXEC, "attach", run_id], env={**cli_env, **k8s_env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert attach.stdout.readline() == "epoch 1\n"
        go.set()
        rest, err = attach.communicate(timeout=120)
    finally:
        if attach.poll() is None:
            attach.kill()
    assert attach.returncode == 0, err
    assert rest == "epoch 2\n"
    assert "Traceback" not in err
    run = store.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    kept = store.client.download_artifacts(run_id, "mlexec/output.log", str(store.path.parent))
    assert open(kept).read() == "epoch 1\nepoch 2\n"
    assert "mlexec.supervisor.live" not in run.data.tags

    ended = mlexec("attach", run_id, env=k8s_env)
    assert ended.returncode == 2 and "has ended (FINISHED)" in ended.stderr


def test_detached_run_cancelled_from_another_mlexec(mlexec, k8s_env, k8s_project, fake_cluster, store):
    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "training forever\n")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    run_id = _detached(mlexec, k8s_env, proj, store)
    assert fake_cluster.wait_for(lambda c: bool(c.pods), 30)
    proc = mlexec("cancel", run_id, env=k8s_env, check=0)
    assert_no_traceback(proc)
    [(path, policy)] = fake_cluster.deleted_jobs()
    assert policy == "Foreground"
    assert not fake_cluster.jobs and not fake_cluster.pods
    run = store.client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["mlexec.failureReason"] == "cancelled with mlexec cancel"


def test_repair_asks_the_cluster_about_a_detached_run(mlexec, k8s_env, k8s_project, fake_cluster, store):
    release = threading.Event()

    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        release.wait(120)
        c.finish_pod(ns, pod, 3)
        c.job_condition(ns, job, "Failed", reason="BackoffLimitExceeded")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    run_id = _detached(mlexec, k8s_env, proj, store)
    release.set()
    assert fake_cluster.wait_for(
        lambda cluster: any(cond.get("type") == "Failed" for j in cluster.jobs.values()
                            for cond in (j.get("status") or {}).get("conditions") or ()), 30)
    repaired = mlexec("runs", "repair", env=k8s_env, check=0)
    assert run_id in repaired.stdout
    assert store.client.get_run(run_id).info.status == "FAILED"


def test_detach_with_a_local_backend_is_refused_before_any_run(mlexec, project, store):
    proj = project('entry_points: {main: {command: "echo hi"}}\n')
    proc = mlexec("run", proj, "--env-manager", "local", "--detach")
    assert proc.returncode == 2
    assert "--detach" in proc.stderr and "kubernetes" in proc.stderr
    assert store.runs() == []
    assert_no_traceback(proc)


def test_attached_run_whose_mlexec_is_killed_stays_attachable(mlexec, k8s_env, cli_env, k8s_project, project,
                                                              fake_cluster, store):
    import signal

    go = threading.Event()

    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "working\n")
        go.wait(120)
        c.log(ns, pod, "done\n")
        c.finish_pod(ns, pod, 0)
        c.job_condition(ns, job, "Complete")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    proc = subprocess.Popen([*MLEXEC, "run", ".", "-b", "kubernetes", "-c", "backend_config.yaml"], cwd=proj,
                            env={**cli_env, **k8s_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "working\n"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_id = store.only_run().info.run_id
    assert fake_cluster.jobs  # the Job goes on without its mlexec

    other = project('entry_points: {main: {command: "true"}}\n', where="other")
    mlexec("run", other, "--env-manager", "local", env=k8s_env, check=0)  # opens the store: no repair of it
    assert store.client.get_run(run_id).info.status == "RUNNING"

    attach = subprocess.Popen([*MLEXEC, "attach", run_id], env={**cli_env, **k8s_env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert attach.stdout.readline() == "working\n"
        go.set()
        rest, err = attach.communicate(timeout=120)
    finally:
        if attach.poll() is None:
            attach.kill()
    assert attach.returncode == 0, err
    assert rest == "done\n"
    assert store.client.get_run(run_id).info.status == "FINISHED"
